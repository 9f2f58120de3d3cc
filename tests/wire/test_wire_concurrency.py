"""Many clients on the one PGlite session: prepared statements stay per client, results stay right.

One backend session serves everyone, so the front end must keep each client's prepared statement
names apart (every asyncpg connection calls its statements ``__asyncpg_stmt_N__``, every psycopg one
``_pg3_N``) and must never interleave one client's Parse/Bind/Execute/Sync with another's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
from wire_support import WireServer

TASKS = 8
ROUNDS = 250


@pytest.mark.asyncio
async def test_asyncpg_concurrent_prepared_queries(server: WireServer, unique) -> None:
    table = unique("conc_apg")
    setup = await server.asyncpg()
    await setup.execute(f"CREATE TABLE {table} (who int, n int)")

    async def worker(k: int) -> int:
        conn = await server.asyncpg()
        try:
            # the same SQL text in every connection: the same client-side statement names
            stmt = await conn.prepare(
                "SELECT $1::int AS i, $2::text AS tag, $1::int * $3::int AS product"
            )
            name = await conn.prepare(f"SELECT count(*) FROM {table} WHERE who = $1")
            for i in range(ROUNDS):
                row = await stmt.fetchrow(i, f"task{k}", k + 1)
                assert (row["i"], row["tag"], row["product"]) == (i, f"task{k}", i * (k + 1)), (
                    k,
                    i,
                    row,
                )
                # statement cache path (named statements created on the fly)
                assert await conn.fetchval("SELECT $1::int + $2::int", i, k) == i + k
                if i % 25 == 0:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", k, i)
                        assert await name.fetchval(k) == i // 25 + 1
            return await name.fetchval(k)
        finally:
            await conn.close()

    try:
        counts = await asyncio.wait_for(
            asyncio.gather(*(worker(k) for k in range(TASKS))), timeout=60
        )
        assert counts == [ROUNDS // 25] * TASKS
        rows = await setup.fetch(
            f"SELECT who, count(*) AS c, sum(n) AS s FROM {table} GROUP BY who ORDER BY who"
        )
        expected_sum = sum(range(0, ROUNDS, 25))
        assert [(r["who"], r["c"], r["s"]) for r in rows] == [
            (k, ROUNDS // 25, expected_sum) for k in range(TASKS)
        ]
    finally:
        await setup.execute(f"DROP TABLE IF EXISTS {table}")
        await setup.close()


def test_psycopg_thread_pool_prepared_queries(server: WireServer, unique) -> None:
    table = unique("conc_pg")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (who int, n int)")

    def worker(k: int) -> int:
        with server.psycopg() as conn:
            for i in range(ROUNDS):
                row = conn.execute(
                    "SELECT %s::int, %s::text, %s::int * %s::int",
                    (i, f"thread{k}", i, k + 1),
                    prepare=True,
                ).fetchone()
                assert row == (i, f"thread{k}", i * (k + 1)), (k, i, row)
                # default path: prepared by psycopg after prepare_threshold executions
                assert conn.execute("SELECT %s::int + %s::int", (i, k)).fetchone() == (i + k,)
                if i % 25 == 0:
                    conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (k, i))
                    n = conn.execute(
                        f"SELECT count(*) FROM {table} WHERE who = %s", (k,)
                    ).fetchone()
                    assert n == (i // 25 + 1,)
                    conn.commit()
            return conn.execute(f"SELECT count(*) FROM {table} WHERE who = %s", (k,)).fetchone()[0]

    try:
        with ThreadPoolExecutor(TASKS) as pool:
            counts = list(pool.map(worker, range(TASKS), timeout=60))
        assert counts == [ROUNDS // 25] * TASKS
    finally:
        with server.psycopg(autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


# A client process with DEFAULT driver settings: asyncpg's statement cache on, psycopg's default
# prepare_threshold (5). Both processes use the same statement names; they must not collide.
CLIENT_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys, tempfile
    import asyncpg, psycopg

    dsn, adsn, table, tag, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

    async def main():
        conn = await asyncpg.connect(adsn, ssl=False)
        pconn = psycopg.connect(dsn, autocommit=True)
        trace = tempfile.TemporaryFile("w+")
        pconn.pgconn.trace(trace.fileno())
        pconn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        stmt = await conn.prepare("SELECT $1::int * 2 + $2::int")
        # asyncpg's prepare() ends with Flush, not Sync; run the statement at once so this connection
        # is not left mid-request (test_asyncpg_prepare_then_other_connection covers that case)
        assert await stmt.fetchval(1, 1) == 3
        names = [stmt.get_name()]
        for i in range(8):
            assert pconn.execute("SELECT %s::int * 3, %s::text", (i, tag)).fetchone() == (i * 3, tag)
        print("ready", flush=True)
        sys.stdin.readline()  # the parent says go once both processes hold their statements
        for i in range(rounds):
            assert await stmt.fetchval(i, 7) == 2 * i + 7
            assert await conn.fetchval("SELECT $1::text || '-' || $2::int", tag, i) == f"{tag}-{i}"
            await conn.execute(f"INSERT INTO {table} (who, n) VALUES ($1, $2)", tag, i)
            assert pconn.execute("SELECT %s::int * 3, %s::text", (i, tag)).fetchone() == (i * 3, tag)
            assert pconn.execute("SELECT %s::int - 1", (i,)).fetchone() == (i - 1,)
        mine = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE who = $1", tag)
        pconn.pgconn.untrace()
        trace.seek(0)
        binds = [ln for ln in trace if "Bind" in ln and '"_pg3_' in ln]
        await conn.close()
        pconn.close()
        result = {"rows": mine, "asyncpg_names": names, "psycopg_prepared_binds": len(binds)}
        print(json.dumps(result), flush=True)

    asyncio.run(main())
    """
)


def test_two_processes_with_default_driver_settings(server: WireServer, unique) -> None:
    table = unique("procs")
    rounds = 300
    with server.psycopg(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (who text, n int)")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT_PROCESS,
                server.dsn,
                server.async_dsn,
                table,
                tag,
                str(rounds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            assert line.strip() == "ready", (
                f"client process did not get ready: {line!r}\n{proc.stderr.read()}"
            )
        for proc in procs:  # both hold prepared statements now; run at the same time
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"client process failed:\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for res in results:
        assert res["rows"] == rounds
        # psycopg really prepared (Bind to a _pg3_ statement) ...
        assert res["psycopg_prepared_binds"] >= rounds
    # ... and both processes used the very same asyncpg statement name at the same time
    assert results[0]["asyncpg_names"] == results[1]["asyncpg_names"]
    assert results[0]["asyncpg_names"][0].startswith("__asyncpg_stmt_")
    with server.psycopg(autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT who, count(*), sum(n) FROM {table} GROUP BY who ORDER BY who"
        ).fetchall()
        conn.execute(f"DROP TABLE {table}")
    total = sum(range(rounds))
    assert rows == [("p1", rounds, total), ("p2", rounds, total)]


@pytest.mark.asyncio
async def test_asyncpg_prepare_then_other_connection(server: WireServer) -> None:
    """``Connection.prepare()`` returns after Parse/Describe/Flush, without a Sync. A program that
    prepares on one connection and then queries on another (pool ``init`` callbacks do this; so does
    any single-threaded program with two connections) must not wait for the first one's next query."""
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        stmt = await a.prepare("SELECT $1::int + 1")
        try:
            value = await asyncio.wait_for(b.fetchval("SELECT 41 + 1"), timeout=20)
        except TimeoutError:
            pytest.fail(
                "a query on connection B waited >20 s because connection A had prepared a statement"
            )
        assert value == 42
        assert await stmt.fetchval(1) == 2
    finally:
        a.terminate()
        b.terminate()
