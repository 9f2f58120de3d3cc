"""Open transactions that have not written do not block other connections (parking).

Every test here would wait for the queue timeout (and fail) if an idle reader still held the one PGlite
session; the non-parkable cases check the opposite: the holder stays pinned, the others wait, and the
reason is visible in ``/stats``. Order is asserted, never speed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors
from wire_support import WireServer, in_thread, wait_until

BARRIER_TIMEOUT = 30.0


def holder(server: WireServer) -> dict[str, Any]:
    activity: dict[str, Any] = server.stats()["activity"]
    return activity


def pinned_with(server: WireServer, reason: str) -> Callable[[], bool]:
    """Condition: someone waits, and the holder was refused parking for ``reason``."""

    def check() -> bool:
        a = holder(server)
        h = a.get("holder") or {}
        return a["waiting"] >= 1 and reason in (h.get("park_refused") or "")

    return check


def test_hive_startup_pattern(server: WireServer, unique: Callable[[str], str]) -> None:
    """A reads the catalog and stays in its transaction; B migrates and commits; A then sees it."""
    schema = unique("hive")
    a = server.psycopg()  # autocommit off: SQLAlchemy's engine.connect() behaves the same
    try:
        a.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
        assert a.execute("SELECT to_regclass(%s)", (f"{schema}.alembic_version",)).fetchone() == (
            None,
        )
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with server.psycopg() as b:  # the migration, on a second connection
            b.execute(f"CREATE SCHEMA {schema}")
            b.execute(
                f"CREATE TABLE {schema}.alembic_version (version_num varchar(32) PRIMARY KEY)"
            )
            b.execute(f"CREATE TABLE {schema}.sessions (id serial PRIMARY KEY, data jsonb)")
            b.execute(f"CREATE INDEX ON {schema}.sessions USING gin (data)")
            b.execute(f"INSERT INTO {schema}.alembic_version VALUES ('0001')")
            b.commit()
        # A is still inside the transaction it opened before B started, and sees B's commit
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert a.execute(f"SELECT version_num FROM {schema}.alembic_version").fetchone() == (
            "0001",
        )
        a.commit()
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        a.close()


def test_eight_open_readers_then_writers(server: WireServer, unique: Callable[[str], str]) -> None:
    table = unique("barrier")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (who int)")
    barrier = threading.Barrier(8, timeout=BARRIER_TIMEOUT)

    def worker(i: int) -> int:
        with server.psycopg() as conn:
            n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert n == (0,)
            barrier.wait()  # all 8 hold an open read transaction at the same time
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (i,))
            conn.commit()
            return i

    with ThreadPoolExecutor(8) as pool:
        done = sorted(pool.map(worker, range(8)))
    assert done == list(range(8))
    with server.psycopg(autocommit=True) as check:
        assert check.execute(f"SELECT count(*) FROM {table}").fetchone() == (8,)


def test_sqlalchemy_session_per_request(server: WireServer, unique: Callable[[str], str]) -> None:
    """16 concurrent request-like sessions: read, think, write, commit."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    table = unique("requests")
    engine = create_engine(server.sqlalchemy_url("psycopg"), pool_size=16, max_overflow=0)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (id serial PRIMARY KEY, req int)"))
        barrier = threading.Barrier(16, timeout=BARRIER_TIMEOUT)

        def request(i: int) -> int:
            with Session(engine) as session:
                session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                barrier.wait()  # every request is inside its transaction now ("the LLM call")
                threading.Event().wait(0.2)
                session.execute(text(f"INSERT INTO {table} (req) VALUES (:i)"), {"i": i})
                session.commit()
            return i

        with ThreadPoolExecutor(16) as pool:
            assert sorted(pool.map(request, range(16))) == list(range(16))
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 16
    finally:
        engine.dispose()


# ---- what cannot be parked stays pinned, and correct ------------------------------------------------

PINNED_CASES = {
    "write": (["INSERT INTO {t} VALUES (1)"], "written"),
    "select_for_update": (["SELECT * FROM {t} FOR UPDATE"], "written"),
    "advisory_xact_lock": (["SELECT pg_advisory_xact_lock(4242)"], "locks"),
    "lock_table": (["LOCK TABLE {t} IN SHARE MODE"], "lock"),
    "declare_cursor": (["DECLARE c CURSOR FOR SELECT 1"], "cursor"),
    "savepoint": (["SAVEPOINT before_work", "SELECT 1"], "savepoint"),
    "set_local": (["SET LOCAL work_mem = '8MB'"], "setting"),
    "set_config": (["SELECT set_config('work_mem', '9MB', true)"], "set_config"),
    "notify": (["NOTIFY parking_test"], "NOTIFY"),
    "repeatable_read": (["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT 1"], "setting"),
}


@pytest.mark.parametrize("case", sorted(PINNED_CASES))
def test_not_parkable_stays_pinned(
    server: WireServer, unique: Callable[[str], str], case: str
) -> None:
    statements, reason = PINNED_CASES[case]
    table = unique("pin")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
        setup.execute(f"INSERT INTO {table} VALUES (0)")
    a = server.psycopg(autocommit=True)
    order: list[str] = []
    try:
        a.execute("BEGIN")
        for sql in statements:
            a.execute(sql.format(t=table))

        def other() -> int:
            with server.psycopg(autocommit=True) as b:
                row = b.execute(f"SELECT count(*) FROM {table}").fetchone()
                order.append("other ran")
                return int(row[0]) if row else -1

        with ThreadPoolExecutor(1) as pool:
            fut: Future[int] = pool.submit(other)
            wait_until(pinned_with(server, reason), timeout=20, what=f"holder pinned ({reason})")
            assert not fut.done(), "the other client ran while the holder could not be parked"
            order.append("holder ends")
            a.execute("ROLLBACK")
            assert fut.result(timeout=30) == 1
        assert order == ["holder ends", "other ran"]
    finally:
        a.close()


def test_repeatable_read_begin_stays_pinned(server: WireServer) -> None:
    a = server.psycopg(autocommit=True)
    try:
        a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        a.execute("SELECT 1")
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(lambda: server.psycopg(autocommit=True).close())
            # connecting does not wait; a query would. Use the query path:
            fut.result(timeout=30)
            q = pool.submit(_select_one, server)
            wait_until(pinned_with(server, "isolation"), timeout=20, what="RR holder pinned")
            assert not q.done()
            a.execute("COMMIT")
            assert q.result(timeout=30) == 1
    finally:
        a.close()


def _select_one(server: WireServer) -> int:
    with server.psycopg(autocommit=True) as b:
        row = b.execute("SELECT 1").fetchone()
        return int(row[0]) if row else -1


def test_aborted_transaction_stays_aborted(server: WireServer) -> None:
    a = server.psycopg(autocommit=True)
    try:
        a.execute("BEGIN")
        with pytest.raises(errors.DivisionByZero):
            a.execute("SELECT 1/0")
        with ThreadPoolExecutor(1) as pool:
            q = pool.submit(_select_one, server)
            wait_until(pinned_with(server, "failed"), timeout=20, what="aborted holder pinned")
            with pytest.raises(errors.InFailedSqlTransaction):
                a.execute("SELECT 1")
            a.execute("ROLLBACK")
            assert q.result(timeout=30) == 1
        assert a.execute("SELECT 2").fetchone() == (2,)
    finally:
        a.close()


def test_advisory_lock_read_modify_write_does_not_interleave(
    server: WireServer, unique: Callable[[str], str]
) -> None:
    table = unique("counter")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
        setup.execute(f"INSERT INTO {table} VALUES (0)")
    a = server.psycopg()
    try:
        a.execute("SELECT pg_advisory_xact_lock(77)")
        seen_a = a.execute(f"SELECT v FROM {table}").fetchone()
        assert seen_a == (0,)

        def b_increments() -> int:
            with server.psycopg() as b:
                b.execute("SELECT pg_advisory_xact_lock(77)")
                row = b.execute(f"SELECT v FROM {table}").fetchone()
                assert row is not None
                b.execute(f"UPDATE {table} SET v = %s", (row[0] + 1,))
                b.commit()
                return int(row[0])

        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(b_increments)
            wait_until(pinned_with(server, "locks"), timeout=20, what="lock holder pinned")
            a.execute(f"UPDATE {table} SET v = %s", (seen_a[0] + 1,))
            a.commit()
            assert fut.result(timeout=30) == 1  # B read A's committed increment
        with server.psycopg(autocommit=True) as check:
            assert check.execute(f"SELECT v FROM {table}").fetchone() == (2,)
    finally:
        a.close()


@pytest.mark.asyncio
async def test_suspended_portal_stays_pinned(server: WireServer) -> None:
    a = await server.asyncpg()
    try:
        tr = a.transaction()
        await tr.start()
        cur = await a.cursor("SELECT generate_series(1, 100)")
        assert [r[0] for r in await cur.fetch(5)] == [1, 2, 3, 4, 5]
        b = asyncio.ensure_future(in_thread(_select_one, server))
        await in_thread(wait_until, pinned_with(server, "cursor"), 20, 0.02, "portal pinned")
        assert not b.done()
        assert [r[0] for r in await cur.fetch(2)] == [6, 7]  # the portal is intact
        await tr.commit()
        assert await b == 1
    finally:
        await a.close()


# ---- drivers' own transaction styles ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_asyncpg_transaction_parks_and_keeps_read_only(
    server: WireServer, unique: Callable[[str], str]
) -> None:
    table = unique("ro")
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        await b.execute(f"CREATE TABLE {table} (v int)")
        async with a.transaction(readonly=True):
            assert await a.fetchval(f"SELECT count(*) FROM {table}") == 0
            # another connection writes and commits while A's read-only transaction is open
            await b.execute(f"INSERT INTO {table} VALUES (1)")
            assert await a.fetchval(f"SELECT count(*) FROM {table}") == 1
            await b.execute(f"INSERT INTO {table} VALUES (2)")
            # still READ ONLY after it was parked and opened again
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await a.execute(f"INSERT INTO {table} VALUES (3)")
            raise_out = False
            assert not raise_out
    except asyncpg.InFailedSQLTransactionError:  # pragma: no cover - would be a bug
        raise
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_asyncpg_transaction_commit_after_others_ran(
    server: WireServer, unique: Callable[[str], str]
) -> None:
    table = unique("atx")
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        await b.execute(f"CREATE TABLE {table} (v int)")
        async with a.transaction():
            await a.fetchval(f"SELECT count(*) FROM {table}")
            await b.execute(f"INSERT INTO {table} VALUES (1)")
            await a.execute(f"INSERT INTO {table} VALUES (2)")  # its first write: a real one now
        assert sorted(r[0] for r in await b.fetch(f"SELECT v FROM {table}")) == [1, 2]
    finally:
        await a.close()
        await b.close()


def test_psycopg_pipeline_mode(server: WireServer, unique: Callable[[str], str]) -> None:
    table = unique("pipe")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
    a = server.psycopg()
    try:
        with a.pipeline():
            a.execute(f"SELECT count(*) FROM {table}")
            a.execute("SELECT 1")
        with server.psycopg(autocommit=True) as b:
            b.execute(f"INSERT INTO {table} VALUES (1)")
        with a.pipeline():
            cur = a.execute(f"SELECT count(*) FROM {table}")
            a.execute(f"INSERT INTO {table} VALUES (2)")
        assert cur.fetchone() == (1,)
        a.commit()
        with server.psycopg(autocommit=True) as c:
            assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)
    finally:
        a.close()


def test_begin_and_select_in_one_query_then_commit(server: WireServer) -> None:
    a = server.psycopg(autocommit=True)
    try:
        a.execute("BEGIN; SELECT 1")
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert _select_one(server) == 1  # would wait for the queue timeout if A held the backend
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        a.execute("COMMIT")  # answered by the front end: A was parked and never resumed
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert a.execute("SELECT 3").fetchone() == (3,)
    finally:
        a.close()


# ---- connecting never waits; idle writers are named ----------------------------------------------------


def test_connecting_does_not_wait_for_a_holder(
    server: WireServer, unique: Callable[[str], str]
) -> None:
    table = unique("conn")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
    a = server.psycopg()
    try:
        a.execute(f"INSERT INTO {table} VALUES (1)")  # a writer: it holds the backend
        # new startup settings (never seen by this server) while the backend is held
        b = server.psycopg(
            autocommit=True, options="-c statement_timeout=123456 -c DateStyle=german"
        )
        try:
            assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with ThreadPoolExecutor(1) as pool:
                fut = pool.submit(lambda: b.execute("SHOW statement_timeout").fetchone())
                wait_until(pinned_with(server, "written"), timeout=20, what="writer pinned")
                a.commit()
                assert fut.result(timeout=30) == ("123456ms",)
            # the reported DateStyle is the backend's canonical one
            assert b.info.parameter_status("DateStyle") == b.execute("SHOW DateStyle").fetchone()[0]  # type: ignore[index]
        finally:
            b.close()
    finally:
        a.close()


def test_queue_timeout_names_the_idle_writer(
    start_server: Callable[..., WireServer],
) -> None:
    server = start_server(queue_timeout_ms=1000)
    with server.psycopg(autocommit=True) as setup:
        setup.execute("CREATE TABLE held (v int)")
    a = server.psycopg(application_name="slow-writer")
    try:
        a.execute("INSERT INTO held VALUES (42)")
        with server.psycopg(autocommit=True) as b, pytest.raises(errors.QueryCanceled) as info:
            b.execute("SELECT count(*) FROM held")
        message = str(info.value)
        assert info.value.sqlstate == "57014"
        assert "slow-writer" in message
        assert "INSERT INTO held VALUES (42)" in message
        assert "it has written" in message
        a.rollback()
    finally:
        a.close()


def test_status_names_holder_waiting_and_parked(
    server: WireServer, unique: Callable[[str], str]
) -> None:
    """What ``hive-bridge status`` prints about the backend, from the live /stats of a server."""
    from hive_bridge.watchdog import describe_activity

    table = unique("status")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
    reader = server.psycopg(application_name="reader")
    writer = server.psycopg(application_name="writer")
    try:
        reader.execute(f"SELECT count(*) FROM {table}")  # an open read transaction
        writer.execute(f"INSERT INTO {table} VALUES (1)")  # gets the backend: the reader is parked
        assert reader.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(_select_one, server)
            wait_until(pinned_with(server, "written"), timeout=20, what="writer pinned")
            text = describe_activity(holder(server))
            assert "writer" in text and "not parked: it has written" in text, text
            assert "INSERT INTO" in text, text
            assert "1 waiting" in text, text
            assert "1 idle read transaction(s) parked" in text, text
            writer.commit()
            assert fut.result(timeout=30) == 1
        reader.commit()
    finally:
        reader.close()
        writer.close()


def test_idle_writer_is_logged_at_warning(start_server: Callable[..., WireServer]) -> None:
    server = start_server(idle_writer_warn_ms=300)
    with server.psycopg(autocommit=True) as setup:
        setup.execute("CREATE TABLE idle_w (v int)")
    reader = server.psycopg(application_name="quiet-reader")
    writer = server.psycopg(application_name="idle-writer")
    try:
        reader.execute("SELECT count(*) FROM idle_w")
        wait_until(lambda: "idle in a read-only transaction" in server.log_text(), timeout=20)
        reader.commit()
        writer.execute("INSERT INTO idle_w VALUES (1)")
        try:
            wait_until(lambda: "cannot give it up" in server.log_text(), timeout=20, what="warning")
        except AssertionError:
            raise AssertionError(
                f"no idle-writer warning; server log:\n{server.log_text()}"
            ) from None
        line = next(x for x in server.log_text().splitlines() if "cannot give it up" in x)
        assert "WARN" in line.upper() and "idle-writer" in line, line
        assert "it has written" in line and "INSERT INTO idle_w VALUES (1)" in line, line
        warnings = [x for x in server.log_text().splitlines() if "cannot give it up" in x]
        assert not [x for x in warnings if "quiet-reader" in x], warnings  # a reader hurts nobody
        writer.commit()
    finally:
        reader.close()
        writer.close()
