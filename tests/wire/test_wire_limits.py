"""Limits a user meets because everyone shares one backend: queue timeout, idle-in-transaction
timeout, the connection limit, the startup timeout. Each gives a proper ErrorResponse with a
SQLSTATE, and the server and the other clients go on.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors
from wire_support import (
    RawConn,
    async_wait_until,
    error_fields,
    in_thread,
    query_message,
    split_messages,
    startup_packet,
)


@pytest.mark.asyncio
async def test_queue_timeout_names_the_holder(start_server) -> None:
    server = start_server(queue_timeout_ms=500)
    a = await server.asyncpg(server_settings={"application_name": "holder-app"})
    b = await server.asyncpg(server_settings={"application_name": "waiter-app"})
    try:
        tx = a.transaction()
        await tx.start()
        # a transaction id: it holds the backend until it ends (a read-only one would be parked)
        await a.execute("SELECT pg_current_xact_id()")
        t0 = time.monotonic()
        with pytest.raises(asyncpg.QueryCanceledError) as info:
            await asyncio.wait_for(b.fetchval("SELECT 2"), timeout=30)
        elapsed = time.monotonic() - t0
        assert info.value.sqlstate == "57014"
        # not before 500 ms; the upper limit only says "the timer fired", with room for load
        assert 0.4 <= elapsed < 10, f"the queue timeout (500 ms) fired after {elapsed:.2f} s"
        message = str(info.value)
        assert str(a.get_server_pid()) in message, message
        assert "holder-app" in message, message
        assert "idle in transaction" in message, message
        # A was not disturbed, and once A is done B is usable again on the same connection
        assert await a.fetchval("SELECT 3") == 3
        await tx.commit()
        assert await b.fetchval("SELECT 4") == 4
        assert await b.fetchval("SELECT $1::int * 2", 21) == 42
    finally:
        await a.close()
        await b.close()


def test_queue_timeout_psycopg_connection_usable_after(start_server) -> None:
    server = start_server(queue_timeout_ms=500)
    with server.psycopg() as a, server.psycopg(autocommit=True) as b:
        # psycopg opened a transaction with a transaction id: A holds the backend (not parked)
        a.execute("SELECT pg_current_xact_id()")
        t0 = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as info:
            b.execute("SELECT 2")
        assert 0.4 <= time.monotonic() - t0 < 10  # the 500 ms queue timeout, under any load
        assert info.value.sqlstate == "57014"
        assert f"connection {a.info.backend_pid}" in str(info.value)
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        a.commit()
        assert b.execute("SELECT 5").fetchone() == (5,)


@pytest.mark.asyncio
async def test_idle_in_transaction_timeout_terminates_and_rolls_back(start_server) -> None:
    server = start_server(idle_in_transaction_timeout_ms=500)
    setup = await server.asyncpg()
    await setup.execute("CREATE TABLE idle_t (v int)")
    await setup.close()
    with RawConn(server.port) as a:
        a.start()
        a.send(query_message("BEGIN; INSERT INTO idle_t VALUES (1)"))
        msgs = a.read_until_ready()
        assert msgs[-1] == (b"Z", b"T"), msgs  # in a transaction, now idle
        b = await server.asyncpg()
        try:
            # B waits for A, until A is thrown out after ~0.5 s; A's insert is rolled back
            t0 = time.monotonic()
            count = await asyncio.wait_for(b.fetchval("SELECT count(*) FROM idle_t"), timeout=30)
            waited = time.monotonic() - t0
            assert count == 0
            assert waited < 15, f"B waited {waited:.2f} s"  # 30x the 500 ms: room for load
            # A got a FATAL 25P03 ErrorResponse and the connection was closed
            data = await in_thread(a.read_to_eof, 15)
            kinds = [m[0] for m in split_messages(data)]
            assert kinds == [b"E"], data
            fields = error_fields(split_messages(data)[0][1])
            assert fields["S"] == "FATAL"
            assert fields["C"] == "25P03"
            assert "idle-in-transaction" in fields["M"]
            assert await b.fetchval("SELECT count(*) FROM idle_t") == 0
        finally:
            await b.close()


def test_idle_in_transaction_timeout_psycopg(start_server) -> None:
    server = start_server(idle_in_transaction_timeout_ms=500)
    with server.psycopg(autocommit=True) as setup:
        setup.execute("CREATE TABLE idle_p (v int)")
    a = server.psycopg()
    try:
        a.execute("INSERT INTO idle_p VALUES (1)")
        with server.psycopg(autocommit=True) as b:
            t0 = time.monotonic()
            assert b.execute("SELECT count(*) FROM idle_p").fetchone() == (0,)
            assert time.monotonic() - t0 < 15  # A was thrown out (500 ms), not B's own timeout
        with pytest.raises(errors.IdleInTransactionSessionTimeout) as info:
            a.execute("SELECT 1")
        assert info.value.sqlstate == "25P03"
        assert "idle-in-transaction timeout" in str(info.value)
        assert a.closed
    finally:
        a.close()


@pytest.mark.asyncio
async def test_connection_limit(start_server) -> None:
    server = start_server(max_connections=3)
    conns = [await server.asyncpg() for _ in range(3)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError) as info:
            await server.asyncpg()
        assert info.value.sqlstate == "53300"
        with pytest.raises(psycopg.OperationalError) as pinfo:
            await in_thread(server.psycopg)
        assert "too many clients" in str(pinfo.value)
        # a raw client sees a proper ErrorResponse, not text
        with RawConn(server.port) as raw:
            raw.send(startup_packet(user="postgres", database="postgres"))
            data = await in_thread(raw.read_to_eof, 5)
        msgs = split_messages(data)
        assert [m[0] for m in msgs] == [b"E"], data
        assert error_fields(msgs[0][1])["C"] == "53300"
        # the three connections work; after one closes a new one gets in
        for i, c in enumerate(conns):
            assert await c.fetchval("SELECT $1::int", i) == i
        await conns.pop().close()

        async def connect() -> object:
            try:
                return await server.asyncpg()
            except asyncpg.TooManyConnectionsError:
                return None

        conns.append(
            await async_wait_until(connect, timeout=30, what="a connection slot to free up")
        )
        assert await conns[-1].fetchval("SELECT 7") == 7
    finally:
        for c in conns:
            await c.close()


@pytest.mark.asyncio
async def test_startup_timeout_closes_silent_socket(start_server) -> None:
    server = start_server(startup_timeout_ms=500)
    with RawConn(server.port) as silent:
        t0 = time.monotonic()
        conn = await server.asyncpg()  # others connect meanwhile
        assert await conn.fetchval("SELECT 1") == 1
        data = await in_thread(silent.read_to_eof, 15)
        elapsed = time.monotonic() - t0
        await conn.close()
    assert elapsed < 15, f"the silent socket was closed after {elapsed:.2f} s"
    msgs = split_messages(data)
    assert [m[0] for m in msgs] == [b"E"], data
    fields = error_fields(msgs[0][1])
    assert fields["C"] == "08P01"
    assert "startup" in fields["M"]
