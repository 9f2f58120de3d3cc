"""Every extension PGlite ships: CREATE EXTENSION and one real use of each, on a fresh data dir and
again after the data dir is reopened by a new server; the stamp and the data-dir check around them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import FAST

from hive_bridge import Bridge, DataDirError
from hive_bridge.errors import BridgeStartError


@dataclass(frozen=True)
class Raises:
    """The use fails with an error PostgreSQL raises from inside the extension's library."""

    message: str


@dataclass(frozen=True)
class Use:
    query: (
        str | Callable[[psycopg.Connection[Any]], object]
    )  # run on the fresh and the reopened dir
    expect: object  # the first column of the first row, or Raises
    setup: tuple[str, ...] = field(default=())  # after CREATE EXTENSION, on the fresh dir only


def tcn_notification(conn: psycopg.Connection[Any]) -> object:
    conn.execute("LISTEN tcn")
    conn.execute("INSERT INTO tcn_t DEFAULT VALUES")
    note = next(conn.notifies(timeout=30, stop_after=1))
    conn.execute("UNLISTEN tcn")
    return note.payload.startswith('"tcn_t",I,"id"=')


#: every extension with a control file in PGlite's bundles and pgvector's: what a user would try first
USES: dict[str, Use] = {
    "amcheck": Use("SELECT bt_index_check('pg_class_oid_index'::regclass)::text", ""),
    "autoinc": Use(
        "INSERT INTO ai VALUES (0) RETURNING n > 0",
        True,
        (
            "CREATE SEQUENCE ai_seq",
            "CREATE TABLE ai (n int)",
            "CREATE TRIGGER ai_n BEFORE INSERT ON ai FOR EACH ROW EXECUTE PROCEDURE autoinc(n, ai_seq)",
        ),
    ),
    "bloom": Use(
        "SELECT count(*) FROM bl WHERE a = 7 AND b = 8",
        1,
        (
            "CREATE TABLE bl (a int, b int)",
            "INSERT INTO bl SELECT g, g + 1 FROM generate_series(1, 100) g",
            "CREATE INDEX bl_idx ON bl USING bloom (a, b)",
        ),
    ),
    "btree_gin": Use(
        "SELECT count(*) FROM bg WHERE a = 42",
        1,
        (
            "CREATE TABLE bg (a int)",
            "INSERT INTO bg SELECT generate_series(1, 100)",
            "CREATE INDEX bg_idx ON bg USING gin (a)",
        ),
    ),
    "btree_gist": Use(
        "INSERT INTO rooms VALUES (1, '[2026-01-01 10:00, 2026-01-01 12:00)')",
        Raises("conflicting key value violates exclusion constraint"),
        (
            "CREATE TABLE rooms (room int, during tsrange,"
            " EXCLUDE USING gist (room WITH =, during WITH &&))",
            "INSERT INTO rooms VALUES (1, '[2026-01-01 09:00, 2026-01-01 11:00)')",
        ),
    ),
    "citext": Use("SELECT 'Hive'::citext = 'HIVE'::citext", True),
    "cube": Use("SELECT cube_distance(cube(array[0, 0]), cube(array[3, 4]))", 5.0),
    "dict_int": Use("SELECT ts_lexize('intdict', '12345678')", ["123456"]),
    "dict_xsyn": Use(
        "SELECT ts_lexize('xsyn', 'supernova')",
        ["supernova", "sn", "sne", "1987a"],
        ("ALTER TEXT SEARCH DICTIONARY xsyn (RULES = 'xsyn_sample', KEEPORIG = true)",),
    ),
    "earthdistance": Use(
        "SELECT round(earth_distance(ll_to_earth(0, 0), ll_to_earth(0, 1)))", 111320.0
    ),
    "file_fdw": Use(
        "SELECT v FROM pg_version_file",
        "18",
        (
            "CREATE SERVER files FOREIGN DATA WRAPPER file_fdw",
            "CREATE FOREIGN TABLE pg_version_file (v text) SERVER files"
            " OPTIONS (filename 'PG_VERSION')",
        ),
    ),
    "fuzzystrmatch": Use("SELECT levenshtein('kitten', 'sitting')", 3),
    "hstore": Use("SELECT 'a=>1, b=>2'::hstore -> 'b'", "2"),
    "insert_username": Use(
        "INSERT INTO iu (id) VALUES (1) RETURNING who",
        "postgres",
        (
            "CREATE TABLE iu (id int, who text)",
            "CREATE TRIGGER iu_who BEFORE INSERT ON iu FOR EACH ROW"
            " EXECUTE PROCEDURE insert_username(who)",
        ),
    ),
    "intarray": Use("SELECT '{1,2,3}'::int[] & '{2,3,4}'::int[]", [2, 3]),
    "isn": Use("SELECT '9780393040029'::ean13::text", "978-0-393-04002-9"),
    "lo": Use("SELECT lo_oid(lo_from_bytea(0, '\\x00')::lo) > 0", True),
    "ltree": Use("SELECT 'top.science'::ltree @> 'top.science.astronomy'::ltree", True),
    "moddatetime": Use(
        "UPDATE md SET n = n + 1 RETURNING modified > '2000-01-01'",
        True,
        (
            "CREATE TABLE md (n int, modified timestamp)",
            "INSERT INTO md VALUES (0, '2000-01-01')",
            "CREATE TRIGGER md_mod BEFORE UPDATE ON md FOR EACH ROW"
            " EXECUTE PROCEDURE moddatetime(modified)",
        ),
    ),
    "pageinspect": Use("SELECT (page_header(get_raw_page('pg_class', 0))).lower > 0", True),
    "pg_buffercache": Use("SELECT count(*) > 0 FROM pg_buffercache", True),
    "pg_freespacemap": Use("SELECT count(*) > 0 FROM pg_freespace('pg_class')", True),
    "pg_logicalinspect": Use(
        "SELECT pg_get_logical_snapshot_meta('0-40796E18.snap')",
        Raises('could not open file "pg_logical/snapshots/0-40796E18.snap"'),
    ),
    # PGlite has no shared_preload_libraries: the library loads and says so itself
    "pg_stat_statements": Use(
        "SELECT count(*) FROM pg_stat_statements",
        Raises('pg_stat_statements must be loaded via "shared_preload_libraries"'),
    ),
    "pg_surgery": Use(
        "SELECT heap_force_freeze('surgery'::regclass, array['(0,1)']::tid[])::text",
        "",
        ("CREATE TABLE surgery (a int)", "INSERT INTO surgery VALUES (1)"),
    ),
    "pg_trgm": Use("SELECT similarity('hive bridge', 'hive bridges') > 0.7", True),
    "pg_visibility": Use("SELECT count(*) > 0 FROM pg_visibility_map('pg_class')", True),
    "pg_walinspect": Use(
        "SELECT count(*) > 0 FROM pg_get_wal_records_info("
        "pg_current_wal_insert_lsn() - 10000, pg_current_wal_insert_lsn())",
        True,
    ),
    "pgcrypto": Use(
        "SELECT encode(digest('abc', 'sha256'), 'hex')",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ),
    "refint": Use(
        "INSERT INTO ri_fk VALUES (42)",
        Raises("tuple references non-existent key"),
        (
            "CREATE TABLE ri_pk (id int PRIMARY KEY)",
            "CREATE TABLE ri_fk (ref int)",
            "CREATE TRIGGER ri_check AFTER INSERT OR UPDATE ON ri_fk FOR EACH ROW"
            " EXECUTE PROCEDURE check_primary_key('ref', 'ri_pk', 'id')",
        ),
    ),
    "seg": Use("SELECT '1 .. 3'::seg @> '2'::seg", True),
    "tablefunc": Use("SELECT count(*) FROM normal_rand(5, 0, 1)", 5),
    "tcn": Use(
        tcn_notification,
        True,
        (
            "CREATE TABLE tcn_t (id serial PRIMARY KEY)",
            "CREATE TRIGGER tcn_t_notify AFTER INSERT ON tcn_t FOR EACH ROW"
            " EXECUTE FUNCTION triggered_change_notification()",
        ),
    ),
    "tsm_system_rows": Use("SELECT count(*) FROM pg_class TABLESAMPLE SYSTEM_ROWS(3)", 3),
    "tsm_system_time": Use("SELECT count(*) > 0 FROM pg_class TABLESAMPLE SYSTEM_TIME(1000)", True),
    "unaccent": Use("SELECT unaccent('Hôtel Crème Brûlée')", "Hotel Creme Brulee"),
    "uuid-ossp": Use(
        "SELECT uuid_generate_v5(uuid_ns_url(), 'https://pglite.dev')::text"
        " <> uuid_generate_v4()::text",
        True,
    ),
    "vector": Use("SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector", 2.0),
}

#: shipped libraries without a control file: LOAD, then use what they add
LOADED: dict[str, Use] = {
    "auto_explain": Use("SHOW auto_explain.log_min_duration", "-1"),
    "pg_overexplain": Use("EXPLAIN (DEBUG) SELECT 1", "Result  (cost=0.00..0.01 rows=1 width=4)"),
    "passwordcheck": Use("CREATE ROLE weak PASSWORD 'abc'", Raises("password is too short")),
}


def run(conn: psycopg.Connection[Any], use: Use) -> object:
    """What the user sees: the first value, or the error (as Raises) PostgreSQL answered."""
    try:
        if callable(use.query):
            return use.query(conn)
        row = conn.execute(use.query).fetchone()
        return row[0] if row else None
    except psycopg.Error as exc:
        return Raises(str(exc).splitlines()[0])


def matches(seen: object, expect: object) -> bool:
    if isinstance(expect, Raises):
        return isinstance(seen, Raises) and expect.message in seen.message
    return seen == expect


@dataclass
class Outcome:
    data_dir: Path
    available: set[str]
    fresh: dict[str, object]
    reopened: dict[str, object]
    loaded: dict[str, object]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """CREATE EXTENSION of each, its setup and its use on a new data dir; then the same uses after a
    new server reopened that data dir, and LOAD of the libraries without a control file. Each server
    lives only inside this fixture."""
    data_dir = tmp_path_factory.mktemp("extensions") / "db"
    fresh: dict[str, object] = {}
    reopened: dict[str, object] = {}
    loaded: dict[str, object] = {}
    with (
        Bridge(data_dir, options=FAST) as bridge,
        psycopg.connect(bridge.dsn, autocommit=True) as conn,
    ):
        rows = conn.execute("SELECT name FROM pg_available_extensions").fetchall()
        available = {name for (name,) in rows} - {"plpgsql"}
        for name, use in USES.items():
            try:
                conn.execute(f'CREATE EXTENSION "{name}" CASCADE')
                for statement in use.setup:
                    conn.execute(statement)
            except psycopg.Error as exc:
                fresh[name] = Raises(f"setup failed: {exc}")
                continue
            fresh[name] = run(conn, use)
    with (
        Bridge(data_dir, options=FAST) as bridge,
        psycopg.connect(bridge.dsn, autocommit=True) as conn,
    ):
        for name, use in USES.items():
            reopened[name] = run(conn, use)
        for name, use in LOADED.items():  # last: LOAD changes the one shared backend session
            conn.execute(f"LOAD '{name}'")
            loaded[name] = run(conn, use)
    return Outcome(data_dir, available, fresh, reopened, loaded)


def test_every_shipped_extension_is_available_and_covered(outcome: Outcome) -> None:
    assert len(outcome.available) >= 38
    assert outcome.available == set(USES), "a new or missing extension: give it a use in USES"


@pytest.mark.parametrize("name", sorted(USES))
def test_extension_on_a_fresh_data_dir(outcome: Outcome, name: str) -> None:
    assert matches(outcome.fresh[name], USES[name].expect), outcome.fresh[name]


@pytest.mark.parametrize("name", sorted(USES))
def test_extension_on_a_reopened_data_dir(outcome: Outcome, name: str) -> None:
    assert matches(outcome.reopened[name], USES[name].expect), outcome.reopened[name]


@pytest.mark.parametrize("name", sorted(LOADED))
def test_library_without_a_control_file_loads(outcome: Outcome, name: str) -> None:
    assert matches(outcome.loaded[name], LOADED[name].expect), outcome.loaded[name]


def test_the_stamp_lists_every_extension_the_data_dir_uses(outcome: Outcome) -> None:
    stamp = json.loads((outcome.data_dir / "hive-bridge.json").read_text())
    assert set(stamp["extensions"]) >= set(USES)


def test_a_server_without_an_extension_the_data_dir_uses_refuses_it(outcome: Outcome) -> None:
    with pytest.raises(DataDirError) as info:
        Bridge(outcome.data_dir, extensions=("vector",), options=FAST).start()
    assert info.value.code == "extension_missing"
    message = str(info.value)
    assert "citext" in message and "pgcrypto" in message
    assert "--extensions all" in message  # the fix: the default, every extension


def test_a_data_dir_stamped_by_a_vector_only_server_opens_with_every_extension(
    fresh_data_dir: Path,
) -> None:
    """Servers before every extension was offered stamped ``["vector"]``; such a dir opens, can use
    any extension, and its stamp then lists them all."""
    stamp_path = fresh_data_dir / "hive-bridge.json"
    old = {**json.loads(stamp_path.read_text()), "extensions": ["vector"]}
    stamp_path.write_text(json.dumps(old))
    with (
        Bridge(fresh_data_dir, options=FAST) as bridge,
        psycopg.connect(bridge.dsn, autocommit=True) as conn,
    ):
        conn.execute("CREATE EXTENSION hstore")
        row = conn.execute("SELECT 'k=>v'::hstore -> 'k'").fetchone()
    assert row == ("v",)
    stamp = json.loads(stamp_path.read_text())
    assert "hstore" in stamp["extensions"] and "vector" in stamp["extensions"]
    assert stamp["pglite_version"] == old["pglite_version"]


def test_an_unknown_extension_name_is_refused_with_the_shipped_list() -> None:
    with pytest.raises(BridgeStartError) as info:
        Bridge(None, memory=True, extensions=("postgis",), options=FAST).start()
    message = str(info.value)
    assert "unknown extension(s) postgis" in message
    assert "citext" in message and "vector" in message  # what is shipped instead


def test_bundles_are_extracted_once_and_repaired_when_files_go_missing(
    fresh_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server with an empty cache extracts the bundles itself; one that finds files of them gone
    (a cache cleaner) extracts those again instead of failing at CREATE EXTENSION."""
    monkeypatch.setenv("HIVE_BRIDGE_CACHE_DIR", str(tmp_path / "cache"))
    with Bridge(fresh_data_dir, options=FAST):
        (extracted,) = (tmp_path / "cache" / "extensions").iterdir()
    citext = extracted / "citext"
    (citext / "share/postgresql/extension/citext.control").unlink()
    (citext / "lib/postgresql/citext.so").unlink()
    with (
        Bridge(fresh_data_dir, options=FAST) as bridge,
        psycopg.connect(bridge.dsn, autocommit=True) as conn,
    ):
        conn.execute("CREATE EXTENSION citext")
        assert conn.execute("SELECT 'A'::citext = 'a'").fetchone() == (True,)
    assert (citext / "lib/postgresql/citext.so").is_file()


def test_a_narrowed_server_offers_the_named_extensions_and_what_they_require(
    fresh_data_dir: Path,
) -> None:
    with (
        Bridge(fresh_data_dir, extensions=("earthdistance",), options=FAST) as bridge,
        psycopg.connect(bridge.dsn, autocommit=True) as conn,
    ):
        rows = conn.execute("SELECT name FROM pg_available_extensions ORDER BY 1").fetchall()
        assert rows == [("cube",), ("earthdistance",), ("plpgsql",)]
        conn.execute("CREATE EXTENSION earthdistance CASCADE")  # cube comes with it
        assert conn.execute(
            "SELECT earth_distance(ll_to_earth(0, 0), ll_to_earth(0, 0))"
        ).fetchone() == (0.0,)


def test_without_a_writable_cache_every_extension_still_works(
    fresh_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing can be extracted (the cache path is under a file): PGlite loads the bundles itself."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("HIVE_BRIDGE_CACHE_DIR", str(blocker / "cache"))
    with (
        Bridge(fresh_data_dir, options=FAST) as bridge,
        psycopg.connect(bridge.dsn, autocommit=True) as conn,
    ):
        conn.execute("CREATE EXTENSION pg_trgm")
        assert conn.execute("SELECT similarity('abc', 'abc')").fetchone() == (1.0,)
    log = (fresh_data_dir.parent / f"{fresh_data_dir.name}.bridge" / "server.log").read_text()
    assert "cannot extract the extension bundles" in log
