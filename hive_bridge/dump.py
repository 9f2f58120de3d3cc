"""Logical dumps: of a PGlite data dir (running or stopped), and of a PostgreSQL server.

PGlite runs PostgreSQL 18; a system pg_dump older than that refuses it, so a PGlite database is
dumped by PGlite's own pg_dump (WASM, ``@electric-sql/pglite-tools``) in a separate PGlite instance
(``bridge-js/dump.js``), never in the serving one:

- running: the server copies its data dir between client turns (``POST /snapshot``: CHECKPOINT and
  ``cp -a``; clients wait only for that), and the copy is dumped at leisure: one consistent point;
- stopped: the data dir is dumped in place, under its lock, so no server can open it meanwhile.

Both take the fingerprint (:mod:`hive_bridge.verify`) on the same instance right after pg_dump. The
dump is plain SQL (pg_dump ``--no-owner --no-privileges``, multi-row INSERTs: pglite-tools always
passes ``--inserts``), rewritten by :func:`hive_bridge.sqlscript.compat_text` so PostgreSQL 15 loads
it. A PostgreSQL source is dumped by the system ``pg_dump`` inside an exported snapshot, and
fingerprinted in that same snapshot.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import DataDirLockedError, MigrateError
from .locate import BridgeInstall
from .lock import DataDirLock
from .paths import RunPaths, read_password
from .statefile import read_live_state
from .supervisor import State
from .verify import QUERIES, Fingerprint, fingerprint_from_rows, run_queries

__all__ = [
    "DumpResult",
    "dump_pglite",
    "dump_postgres",
    "libpq_url",
    "redact",
    "write_new_file",
]

#: rows per INSERT statement in a PGlite dump (pglite-tools forces --inserts; one row each is slow)
ROWS_PER_INSERT = 500
PG_DUMP_ARGS = ("--no-owner", "--no-privileges")


@dataclass(frozen=True)
class DumpResult:
    sql: str
    fingerprint: Fingerprint
    source: str  # what was dumped, for messages
    pg_dump_version: str | None
    ms: float
    clients_held_ms: float | None = None  # online PGlite dump: how long clients waited
    online: bool = False


# ------------------------------------------------------------------------------ URLs


_DRIVER = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", re.IGNORECASE)


def libpq_url(url: str) -> str:
    """``postgresql+driver://…`` (SQLAlchemy) as the ``postgresql://…`` libpq and pg_dump read."""
    return _DRIVER.sub("postgresql://", url.strip())


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and reports)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", libpq_url(url))


def check_url(url: str, *, action: str) -> str:
    plain = libpq_url(url)
    if not re.match(r"^postgres(ql)?://", plain, re.IGNORECASE):
        raise MigrateError(
            action=action,
            where=redact(url),
            problem="it is not a PostgreSQL URL",
            fix="pass postgresql://USER:PASSWORD@HOST:PORT/DATABASE (a +psycopg or +asyncpg "
            "driver suffix is accepted)",
        )
    try:
        conninfo_to_dict(plain)
    except psycopg.ProgrammingError as exc:
        raise MigrateError(
            action=action,
            where=redact(url),
            problem=f"the URL cannot be parsed ({exc})",
            fix="pass postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ) from exc
    return plain


# ------------------------------------------------------------------------------ files


def write_new_file(path: Path, text: str, *, action: str = "dump") -> Path:
    """Write ``text`` to ``path``, which must not exist (written beside it, then hard-linked)."""
    path = Path(os.path.abspath(path))
    if path.exists() or path.is_symlink():
        raise MigrateError(
            action=action,
            where=str(path),
            problem="the file already exists (a dump never overwrites anything)",
            fix="choose a new file name",
        )
    if not path.parent.is_dir():
        raise MigrateError(
            action=action,
            where=str(path),
            problem=f"its directory {path.parent} does not exist",
            fix=f"mkdir -p {shlex.quote(str(path.parent))}",
        )
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.link(tmp, path)
    except FileExistsError as exc:
        raise MigrateError(
            action=action,
            where=str(path),
            problem="the file appeared while the dump was written",
            fix="choose a new file name",
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------ PGlite


def _post_snapshot(
    port: int, target: Path, password: str | None, timeout: float
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {password}"} if password else {}
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=2.0), trust_env=False) as client:
        response = client.post(
            f"http://127.0.0.1:{port}/snapshot", json={"path": str(target)}, headers=headers
        )
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:500]}
    return response.status_code, body if isinstance(body, dict) else {}


def _run_dump_js(
    install: BridgeInstall,
    data_dir: Path,
    workdir: Path,
    *,
    source: str,
    timeout: float,
) -> tuple[str, dict[str, Any]]:
    out = workdir / "dump.sql"
    queries = workdir / "queries.json"
    queries.write_text(json.dumps(QUERIES), encoding="utf-8")
    argv = [
        str(install.node),
        str(install.js_dir / "dump.js"),
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--extensions",
        "all",  # what the server offers: a superset of what the data dir uses, loaded lazily
        "--queries",
        str(queries),
        *(f"--pg-dump-arg={a}" for a in (*PG_DUMP_ARGS, f"--rows-per-insert={ROWS_PER_INSERT}")),
    ]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise MigrateError(
            action="dump",
            where=source,
            problem=f"PGlite's pg_dump did not finish within {timeout:.0f} s",
            fix="pass a longer --timeout",
        ) from exc
    result: dict[str, Any] = {}
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                result = parsed
                break
    if result.get("event") != "dumped" or proc.returncode != 0:
        detail = result.get("message") or (proc.stderr or proc.stdout).strip()[-800:]
        if result.get("code") == "version_mismatch":
            raise MigrateError(
                action="dump",
                where=source,
                problem=f"{detail}; nothing was changed",
                fix="dump it with the hive-bridge whose PGlite made it (hive-bridge dump FILE), "
                "then load that dump here: hive-bridge restore FILE --data-dir NEW",
            )
        raise MigrateError(
            action="dump",
            where=source,
            problem=f"PGlite's pg_dump failed (exit {proc.returncode}): {detail}",
            fix="see the message; `hive-bridge doctor` checks the installation "
            "(bridge-js needs @electric-sql/pglite-tools: make install)",
        )
    return out.read_text(encoding="utf-8"), result


def dump_pglite(paths: RunPaths, install: BridgeInstall, *, timeout: float = 3600.0) -> DumpResult:
    """A consistent dump of the data dir of ``paths``, whether a server runs for it or not."""
    from .sqlscript import compat_text

    data_dir = paths.data_dir
    assert data_dir is not None
    source = f"data dir {data_dir}"
    started = time.monotonic()
    state = read_live_state(paths.state)
    work = Path(tempfile.mkdtemp(prefix=f"dump-{os.getpid()}-", dir=paths.run_dir))
    try:
        if state is not None and state.state == State.RUNNING.value and state.admin_port:
            snap = work / "snapshot"
            try:
                status, body = _post_snapshot(
                    state.admin_port, snap, read_password(paths.password), timeout
                )
            except httpx.HTTPError as exc:
                raise MigrateError(
                    action="dump",
                    where=source,
                    problem=f"the running server's admin endpoint did not answer ({exc})",
                    fix=f"check it: hive-bridge status --data-dir {shlex.quote(str(data_dir))}",
                ) from exc
            if status != 200:
                raise MigrateError(
                    action="dump",
                    where=source,
                    problem=f"the running server could not copy its data dir (HTTP {status}): "
                    f"{body.get('error', body)}",
                    fix=f"see its log {paths.server_log}; free disk space next to the data dir "
                    "(the copy is as large as the data dir)",
                )
            text, result = _run_dump_js(install, snap, work, source=source, timeout=timeout)
            held: float | None = float(body.get("clients_held_ms") or 0)
            online = True
        else:
            if not (data_dir / "PG_VERSION").is_file():
                raise MigrateError(
                    action="dump",
                    where=source,
                    problem="it is not a data dir (no PG_VERSION) and no server runs for it",
                    fix="pass the --data-dir of an existing database",
                )
            try:
                lock = DataDirLock.acquire(paths.lock, data_dir=str(data_dir))
            except DataDirLockedError as exc:
                raise MigrateError(
                    action="dump",
                    where=source,
                    problem=f"process {exc.owner_pid} holds its lock but no running server "
                    "answers for it (starting or stopping)",
                    fix="wait until it runs (hive-bridge status) or has stopped, then retry",
                ) from exc
            try:
                text, result = _run_dump_js(install, data_dir, work, source=source, timeout=timeout)
            finally:
                lock.release()
            held, online = None, False
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DumpResult(
        sql=compat_text(text),
        fingerprint=fingerprint_from_rows(result.get("fingerprint") or {}),
        source=source,
        pg_dump_version=result.get("pg_dump_version"),
        ms=(time.monotonic() - started) * 1000,
        clients_held_ms=held,
        online=online,
    )


# ------------------------------------------------------------------------------ PostgreSQL


def _major(version_text: str) -> int | None:
    m = re.search(r"(\d+)(?:\.\d+)?", version_text)
    return int(m.group(1)) if m else None


def dump_postgres(url: str, *, timeout: float = 3600.0) -> DumpResult:
    """Dump a PostgreSQL database with the system ``pg_dump``, in one exported snapshot that the
    fingerprint reads too."""
    plain = check_url(url, action="migrate")
    where = redact(url)
    started = time.monotonic()
    pg_dump = shutil.which("pg_dump")
    install_fix = (
        "install the PostgreSQL client of the server's major version or newer (Debian/Ubuntu: "
        "apt-get install postgresql-client-NN; macOS: brew install libpq) and put its pg_dump "
        "on PATH"
    )
    if pg_dump is None:
        raise MigrateError(
            action="migrate", where=where, problem="pg_dump is not on PATH", fix=install_fix
        )
    version_out = subprocess.run(
        [pg_dump, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    tool_major = _major(version_out) or 0
    try:
        conn = psycopg.connect(plain, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise MigrateError(
            action="migrate",
            where=where,
            problem=f"cannot connect to the source ({str(exc).strip()})",
            fix="check the URL, that the server runs and accepts this user",
        ) from exc
    with conn:
        server_major = conn.info.server_version // 10000
        if tool_major < server_major:
            raise MigrateError(
                action="migrate",
                where=where,
                problem=f"{pg_dump} is {version_out or 'of unknown version'}, older than the "
                f"source server (PostgreSQL {server_major}); pg_dump refuses newer servers",
                fix=install_fix.replace("NN", str(server_major)),
            )
        conn.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute(b"SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        params = conninfo_to_dict(plain)
        env = dict(os.environ)
        password = params.pop("password", None)
        if password:
            env["PGPASSWORD"] = str(password)
        argv = [pg_dump, *PG_DUMP_ARGS, f"--snapshot={row[0]}", "-d", make_conninfo("", **params)]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise MigrateError(
                action="migrate",
                where=where,
                problem=f"pg_dump did not finish within {timeout:.0f} s",
                fix="pass a longer --timeout",
            ) from exc
        if proc.returncode != 0:
            raise MigrateError(
                action="migrate",
                where=where,
                problem=f"pg_dump failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}",
                fix="see pg_dump's message; the source was not changed",
            )
        results = run_queries(conn)
        conn.execute(b"ROLLBACK")
    return DumpResult(
        sql=proc.stdout,
        fingerprint=fingerprint_from_rows(results),
        source=where,
        pg_dump_version=version_out,
        ms=(time.monotonic() - started) * 1000,
    )
