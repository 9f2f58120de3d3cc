"""COPY through the wire front end.

PGlite takes a COPY FROM STDIN only whole (query, data and CopyDone in one call), so the front end
answers CopyInResponse itself and buffers the data; COPY TO STDOUT streams as usual. A COPY that
fails must give its client an error and leave the server serving everyone.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess

import psycopg
import pytest
from psycopg import errors
from wire_support import WireServer

ROWS = [(1, "one", 1.5), (2, "two\ttab", None), (3, "three\nline", -2.25), (4, "quote\"'s", 0.0)]


@pytest.fixture
def copy_table(server: WireServer, unique):
    table = unique("copy_t")
    with server.psycopg(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, x float8)")
    yield table
    with server.psycopg(autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _rows(server: WireServer, table: str) -> list[tuple]:
    with server.psycopg(autocommit=True) as conn:
        return conn.execute(f"SELECT id, name, x FROM {table} ORDER BY id").fetchall()


def test_copy_from_stdin_text(server: WireServer, copy_table: str) -> None:
    with server.psycopg() as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {copy_table} (id, name, x) FROM STDIN") as copy:
                for row in ROWS:
                    copy.write_row(row)
            assert cur.rowcount == len(ROWS)
        conn.commit()
    assert _rows(server, copy_table) == ROWS


def test_copy_from_stdin_csv(server: WireServer, copy_table: str) -> None:
    data = 'id,name,x\n1,one,1.5\n2,"two, with comma",\n3,"say ""hi""",-2.25\n'
    with server.psycopg(autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {copy_table} FROM STDIN (FORMAT csv, HEADER true)") as copy:
            # in pieces, as a client streaming a file would
            for i in range(0, len(data), 7):
                copy.write(data[i : i + 7])
        assert cur.rowcount == 3
    assert _rows(server, copy_table) == [
        (1, "one", 1.5),
        (2, "two, with comma", None),
        (3, 'say "hi"', -2.25),
    ]


def test_copy_from_stdin_binary(server: WireServer, copy_table: str) -> None:
    with (
        server.psycopg(autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY {copy_table} (id, name, x) FROM STDIN (FORMAT binary)") as copy,
    ):
        copy.set_types(["int4", "text", "float8"])
        for row in ROWS:
            copy.write_row(row)
    assert _rows(server, copy_table) == ROWS


@pytest.mark.asyncio
async def test_asyncpg_copy_records_to_table_100k(server: WireServer, unique) -> None:
    table = unique("copy_big")
    conn = await server.asyncpg()
    try:
        await conn.execute(f"CREATE TABLE {table} (id int, label text)")
        n = 100_000
        records = ((i, f"row {i}") for i in range(n))
        status = await asyncio.wait_for(
            conn.copy_records_to_table(table, records=records), timeout=60
        )
        assert status == f"COPY {n}"
        count, total, last = await conn.fetchrow(
            f"SELECT count(*), sum(id), max(label) FROM {table}"
        )
        assert (count, total, last) == (n, n * (n - 1) // 2, "row 99999")
        # the connection and the server go on normally
        assert await conn.fetchval("SELECT $1::int * 2", 21) == 42
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


def test_copy_to_stdout_psycopg(server: WireServer, copy_table: str) -> None:
    with server.psycopg(autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {copy_table} SELECT g, 'n' || g, g / 2.0 FROM generate_series(1, 5000) g"
        )
        with conn.cursor() as cur:
            with cur.copy(
                f"COPY (SELECT id, name, x FROM {copy_table} ORDER BY id) TO STDOUT"
            ) as copy:
                copy.set_types(["int4", "text", "float8"])
                rows = list(copy.rows())
            with cur.copy(f"COPY {copy_table} TO STDOUT (FORMAT binary)") as copy:
                raw = b"".join(bytes(chunk) for chunk in copy)
    assert len(rows) == 5000
    assert rows[0] == (1, "n1", 0.5)
    assert rows[-1] == (5000, "n5000", 2500.0)
    assert raw.startswith(b"PGCOPY\n\xff\r\n\0")
    assert raw.endswith(struct.pack("!h", -1))


def test_copy_to_stdout_psql(server: WireServer, copy_table: str) -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    with server.psycopg(autocommit=True) as conn:
        conn.execute(f"INSERT INTO {copy_table} VALUES (1, 'a', 1), (2, 'b b', NULL)")
    out = subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"\\copy {copy_table} to stdout with (format csv)",
        ],
        env=server.libpq_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1,a,1", "2,b b,"]


def test_copy_with_bad_data_fails_and_server_goes_on(server: WireServer, copy_table: str) -> None:
    with server.psycopg() as conn, server.psycopg(autocommit=True) as other:
        with (
            pytest.raises(errors.InvalidTextRepresentation) as info,
            conn.cursor() as cur,
            cur.copy(f"COPY {copy_table} (id, name) FROM STDIN") as copy,
        ):
            copy.write("1\tfine\n")
            copy.write("not-a-number\toops\n")
        assert info.value.sqlstate == "22P02"
        assert "not-a-number" in str(info.value)
        conn.rollback()
        # same connection, then another one: both work; nothing of the failed COPY was stored
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (0,)
        conn.rollback()
        assert other.execute("SELECT 40 + 2").fetchone() == (42,)
        with other.cursor() as cur, cur.copy(f"COPY {copy_table} (id, name) FROM STDIN") as copy:
            copy.write_row((10, "after"))
    assert _rows(server, copy_table) == [(10, "after", None)]


def test_copy_fail_from_client_and_server_goes_on(server: WireServer, copy_table: str) -> None:
    class Abort(Exception):
        pass

    with server.psycopg(autocommit=True) as conn:
        # an exception inside the block makes psycopg send CopyFail
        with (
            pytest.raises(Abort),
            conn.cursor() as cur,
            cur.copy(f"COPY {copy_table} (id, name) FROM STDIN") as copy,
        ):
            copy.write_row((1, "never"))
            raise Abort
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (0,)

    # and the CopyFail error itself reaches the client (as 57014, "COPY from stdin failed")
    with server.psycopg(autocommit=True) as conn:
        pgconn = conn.pgconn
        pgconn.send_query(f"COPY {copy_table} (id, name) FROM STDIN".encode())
        res = pgconn.get_result()
        assert res.status == psycopg.pq.ExecStatus.COPY_IN
        assert pgconn.put_copy_data(b"2\tnever\n") == 1
        assert pgconn.put_copy_end(b"client gave up") == 1
        res = pgconn.get_result()
        assert res.status == psycopg.pq.ExecStatus.FATAL_ERROR
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"57014"
        assert b"client gave up" in res.error_message
        while pgconn.get_result() is not None:
            pass
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _rows(server, copy_table) == []


@pytest.mark.asyncio
async def test_failed_copy_does_not_block_others(server: WireServer, unique) -> None:
    """While one client's COPY fails, other clients keep being answered, before and after."""
    table = unique("copy_mix")
    conn = await server.asyncpg()
    others = [await server.asyncpg() for _ in range(3)]
    try:
        await conn.execute(f"CREATE TABLE {table} (id int NOT NULL)")

        async def chatter(c, k: int) -> int:
            total = 0
            for i in range(50):
                total += await c.fetchval("SELECT $1::int + $2::int", i, k)
            return total

        async def bad_copy() -> BaseException | None:
            try:
                await conn.copy_records_to_table(table, records=[(1,), (None,), (3,)])
            except Exception as exc:
                return exc
            return None

        results = await asyncio.wait_for(
            asyncio.gather(bad_copy(), *(chatter(c, k) for k, c in enumerate(others))), timeout=30
        )
        exc = results[0]
        assert exc is not None and getattr(exc, "sqlstate", None) == "23502", repr(exc)
        assert results[1:] == [sum(range(50)) + 50 * k for k in range(3)]
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        assert await conn.copy_records_to_table(table, records=[(5,)]) == "COPY 1"
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        for c in [conn, *others]:
            await c.close()
