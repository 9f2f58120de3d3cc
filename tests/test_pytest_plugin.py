"""The pytest plugin (hive_bridge/pytest_plugin.py) as a user's test suite meets it: run by pytester in
a separate pytest process, with the plugin loaded from its pytest11 entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
hive_bridge_load =
    seed.sql
"""

SEED = "CREATE TABLE seeded (id int); INSERT INTO seeded VALUES (1);"

#: what a user writes; test_a and test_b share table names on purpose, so do the two engine tests
USER_TESTS = """
import psycopg
import pytest
from sqlalchemy import text


def test_a_creates_a_table(hive_bridge_dsn):
    with psycopg.connect(hive_bridge_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('written by test a')")
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_b_gets_a_clean_database(hive_bridge_dsn):
    with psycopg.connect(hive_bridge_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('notes')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM seeded").fetchone() == (1,)  # loaded again


def test_engine(hive_bridge_engine):
    with hive_bridge_engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (n int)"))
        conn.execute(text("INSERT INTO items VALUES (1), (2)"))
    with hive_bridge_engine.connect() as conn:
        assert conn.execute(text("SELECT sum(n) FROM items")).scalar() == 3


@pytest.mark.asyncio
async def test_async_engine(hive_bridge_async_engine):
    async with hive_bridge_async_engine.begin() as conn:
        await conn.execute(text("CREATE TABLE items (n int)"))
        await conn.execute(text("INSERT INTO items VALUES (5)"))
    async with hive_bridge_async_engine.connect() as conn:
        assert (await conn.execute(text("SELECT sum(n) FROM items"))).scalar() == 5
        assert (await conn.execute(text("SELECT count(*) FROM seeded"))).scalar() == 1


def test_every_extension_is_offered(hive_bridge_dsn):
    with psycopg.connect(hive_bridge_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION citext")
        assert conn.execute("SELECT 'Hive'::citext = 'HIVE'").fetchone() == (True,)


def test_z_the_schemas_of_earlier_tests_are_gone(hive_bridge_database):
    with psycopg.connect(hive_bridge_database.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hb_test_%'")
        assert rows.fetchall() == [(hive_bridge_database.schema,)]
"""


def basetemp(pytester: pytest.Pytester) -> Path:
    """The --basetemp pytester gave the (one) inner pytest run."""
    (found,) = pytester.path.glob("runpytest-[0-9]*")
    return found


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makefile(".sql", seed=SEED)
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


@pytest.mark.timeout(300)
def test_schema_isolation_dsn_engines_and_load(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--durations=3")
    result.assert_outcomes(passed=6)
    assert [d.name for d in (basetemp(suite) / "hive-bridge").iterdir()] == ["main"]


@pytest.mark.timeout(300)
def test_datadir_isolation(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--hive-bridge-isolation",
        "datadir",
        "test_user.py::test_a_creates_a_table",
        "test_user.py::test_b_gets_a_clean_database",
    )
    result.assert_outcomes(passed=2)
    left = sorted(p.name for p in (basetemp(suite) / "hive-bridge" / "main").iterdir())
    assert left == ["template", "template.bridge"]  # each test's copy is removed after it


@pytest.mark.timeout(300)
def test_one_server_per_xdist_worker(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        test_workers=f"""
import json, os
import psycopg
import pytest


@pytest.mark.parametrize("n", range(4))
def test_worker(hive_bridge_server, hive_bridge_dsn, n):
    with psycopg.connect(hive_bridge_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int)")  # the same name in every test: isolated
        port = conn.info.port
    worker = os.environ["PYTEST_XDIST_WORKER"]
    out = {str(tmp_path)!r} + f"/{{worker}}-{{n}}.json"
    with open(out, "w") as f:
        json.dump({{"worker": worker, "port": port, "data_dir": str(hive_bridge_server.data_dir)}}, f)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=4)
    seen = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    by_worker: dict[str, set[tuple[int, str]]] = {}
    for s in seen:
        by_worker.setdefault(s["worker"], set()).add((s["port"], s["data_dir"]))
    assert sorted(by_worker) == ["gw0", "gw1"]
    servers = [next(iter(v)) for v in by_worker.values()]
    assert all(len(v) == 1 for v in by_worker.values())  # one server for all tests of a worker
    assert servers[0][0] != servers[1][0] and servers[0][1] != servers[1][1]


def test_the_plugin_is_idle_until_a_fixture_is_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
import sys
import psutil


def test_plain(request):
    assert request.config.pluginmanager.has_plugin("hive_bridge")  # loaded by its entry point
    assert psutil.Process().children(recursive=True) == []  # no server, no Node
    assert "sqlalchemy" not in sys.modules
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (basetemp(pytester) / "hive-bridge").exists()


def test_a_bad_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("--hive-bridge-isolation", "transaction")  # in process: no server
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*hive_bridge_isolation must be one of schema, datadir, got 'transaction'*"]
    )
