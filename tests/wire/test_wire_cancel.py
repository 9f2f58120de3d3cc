"""Cancelling: CancelRequest for a running query and for a queued one, and statement_timeout.

PGlite cannot interrupt a running query; the server stops it by restarting the engine, so everything
of every client that lived in the old backend session (prepared statements, settings) must come back.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors
from wire_support import (
    RawConn,
    WireServer,
    async_wait_until,
    error_fields,
    in_thread,
    query_message,
    wait_until,
)


def _running(server: WireServer, pid: int) -> bool:
    st = server.stats()
    return st["holder"] == pid and st["waiting"] == 0


@pytest.mark.asyncio
async def test_asyncpg_timeout_cancels_running_query(server: WireServer) -> None:
    conn = await server.asyncpg()
    other = await server.asyncpg()
    try:
        # C prepares before the cancel and executes after it
        stmt = await other.prepare("SELECT $1::int + 100")
        assert await stmt.fetchval(1) == 101
        await other.execute("SET TimeZone = 'Asia/Tokyo'")
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
        elapsed = time.monotonic() - t0
        # the cancel landed long before pg_sleep(30) could end (a limit load cannot break)
        assert elapsed < 15, f"asyncpg's timeout=0.5 returned after {elapsed:.2f} s"
        # the connection is usable right away
        assert await conn.fetchval("SELECT $1::int", 5) == 5
        assert await stmt.fetchval(2) == 102
        assert await other.fetchval("SELECT $1::text", "x") == "x"
        assert await other.fetchval("SHOW TimeZone") == "Asia/Tokyo"
        assert await conn.fetchval("SHOW TimeZone") == "UTC"
    finally:
        await conn.close()
        await other.close()


def test_psycopg_cancel_running_query(server: WireServer) -> None:
    with server.psycopg(autocommit=True) as conn, server.psycopg(autocommit=True) as c:
        c.execute("SELECT %s::int * 2", (1,), prepare=True)
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                conn.execute("SELECT pg_sleep(30)")
                outcome["result"] = "finished"
            except Exception as exc:
                outcome["error"] = exc
            outcome["at"] = time.monotonic()

        t = threading.Thread(target=run)
        t.start()
        try:
            wait_until(
                lambda: _running(server, conn.info.backend_pid), timeout=30, what="pg_sleep to run"
            )
            cancelled_at = time.monotonic()
            conn.cancel()
            t.join(25)
        finally:
            if t.is_alive():
                conn.cancel()
                t.join(35)
        exc = outcome.get("error")
        assert isinstance(exc, errors.QueryCanceled), outcome
        assert exc.sqlstate == "57014"
        assert "user request" in str(exc)
        # well before pg_sleep(30) could end by itself, whatever the load
        assert outcome["at"] - cancelled_at < 15, "the cancel took effect late"
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # C's prepared statement survived the engine restart
        assert c.execute("SELECT %s::int * 2", (21,), prepare=True).fetchone() == (42,)


def test_psycopg_cancel_inside_transaction_leaves_it_aborted(server: WireServer, unique) -> None:
    """As in PostgreSQL: a cancelled statement aborts the transaction; the rows written before it are
    rolled back, and the client must ROLLBACK before it can go on."""
    table = unique("cancel_tx")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
    with server.psycopg() as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        conn.rollback()
    with server.psycopg(autocommit=True) as other:
        assert other.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        other.execute(f"DROP TABLE {table}")


@pytest.mark.asyncio
async def test_cancel_queued_query(server: WireServer, unique) -> None:
    table = unique("cancel_q")
    a = await server.asyncpg()
    await a.execute(f"CREATE TABLE {table} (v int)")
    b = await in_thread(server.psycopg, autocommit=True)
    try:
        restarts = server.stats()["backend_restarts"]
        tx = a.transaction()
        await tx.start()
        await a.execute(f"INSERT INTO {table} VALUES (1)")
        waiting = asyncio.ensure_future(in_thread(b.execute, "SELECT 42"))

        def queued() -> bool:
            st = server.stats()
            return st["waiting"] == 1 and st["holder"] == a.get_server_pid()

        await async_wait_until(queued, timeout=30, what="B's query to be queued behind A")
        await in_thread(b.cancel)
        with pytest.raises(errors.QueryCanceled) as info:
            await asyncio.wait_for(waiting, timeout=25)
        assert info.value.sqlstate == "57014"
        assert "user request" in str(info.value)  # the cancel, not the queue timeout
        # A is unaffected: still in its transaction, its row still there, commit works
        assert await a.fetchval(f"SELECT count(*) FROM {table}") == 1
        await a.execute(f"INSERT INTO {table} VALUES (2)")
        await tx.commit()
        assert await in_thread(lambda: b.execute(f"SELECT count(*) FROM {table}").fetchone()) == (
            2,
        )
        assert server.stats()["backend_restarts"] == restarts, (
            "a queued query needs no engine restart"
        )
    finally:
        await in_thread(b.close)
        await a.execute(f"DROP TABLE IF EXISTS {table}")
        await a.close()


@pytest.mark.asyncio
async def test_statement_timeout_per_client(server: WireServer) -> None:
    conn = await server.asyncpg()
    other = await server.asyncpg()
    try:
        await conn.execute("SET statement_timeout = '200ms'")
        t0 = time.monotonic()
        with pytest.raises(asyncpg.QueryCanceledError) as info:
            await conn.fetchval("SELECT pg_sleep(60)", timeout=90)
        elapsed = time.monotonic() - t0
        assert info.value.sqlstate == "57014"
        assert "statement timeout" in str(info.value)
        # it fired, long before pg_sleep(60) would have ended (100x the 200 ms: load cannot break it)
        assert elapsed < 20, f"statement_timeout 200ms fired after {elapsed:.2f} s"
        # the other client has no statement timeout
        assert await other.fetchval("SHOW statement_timeout") == "0"
        t0 = time.monotonic()
        await other.execute("SELECT pg_sleep(0.5)")
        assert time.monotonic() - t0 >= 0.45
        # and the first one still has its own
        assert await conn.fetchval("SHOW statement_timeout") == "200ms"
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
        await other.close()


def test_statement_timeout_as_startup_option(server: WireServer) -> None:
    with server.psycopg(autocommit=True, options="-c statement_timeout=200") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("200ms",)
        t0 = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as info:
            conn.execute("SELECT pg_sleep(60)")
        assert time.monotonic() - t0 < 20  # fired, long before pg_sleep(60) would end
        assert info.value.sqlstate == "57014"
        assert conn.execute("SELECT 2").fetchone() == (2,)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("200ms",)
    with server.psycopg(autocommit=True) as plain:
        assert plain.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert plain.execute("SELECT pg_sleep(0.3)").fetchone() == ("",)


def test_raw_cancel_request(server: WireServer) -> None:
    """CancelRequest on its own socket, with the pid and secret from BackendKeyData: the running query
    ends with ErrorResponse 57014 then ReadyForQuery, and the cancel socket is closed."""
    with RawConn(server.port) as raw:
        keys = [body for kind, body in raw.start() if kind == b"K"]
        assert len(keys) == 1
        pid, secret = struct.unpack("!iI", keys[0])
        raw.send(query_message("SELECT pg_sleep(30)"))
        wait_until(lambda: _running(server, pid), timeout=30, what="pg_sleep to run")
        t0 = time.monotonic()
        with RawConn(server.port) as canceller:
            canceller.send(struct.pack("!iiiI", 16, 80877102, pid, secret))
            assert canceller.read_to_eof(5) == b""
        msgs = raw.read_until_ready()
        assert time.monotonic() - t0 < 15  # well before pg_sleep(30) ends by itself
        errs = [error_fields(body) for kind, body in msgs if kind == b"E"]
        assert len(errs) == 1, msgs
        assert errs[0]["C"] == "57014"
        assert msgs[-1] == (b"Z", b"I")
        # a wrong secret cancels nothing
        raw.send(query_message("SELECT pg_sleep(0.5)"))
        wait_until(lambda: _running(server, pid), timeout=30, what="pg_sleep to run")
        with RawConn(server.port) as canceller:
            canceller.send(struct.pack("!iiiI", 16, 80877102, pid, (secret + 1) % 2**32))
            canceller.read_to_eof(5)
        msgs = raw.read_until_ready()
        assert [k for k, _ in msgs if k == b"E"] == [], msgs
