"""The outgrow path: dump, migrate --to / --from PostgreSQL, restore of a dump.

Against a throwaway PostgreSQL 15 cluster started here (as the ``postgres`` user when root) with
pgvector; skipped cleanly when either is absent. The source is agent-platform-like: JSONB sessions
with non-ASCII text, memories with an identity column and a FK, a knowledge table with
``vector(384)`` and an HNSW index, a serial column, a view and a plpgsql function.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import run_cli, wait_until

from hive_bridge import Bridge
from hive_bridge.sqlscript import Statement, compat_text, copy_rows, data_table, split_script

pytestmark = pytest.mark.bridge

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg_tool(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A PostgreSQL cluster of its own, in a temp dir, on a free port."""

    def __init__(self) -> None:
        initdb, pg_ctl, pg_config = _pg_tool("initdb"), _pg_tool("pg_ctl"), _pg_tool("pg_config")
        if not (initdb and pg_ctl):
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        libdir = subprocess.run(
            [pg_config or "pg_config", "--pkglibdir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not (Path(libdir) / "vector.so").exists():
            pytest.skip(
                f"pgvector is not installed for the local PostgreSQL ({libdir}/vector.so): "
                "run ../shared/pgvector/install.sh"
            )
        self.pg_ctl = pg_ctl
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="hive-pg-"))
        if self.user:
            shutil.chown(self.root, self.user)
        self.data = self.root / "data"
        self.port = _free_port()
        subprocess.run(
            [
                *self._as(
                    initdb, "-D", str(self.data), "--no-sync", "-A", "trust", "-U", "postgres"
                ),
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _as(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=30"
        )
        subprocess.run(
            [
                *self._as(
                    self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log")
                ),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def stop(self) -> None:
        subprocess.run(
            self._as(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"),
            capture_output=True,
            timeout=60,
            check=False,
        )

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:secret@127.0.0.1:{self.port}/{db}"

    def createdb(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)


@pytest.fixture(scope="module")
def pg15() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


# 60 knowledge rows of vector(384): pgvector's text input is slow inside WASM, so keep it small
SOURCE_SQL = r"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE agent_sessions (
  session_id text PRIMARY KEY, agent_id text NOT NULL, memory jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT '2026-01-02 03:04:05.678+02');
CREATE TABLE memories (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  session_id text NOT NULL REFERENCES agent_sessions(session_id),
  memory text, score double precision);
CREATE TABLE knowledge (id serial PRIMARY KEY, content text, meta jsonb, embedding vector(384));
CREATE INDEX knowledge_embedding_hnsw ON knowledge USING hnsw (embedding vector_cosine_ops);
CREATE VIEW session_sizes AS SELECT session_id, count(*) AS n FROM memories GROUP BY session_id;
CREATE FUNCTION remember(sid text, body text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE new_id bigint;
BEGIN
  INSERT INTO memories (session_id, memory) VALUES (sid, body) RETURNING id INTO new_id;
  RETURN new_id;  -- a ; inside the body, and 'quotes'
END $$;
-- every row of zz_gate runs gate(): a test holds the advisory lock to stop a load right there
CREATE FUNCTION gate(i int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN i >= 0; END $$;
CREATE TABLE zz_gate (id int PRIMARY KEY CHECK (gate(id)));
INSERT INTO agent_sessions (session_id, agent_id, memory)
  SELECT 'sess-' || g, 'agent-' || (g % 3),
         jsonb_build_object('messages', jsonb_build_array(
           jsonb_build_object('role', 'user', 'content', 'Grüße, ☃ 日本語 ' || g || E' tab\t"q"'),
           jsonb_build_object('role', 'assistant', 'content', 'émoji 🎉 ' || g)), 'n', g)
  FROM generate_series(1, 40) g;
INSERT INTO memories (session_id, memory, score)
  SELECT 'sess-' || (g % 40 + 1), 'mémoire n°' || g || E'\nline two \\ back''slash', g / 7.0
  FROM generate_series(1, 400) g;
INSERT INTO knowledge (content, meta, embedding)
  SELECT 'document ' || g, jsonb_build_object('source', 'wiki', 'ü', g),
         (SELECT array_agg(sin(g * 31 + i)::real ORDER BY i) FROM generate_series(1, 384) i)::vector
  FROM generate_series(1, 60) g;
INSERT INTO zz_gate SELECT g FROM generate_series(1, 5) g;
"""

TABLES = {"agent_sessions": "session_id", "memories": "id", "knowledge": "id", "zz_gate": "id"}
KNN = (
    "EXPLAIN SELECT id FROM knowledge ORDER BY embedding <=> "
    "(SELECT embedding FROM knowledge WHERE id = 7) LIMIT 5"
)


def _rows(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        conn.execute(b"SET TimeZone = 'UTC'")
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY {pk}".encode()).fetchall()
            for t, pk in TABLES.items()
        }


def _knn_uses_hnsw(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        conn.execute(b"SET enable_seqscan = off")
        return "\n".join(str(r[0]) for r in conn.execute(KNN.encode()).fetchall())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list]]:
    """A stopped PGlite data dir with the agent-like data, and its rows."""
    data_dir = tmp_path_factory.mktemp("migrate") / "source.db"
    with Bridge(data_dir, attach=False) as bridge:
        with psycopg.connect(bridge.dsn, autocommit=True) as conn:
            conn.execute(SOURCE_SQL.encode())
        rows = _rows(bridge.dsn)
    return data_dir, rows


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*(str(d) for d in PG_BIN_DIRS[:1]), env.get("PATH", "")])
    return env


# ---------------------------------------------------------------------------- the round trip


@pytest.mark.timeout(900)
def test_pglite_to_postgres15_and_back_is_identical(
    pg15: Cluster, source: tuple[Path, dict[str, list]], tmp_path: Path
) -> None:
    data_dir, rows = source
    url = pg15.createdb("roundtrip")
    env_file = tmp_path / ".env"
    env_file.write_text("OTHER=kept\nHIVE_DATABASE_URL=pglite://./old.db\n")

    moved = run_cli(
        "migrate",
        "--to",
        url.replace("postgresql://", "postgresql+psycopg://"),
        "--data-dir",
        str(data_dir),
        "--update-env",
        "--env-file",
        str(env_file),
        env=_env(tmp_path),
        timeout=600,
    )
    assert moved.returncode == 0, moved.stderr + moved.stdout
    assert "verified" in moved.stdout
    assert "public.knowledge_embedding_hnsw" in moved.stdout
    assert "tables, 505 rows copied" in moved.stderr  # progress: 40 + 400 + 60 + 5
    assert "secret" not in moved.stderr  # the password is never printed in progress
    new_env = env_file.read_text()
    assert "OTHER=kept" in new_env
    assert "HIVE_DATABASE_BACKEND=postgresql\n" in new_env
    assert (
        f"HIVE_DATABASE_URL=postgresql+psycopg://postgres:secret@127.0.0.1:{pg15.port}" in new_env
    )
    backups = list(tmp_path.glob(".env.bak-*"))
    assert len(backups) == 1
    assert "pglite://./old.db" in backups[0].read_text()

    assert _rows(url) == rows  # every row, every column: JSONB, non-ASCII text, vectors

    # and back, into a new PGlite data dir, from PostgreSQL 15 (its own pg_dump)
    back_dir = tmp_path / "back.db"
    moved_back = run_cli(
        "migrate", "--from", url, "--data-dir", str(back_dir), env=_env(tmp_path), timeout=600
    )
    assert moved_back.returncode == 0, moved_back.stderr + moved_back.stdout
    assert "verified" in moved_back.stdout
    assert f"HIVE_DATABASE_URL=pglite://{back_dir}" in moved_back.stdout
    assert not list(tmp_path.glob("back.db.tmp-*"))  # built beside it, renamed into place

    # inserting after the move works on both sides (identity, serial, function), and the HNSW index
    # serves a KNN query on both
    with psycopg.connect(url) as conn:
        assert conn.execute(b"SELECT remember('sess-1', 'after the move')").fetchone() == (401,)
        conn.execute(b"INSERT INTO knowledge (content) VALUES ('new')")
    assert "knowledge_embedding_hnsw" in _knn_uses_hnsw(url)
    with Bridge(back_dir, attach=False) as bridge:
        assert _rows(bridge.dsn) == rows
        with psycopg.connect(bridge.dsn) as conn:
            assert conn.execute(b"SELECT remember('sess-2', 'back home')").fetchone() == (401,)
            row = conn.execute(b"INSERT INTO knowledge (content) VALUES ('x') RETURNING id")
            assert row.fetchone() == (61,)
        assert "knowledge_embedding_hnsw" in _knn_uses_hnsw(bridge.dsn)


# ---------------------------------------------------------------------------- refusals, failures


def _public_objects(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            str(r[0])
            for r in conn.execute(
                b"SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                b"UNION ALL SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
                b"ORDER BY 1"
            ).fetchall()
        ]


@pytest.mark.timeout(300)
def test_a_target_that_is_not_empty_is_refused_untouched(
    pg15: Cluster, source: tuple[Path, dict[str, list]], tmp_path: Path
) -> None:
    url = pg15.createdb("occupied")
    with psycopg.connect(url) as conn:
        conn.execute(b"CREATE TABLE precious (v text)")
        conn.execute(b"INSERT INTO precious VALUES ('keep me')")
    before = _public_objects(url)
    result = run_cli("migrate", "--to", url, "--data-dir", str(source[0]), env=_env(tmp_path))
    assert result.returncode == 1
    assert "not empty" in result.stderr and "table public.precious" in result.stderr
    assert "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr
    assert _public_objects(url) == before
    with psycopg.connect(url) as conn:
        assert conn.execute(b"SELECT v FROM precious").fetchall() == [("keep me",)]


@pytest.mark.timeout(600)
def test_a_target_that_drops_mid_load_is_left_clean(
    pg15: Cluster, source: tuple[Path, dict[str, list]], tmp_path: Path
) -> None:
    url = pg15.createdb("dropping")
    with psycopg.connect(url, autocommit=True) as gatekeeper:
        gatekeeper.execute(b"SELECT pg_advisory_lock(4242)")  # zz_gate's rows will wait for it
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hive_bridge",
                "migrate",
                "--to",
                url,
                "--data-dir",
                str(source[0]),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(tmp_path),
        )
        try:

            def blocked_loader() -> int | None:
                if proc.poll() is not None:
                    out, err = proc.communicate()
                    raise AssertionError(
                        f"migrate ended before the load reached zz_gate: {err}{out}"
                    )
                row = gatekeeper.execute(
                    b"SELECT pid FROM pg_stat_activity WHERE datname = 'dropping' "
                    b"AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                ).fetchone()
                return int(row[0]) if row else None

            pid = wait_until(
                blocked_loader, timeout=400, interval=0.2, what="the load to reach zz_gate"
            )
            gatekeeper.execute(b"SELECT pg_terminate_backend(%s)", (pid,))
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, out + err
    assert "connection to the target was lost" in err
    assert "nothing was written" in err
    assert "Traceback" not in err
    assert "public.memories: 400 rows" in err  # it was well into the load
    assert _public_objects(url) == []  # rolled back: not a table, not a function


@pytest.mark.timeout(120)
def test_migrate_from_without_pg_dump_says_how_to_get_it(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = dict(os.environ, PATH=str(bin_dir))
    result = run_cli(
        "migrate",
        "--from",
        "postgresql://u:pw@127.0.0.1:1/db",
        "--data-dir",
        str(tmp_path / "n"),
        env=env,
    )
    assert result.returncode == 1
    assert "pg_dump is not on PATH" in result.stderr
    assert "apt-get install postgresql-client" in result.stderr
    assert not (tmp_path / "n").exists()


@pytest.mark.timeout(120)
def test_migrate_from_with_a_pg_dump_older_than_the_server_says_so(
    pg15: Cluster, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 14.9"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = run_cli("migrate", "--from", pg15.url(), "--data-dir", str(tmp_path / "n"), env=env)
    assert result.returncode == 1
    assert "14.9, older than the source server (PostgreSQL 15)" in result.stderr
    assert "postgresql-client-15" in result.stderr
    assert not (tmp_path / "n").exists()


# ---------------------------------------------------------------------------- dump while writing


@pytest.mark.timeout(600)
def test_dump_while_two_clients_write_is_consistent_and_restores(tmp_path: Path) -> None:
    data_dir = tmp_path / "busy.db"
    stop = threading.Event()
    errors: list[BaseException] = []
    with Bridge(data_dir, attach=False) as bridge:
        with psycopg.connect(bridge.dsn, autocommit=True) as conn:
            conn.execute(
                b"CREATE TABLE orders (id bigint PRIMARY KEY, who text);"
                b"CREATE TABLE order_lines (order_id bigint PRIMARY KEY REFERENCES orders(id), "
                b"item text)"
            )

        def writer(k: int) -> None:
            try:
                with psycopg.connect(bridge.dsn) as conn:
                    i = 0
                    while not stop.is_set():
                        i += 1
                        oid = k * 1_000_000 + i
                        with conn.transaction():  # one order and its line, or neither
                            conn.execute(b"INSERT INTO orders VALUES (%s, %s)", (oid, f"w{k}"))
                            conn.execute("INSERT INTO order_lines VALUES (%s, 'thé')", (oid,))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(k,)) for k in (1, 2)]
        for t in threads:
            t.start()
        try:
            with psycopg.connect(bridge.dsn, autocommit=True) as conn:

                def orders() -> int:
                    return int(conn.execute(b"SELECT count(*) FROM orders").fetchone()[0])  # type: ignore[index]

                wait_until(lambda: orders() >= 50, timeout=60, what="writers to get going")
                dump = tmp_path / "busy.sql"
                result = run_cli("dump", str(dump), "--data-dir", str(data_dir), timeout=400)
                written_meanwhile = orders()
                wait_until(lambda: orders() > written_meanwhile, timeout=60, what="writes after")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    assert not errors, errors
    assert result.returncode == 0, result.stderr
    assert "snapshot of the running server" in result.stderr

    text = dump.read_text()
    assert "transaction_timeout = 0;" not in text.replace("-- SET transaction_timeout", "")
    ids: dict[str, int] = {}
    for stmt in split_script(text):
        table = data_table(stmt.sql)
        if table:
            ids[table] = ids.get(table, 0) + copy_rows(stmt)
    assert ids["public.orders"] >= 50
    assert ids["public.orders"] == ids["public.order_lines"]  # no half transaction

    # the dump restores into a new data dir (never over an existing one)
    taken = tmp_path / "taken.db"
    taken.mkdir()
    (taken / "keep").write_text("x")
    refused = run_cli("restore", str(dump), "--data-dir", str(taken))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert [p.name for p in taken.iterdir()] == ["keep"]
    restored_dir = tmp_path / "restored.db"
    restored = run_cli("restore", str(dump), "--data-dir", str(restored_dir), timeout=400)
    assert restored.returncode == 0, restored.stderr + restored.stdout
    with Bridge(restored_dir, attach=False) as bridge, psycopg.connect(bridge.dsn) as conn:
        n = conn.execute(
            b"SELECT count(*) FROM orders o JOIN order_lines l ON l.order_id = o.id"
        ).fetchone()
        assert n == (ids["public.orders"],)
        assert conn.execute(b"SELECT DISTINCT item FROM order_lines").fetchall() == [("thé",)]


# ---------------------------------------------------------------------------- the script splitter


def test_split_script_follows_quotes_dollar_quotes_copy_and_meta_commands() -> None:
    script = (
        "\\restrict abc\n"
        "-- a comment; with a semicolon\n"
        "SET transaction_timeout = 0;\n"
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;b' $body$;\n"
        "INSERT INTO public.t VALUES\n\t(1, 'it''s; fine'),\n\t(2, E'back\\\\slash\\' ;');\n"
        'INSERT INTO public."Weird Name" VALUES (1, $$x;y$$, /* c; /* nested; */ d; */ 2);\n'
        "COPY public.c (a, b) FROM stdin;\n1\tx;y\n2\t\\N\n\\.\n"
        "COPY public.empty (a) FROM stdin;\n\\.\n"
        "SELECT 1;\n"
        "\\unrestrict abc\n"
    )
    stmts = list(split_script(script))
    assert [s.meta for s in stmts] == [True, False, False, False, False, False, False, False, True]
    assert stmts[3].sql.startswith("INSERT INTO public.t") and copy_rows(stmts[3]) == 2
    assert data_table(stmts[4].sql) == 'public."Weird Name"' and copy_rows(stmts[4]) == 1
    assert stmts[5].copy_data == "1\tx;y\n2\t\\N\n" and copy_rows(stmts[5]) == 2
    assert stmts[6].copy_data == "" and data_table(stmts[6].sql) == "public.empty"
    assert stmts[7].sql == "SELECT 1;"
    assert isinstance(stmts[0], Statement) and stmts[0].line == 1
    assert "-- SET transaction_timeout" in compat_text(script)
    assert "\nSET transaction_timeout" not in compat_text(script)


@pytest.mark.timeout(120)
def test_dump_of_a_data_dir_of_another_pglite_version_is_refused_untouched(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    old.mkdir()
    (old / "PG_VERSION").write_text("17\n")
    (old / "hive-bridge.json").write_text('{"pglite_version": "0.4.3", "postgres_version": "17.4"}')
    before = sorted(p.name for p in old.iterdir())
    result = run_cli("dump", str(tmp_path / "old.sql"), "--data-dir", str(old))
    assert result.returncode == 1
    assert "created by PGlite 0.4.3" in result.stderr and "nothing was changed" in result.stderr
    assert "hive-bridge restore FILE --data-dir NEW" in result.stderr
    assert sorted(p.name for p in old.iterdir()) == before
    assert not (tmp_path / "old.sql").exists()
