"""What bad clients do must stay their own problem: killed clients, malformed input, garbage, wrong
database, Terminate, SSL/GSS negotiation, many connections at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import asyncpg
import pytest
from wire_support import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    RawConn,
    WireServer,
    async_wait_until,
    error_fields,
    in_thread,
    message,
    query_message,
    split_messages,
    startup_packet,
)

KILLED_CLIENT = textwrap.dedent(
    """
    import sys, psycopg
    conn = psycopg.connect(sys.argv[1])
    conn.execute(f"INSERT INTO {sys.argv[2]} VALUES (1)")  # psycopg has opened a transaction
    print("ready", flush=True)
    sys.stdin.readline()  # wait to be killed
    """
)


def _assert_healthy(server: WireServer) -> None:
    with server.psycopg(autocommit=True) as conn:
        assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)


def test_client_killed_mid_transaction(server: WireServer, unique) -> None:
    table = unique("killed")
    with server.psycopg(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v int)")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, server.dsn, table],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    # the others go on at once (the idle-in-transaction timeout is 60 s: not what frees them)
    t0 = time.monotonic()
    with server.psycopg(autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        conn.execute(f"INSERT INTO {table} VALUES (2)")
        assert conn.execute(f"SELECT array_agg(v) FROM {table}").fetchone() == ([2],)
        conn.execute(f"DROP TABLE {table}")
    assert time.monotonic() - t0 < 30  # well before the 60 s idle-in-transaction timeout


def _raw_session(server: WireServer) -> RawConn:
    raw = RawConn(server.port)
    msgs = raw.start()
    kinds = [k for k, _ in msgs]
    assert kinds[0] == b"R" and kinds[-1] == b"Z", msgs
    assert b"K" in kinds
    return raw


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"Q" + struct.pack("!i", 2), id="length-2"),
        pytest.param(b"Q" + struct.pack("!i", -1), id="negative-length"),
        pytest.param(message(b"\x01", b"junk"), id="unknown-type-byte"),
        pytest.param(message(b"~", b""), id="unknown-type-tilde"),
        pytest.param(message(b"B", b"\x00"), id="truncated-bind"),
        pytest.param(message(b"P", b"no terminator"), id="parse-without-nul"),
    ],
)
def test_malformed_message_after_startup(server: WireServer, bad: bytes) -> None:
    with server.psycopg(autocommit=True) as bystander:
        bystander.execute("SELECT 1")
        with _raw_session(server) as raw:
            raw.send(bad)
            data = raw.read_to_eof(5)  # the server closes the connection ...
        msgs = split_messages(data)
        errors = [error_fields(body) for kind, body in msgs if kind == b"E"]
        # ... after a proper ErrorResponse: FATAL, protocol violation
        assert errors, f"no ErrorResponse before the close: {data!r}"
        assert errors[-1]["S"] == "FATAL"
        assert errors[-1]["C"] == "08P01", errors
        # the bystander's connection and new ones are fine
        assert bystander.execute("SELECT 2").fetchone() == (2,)
    _assert_healthy(server)


def test_garbage_instead_of_startup_packet(server: WireServer) -> None:
    for garbage in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x00\x00\x08\x00\x00\x00\x00",
        b"\xde\xad\xbe\xef" * 16,
    ):
        with RawConn(server.port) as raw:
            raw.send(garbage)
            data = raw.read_to_eof(5)
        # closed, perhaps after an ErrorResponse; never anything that looks like a session
        for kind, _ in split_messages(data) if data else []:
            assert kind == b"E", data
    _assert_healthy(server)


def test_half_a_startup_packet_then_close(server: WireServer) -> None:
    with RawConn(server.port) as raw:
        raw.send(startup_packet(user="postgres", database="postgres")[:7])
    _assert_healthy(server)


@pytest.mark.asyncio
async def test_unknown_database_is_3D000(server: WireServer) -> None:
    with pytest.raises(asyncpg.InvalidCatalogNameError) as info:
        await server.asyncpg(database="other")
    assert info.value.sqlstate == "3D000"
    assert '"other"' in str(info.value)
    with RawConn(server.port) as raw:
        raw.send(startup_packet(user="postgres", database="other"))
        data = await in_thread(raw.read_to_eof, 5)
    msgs = split_messages(data)
    assert [k for k, _ in msgs] == [b"E"]
    assert error_fields(msgs[0][1])["C"] == "3D000"
    await in_thread(_assert_healthy, server)


@pytest.mark.asyncio
async def test_terminate_closes_the_socket(server: WireServer) -> None:
    baseline = server.settled_connections()
    conn = await server.asyncpg()
    assert await conn.fetchval("SELECT 1") == 1
    await asyncio.wait_for(conn.close(), timeout=20)  # stock pglite-server: hangs for good
    await async_wait_until(
        lambda: server.stats()["connections"] == baseline,
        timeout=30,
        what="the server to drop the closed connection",
    )

    raw = await in_thread(_raw_session, server)
    with raw:
        raw.send(message(b"X"))
        data = await in_thread(raw.read_to_eof, 20)  # closed, not left open for good
        assert data == b""


@pytest.mark.parametrize(
    ("code", "name"), [(SSL_REQUEST, "SSLRequest"), (GSSENC_REQUEST, "GSSENCRequest")]
)
def test_ssl_and_gssenc_requests_get_n(server: WireServer, code: int, name: str) -> None:
    with RawConn(server.port) as raw:
        raw.send(struct.pack("!ii", 8, code))
        assert raw.recv_exact(1) == b"N", name
        # then the client goes on in plain text on the same socket
        msgs = raw.start()
        assert msgs[0][0] == b"R" and msgs[-1] == (b"Z", b"I")
        raw.send(query_message("SELECT 6 * 7"))
        rows = [body for kind, body in raw.read_until_ready() if kind == b"D"]
        assert rows and rows[0].endswith(b"42")
    # both, one after the other, as libpq does with gssencmode=prefer and sslmode=prefer
    with RawConn(server.port) as raw:
        raw.send(struct.pack("!ii", 8, GSSENC_REQUEST))
        assert raw.recv_exact(1) == b"N"
        raw.send(struct.pack("!ii", 8, SSL_REQUEST))
        assert raw.recv_exact(1) == b"N"
        assert raw.start()[-1] == (b"Z", b"I")


def test_psql_with_sslmode_prefer(server: WireServer) -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    env = server.libpq_env(PGSSLMODE="prefer", PGGSSENCMODE="prefer")
    out = subprocess.run(
        ["psql", "-X", "-At", "-c", "SELECT 'via ' || 'psql'"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "via psql"


@pytest.mark.asyncio
async def test_ten_connections_at_once(server: WireServer) -> None:
    baseline = server.settled_connections()
    conns = await asyncio.wait_for(
        asyncio.gather(*(server.asyncpg() for _ in range(10))), timeout=20
    )
    try:
        assert server.stats()["connections"] == baseline + 10
        pids = {c.get_server_pid() for c in conns}
        assert len(pids) == 10, "each connection has its own BackendKeyData pid"
        results = await asyncio.gather(
            *(c.fetchval("SELECT $1::int * 10", i) for i, c in enumerate(conns))
        )
        assert results == [i * 10 for i in range(10)]
    finally:
        await asyncio.gather(*(c.close() for c in conns))
