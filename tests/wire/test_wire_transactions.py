"""Transaction isolation by serialisation: while A is inside a transaction, B's statements wait.

PGlite has one session, so hive-bridge cannot run B's SELECT next to A's open transaction; it makes
B wait until A commits or rolls back. B must never see A's uncommitted rows.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from wire_support import WireServer, async_wait_until, in_thread


async def _wait_until_queued(server: WireServer, holder_pid: int, task: asyncio.Task) -> None:
    """Until the server reports one client waiting while ``holder_pid`` holds the backend."""

    def queued() -> bool:
        st = server.stats()
        return st["waiting"] >= 1 and st["holder"] == holder_pid

    await async_wait_until(queued, timeout=30, what="the reader to be queued behind the writer")
    assert not task.done(), f"B's query finished while A's transaction was open: {task.result()!r}"


@pytest.mark.asyncio
async def test_reader_waits_for_commit_then_sees_row(server: WireServer, unique) -> None:
    table = unique("iso_commit")
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        await a.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
        assert await b.fetch(f"SELECT id FROM {table}") == []
        tx = a.transaction()
        await tx.start()
        await a.execute(f"INSERT INTO {table} VALUES (1, 'uncommitted')")
        reader = asyncio.create_task(b.fetch(f"SELECT id, note FROM {table} ORDER BY id"))
        await _wait_until_queued(server, a.get_server_pid(), reader)
        # A goes on working inside its transaction while B waits
        assert await a.fetchval(f"SELECT count(*) FROM {table}") == 1
        assert not reader.done()
        await tx.commit()
        rows = await asyncio.wait_for(reader, timeout=30)
        assert [tuple(r) for r in rows] == [(1, "uncommitted")]
    finally:
        await b.execute(f"DROP TABLE IF EXISTS {table}")
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_rolled_back_row_is_never_seen(server: WireServer, unique) -> None:
    table = unique("iso_rollback")
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        await a.execute(f"CREATE TABLE {table} (id int)")
        tx = a.transaction()
        await tx.start()
        await a.execute(f"INSERT INTO {table} VALUES (1), (2)")
        reader = asyncio.create_task(b.fetchval(f"SELECT count(*) FROM {table}"))
        await _wait_until_queued(server, a.get_server_pid(), reader)
        await tx.rollback()
        assert await asyncio.wait_for(reader, timeout=30) == 0
        assert await b.fetchval(f"SELECT count(*) FROM {table}") == 0
        assert await a.fetchval(f"SELECT count(*) FROM {table}") == 0
    finally:
        await b.execute(f"DROP TABLE IF EXISTS {table}")
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_psycopg_writer_asyncpg_reader(server: WireServer, unique) -> None:
    """The same with a psycopg writer in a thread (psycopg opens its transaction implicitly)."""
    table = unique("iso_mixed")
    b = await server.asyncpg()
    await b.execute(f"CREATE TABLE {table} (id int)")
    writer = await in_thread(server.psycopg)
    try:
        await in_thread(writer.execute, f"INSERT INTO {table} VALUES (7)")
        assert writer.info.transaction_status.name == "INTRANS"
        pid = writer.info.backend_pid
        reader = asyncio.create_task(b.fetch(f"SELECT id FROM {table}"))
        await _wait_until_queued(server, pid, reader)
        await in_thread(writer.commit)
        rows = await asyncio.wait_for(reader, timeout=30)
        assert [r["id"] for r in rows] == [7]
    finally:
        await in_thread(writer.close)
        await b.execute(f"DROP TABLE IF EXISTS {table}")
        await b.close()


def test_transactions_from_many_threads_do_not_interleave(server: WireServer, unique) -> None:
    """Read-modify-write inside explicit transactions from 6 threads: no lost update. As on
    PostgreSQL under READ COMMITTED this needs SELECT ... FOR UPDATE: a transaction that has only read
    is parked while others wait (README, "Parking"), one that locked a row holds the backend."""
    table = unique("iso_counter")
    with server.psycopg(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v int)")
        conn.execute(f"INSERT INTO {table} VALUES (0)")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with server.psycopg() as conn:
                for _ in range(40):
                    with conn.transaction():
                        (v,) = conn.execute(f"SELECT v FROM {table} FOR UPDATE").fetchone()
                        conn.execute(f"UPDATE {table} SET v = %s", (v + 1,))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)  # a bound for a hang, not a speed limit: a loaded machine may take minutes
    assert not any(t.is_alive() for t in threads), "the workers did not finish"
    assert not errors, errors
    with server.psycopg(autocommit=True) as conn:
        assert conn.execute(f"SELECT v FROM {table}").fetchone() == (240,)
        conn.execute(f"DROP TABLE {table}")
