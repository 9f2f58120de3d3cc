"""The outgrow path: move a database between PGlite and PostgreSQL, both ways, verified.

- :func:`migrate_to`: a PGlite data dir (running or stopped) into an empty PostgreSQL database;
- :func:`migrate_from`: a PostgreSQL database into a new PGlite data dir;
- :func:`restore_dump`: a plain SQL dump into a new PGlite data dir.

Each loads in one transaction (:mod:`hive_bridge.load`), so a failure leaves the target as it was,
then compares the fingerprints of both sides (:mod:`hive_bridge.verify`). A new PGlite data dir is
built as ``NEW.tmp-<pid>`` by a bridge of its own and renamed into place only when everything
matched: nothing is ever overwritten, and a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .bridge import Bridge
from .config import BridgeSettings
from .dump import DumpResult, check_url, dump_pglite, dump_postgres, redact
from .errors import HiveBridgeError, MigrateError, TargetNotEmptyError
from .load import LoadStats, load_statements, target_objects
from .locate import BridgeInstall
from .paths import RUN_DIR_SUFFIX, RunPaths
from .sqlscript import ScriptError, copy_rows, data_table, split_script
from .verify import Comparison, Fingerprint, compare, fingerprint_from_rows, run_queries

__all__ = [
    "MigrationReport",
    "env_lines",
    "migrate_from",
    "migrate_to",
    "restore_dump",
    "update_env",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class MigrationReport:
    source: str
    target: str
    comparison: Comparison
    load: LoadStats
    dump_ms: float
    clients_held_ms: float | None

    @property
    def ok(self) -> bool:
        return self.comparison.ok

    def lines(self) -> list[str]:
        held = (
            f"; clients held {self.clients_held_ms:.0f} ms for the snapshot"
            if self.clients_held_ms is not None
            else ""
        )
        out = [
            f"hive-bridge: migrated {self.source} -> {self.target}",
            f"  dump {self.dump_ms / 1000:.1f} s{held}; load {self.load.ms / 1000:.1f} s "
            f"({self.load.statements} statements, {self.load.rows} rows, one transaction)",
            *self.comparison.lines,
        ]
        out.extend(f"  skipped {s}" for s in self.load.skipped if "psql meta-command" not in s)
        if self.ok:
            out.append("  verified: every table, sequence, index and extension matches")
        else:
            out.append(f"  DIFFERENCES ({len(self.comparison.differences)}):")
            out.extend(f"    {d}" for d in self.comparison.differences)
        return out


# ----------------------------------------------------------------------------- to PostgreSQL


def _connect(url: str, *, action: str, what: str) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise MigrateError(
            action=action,
            where=redact(url),
            problem=f"cannot connect to the {what} ({str(exc).strip().splitlines()[0]})",
            fix="check the URL (user, password, host, port, database) and that the server runs",
        ) from exc


def migrate_to(
    paths: RunPaths,
    install: BridgeInstall,
    url: str,
    *,
    progress: Progress,
    timeout: float = 3600.0,
) -> MigrationReport:
    """Copy the PGlite database of ``paths`` into the empty PostgreSQL database at ``url``."""
    plain = check_url(url, action="migrate")
    where = redact(url)
    with _connect(plain, action="migrate", what="target") as conn:  # fail fast, before the dump
        major = conn.info.server_version // 10000
        if major < 15:
            raise MigrateError(
                action="migrate",
                where=where,
                problem=f"the target runs PostgreSQL {major}; 15 or newer is needed",
                fix="migrate into a PostgreSQL 15 (or newer) server",
            )
        objects = target_objects(conn)
    if objects:
        raise TargetNotEmptyError(where=where, objects=objects)
    progress(f"hive-bridge: dumping data dir {paths.data_dir} ...")
    dumped = dump_pglite(paths, install, timeout=timeout)
    how = "snapshot of the running server" if dumped.online else "stopped, under its lock"
    progress(
        f"  dumped in {dumped.ms / 1000:.1f} s ({how}; pg_dump {dumped.pg_dump_version}): "
        f"{len(dumped.fingerprint.tables)} tables, {dumped.fingerprint.rows} rows"
    )
    # a new connection: a server may close one left idle for as long as a large dump takes
    with _connect(plain, action="migrate", what="target") as conn:
        objects = target_objects(conn)  # again: someone may have written meanwhile
        conn.rollback()
        if objects:
            raise TargetNotEmptyError(where=where, objects=objects)
        progress(f"hive-bridge: loading into {where} (PostgreSQL {major}, one transaction) ...")
        stats = load_statements(
            conn,
            split_script(dumped.sql),
            where=where,
            action="migrate",
            expected_tables=len(dumped.fingerprint.tables),
            progress=progress,
        )
        target = fingerprint_from_rows(run_queries(conn))
        conn.rollback()
    return MigrationReport(
        source=f"PGlite data dir {paths.data_dir}",
        target=where,
        comparison=compare(dumped.fingerprint, target),
        load=stats,
        dump_ms=dumped.ms,
        clients_held_ms=dumped.clients_held_ms,
    )


# ----------------------------------------------------------------------------- into new PGlite


def _check_new_dir(data_dir: Path, *, action: str, cmd: str) -> None:
    exists = data_dir.exists() or data_dir.is_symlink()
    if exists and (not data_dir.is_dir() or data_dir.is_symlink() or any(data_dir.iterdir())):
        alt = shlex.quote(str(data_dir) + ".new")
        raise MigrateError(
            action=action,
            where=str(data_dir),
            problem="the data dir already exists and is not empty (nothing is ever "
            "overwritten); nothing was written",
            fix=f"pass a new path: {cmd} --data-dir {alt}",
        )
    if not data_dir.parent.is_dir():
        raise MigrateError(
            action=action,
            where=str(data_dir),
            problem=f"its parent directory {data_dir.parent} does not exist",
            fix=f"mkdir -p {shlex.quote(str(data_dir.parent))}",
        )


def _load_into_new_pglite(
    sql: str,
    data_dir: Path,
    settings: BridgeSettings,
    *,
    action: str,
    cmd: str,
    source: Fingerprint | None,
    progress: Progress,
) -> tuple[Comparison, LoadStats]:
    """Load ``sql`` into a new data dir built beside ``data_dir`` and renamed into place."""
    _check_new_dir(data_dir, action=action, cmd=cmd)
    tmp = data_dir.with_name(f"{data_dir.name}.tmp-{os.getpid()}")
    tmp_run = tmp.with_name(tmp.name + RUN_DIR_SUFFIX)
    try:
        statements = list(split_script(sql))
    except ScriptError as exc:
        raise MigrateError(
            action=action,
            where=str(data_dir),
            problem=f"the dump cannot be read ({exc}); nothing was written",
            fix="pass a plain SQL dump written by hive-bridge dump or pg_dump",
        ) from exc
    if source is None:  # no source to ask: the dump's own data is the reference
        expected: dict[str, int] = {}
        for stmt in statements:
            table = data_table(stmt.sql)
            if table is not None:
                expected[table] = expected.get(table, 0) + copy_rows(stmt)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp_run, ignore_errors=True)
        progress(
            f"hive-bridge: loading into a new PGlite data dir {data_dir} (one transaction) ..."
        )
        bridge = Bridge(
            tmp, attach=False, unix_socket=False, settings=settings, port=0, run_dir=tmp_run
        )
        with bridge, psycopg.connect(bridge.dsn) as conn:
            stats = load_statements(
                conn,
                statements,
                where=f"new data dir {data_dir}",
                action=action,
                expected_tables=len(source.tables) if source else None,
                progress=progress,
            )
            target = fingerprint_from_rows(run_queries(conn))
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute(b"CHECKPOINT")
        if source is None:
            source = Fingerprint(
                tables={
                    k: (v, target.tables.get(k, (0, "?"))[1])
                    for k, v in expected.items()
                    if k in target.tables or v
                },
                sequences=target.sequences,
                indexes=target.indexes,
                extensions=target.extensions,
                views=target.views,
                functions=target.functions,
                constraints=target.constraints,
            )
            # tables that got no data statement hold no rows
            for name, (count, checksum) in target.tables.items():
                if name not in source.tables and count == 0:
                    source.tables[name] = (0, checksum)
        comparison = compare(source, target)
        if comparison.ok:
            try:
                os.rename(tmp, data_dir)  # atomic; replaces an empty directory only
            except OSError as exc:
                raise MigrateError(
                    action=action,
                    where=str(data_dir),
                    problem=f"it was created by someone else meanwhile ({exc.strerror}); the new "
                    "database was not kept",
                    fix=f"pass a new path: {cmd} --data-dir {shlex.quote(str(data_dir) + '.new')}",
                ) from exc
        return comparison, stats
    except HiveBridgeError:
        raise
    except psycopg.Error as exc:
        raise MigrateError(
            action=action,
            where=f"new data dir {data_dir}",
            problem=f"the new PGlite database failed: {str(exc).strip()}; nothing was kept",
            fix="see the message; run the same command again",
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp_run, ignore_errors=True)


def migrate_from(
    url: str,
    data_dir: Path,
    settings: BridgeSettings,
    *,
    progress: Progress,
    timeout: float = 3600.0,
) -> MigrationReport:
    """Copy the PostgreSQL database at ``url`` into the new PGlite data dir ``data_dir``."""
    cmd = f"hive-bridge migrate --from {shlex.quote(redact(url))}"
    _check_new_dir(data_dir, action="migrate", cmd=cmd)
    progress(f"hive-bridge: dumping {redact(url)} with pg_dump ...")
    dumped: DumpResult = dump_postgres(url, timeout=timeout)
    progress(
        f"  dumped in {dumped.ms / 1000:.1f} s ({dumped.pg_dump_version}): "
        f"{len(dumped.fingerprint.tables)} tables, {dumped.fingerprint.rows} rows"
    )
    comparison, stats = _load_into_new_pglite(
        dumped.sql,
        data_dir,
        settings,
        action="migrate",
        cmd=cmd,
        source=dumped.fingerprint,
        progress=progress,
    )
    return MigrationReport(
        source=redact(url),
        target=f"PGlite data dir {data_dir}",
        comparison=comparison,
        load=stats,
        dump_ms=dumped.ms,
        clients_held_ms=None,
    )


def restore_dump(
    dump: Path, data_dir: Path, settings: BridgeSettings, *, progress: Progress
) -> MigrationReport:
    """Load the plain SQL dump ``dump`` into the new PGlite data dir ``data_dir``."""
    cmd = f"hive-bridge restore {shlex.quote(str(dump))}"
    started = time.monotonic()
    try:
        sql = dump.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrateError(
            action="restore",
            where=str(dump),
            problem=f"it cannot be read as a plain SQL dump ({exc})",
            fix="pass a file written by hive-bridge dump or pg_dump (plain format)",
        ) from exc
    read_ms = (time.monotonic() - started) * 1000
    comparison, stats = _load_into_new_pglite(
        sql, data_dir, settings, action="restore", cmd=cmd, source=None, progress=progress
    )
    return MigrationReport(
        source=f"dump {dump}",
        target=f"PGlite data dir {data_dir}",
        comparison=comparison,
        load=stats,
        dump_ms=read_ms,
        clients_held_ms=None,
    )


# ----------------------------------------------------------------------------- .env


def env_lines(backend: str, url: str) -> list[str]:
    return [f"HIVE_DATABASE_BACKEND={backend}", f"HIVE_DATABASE_URL={url}"]


_ENV_KEY = re.compile(r"^\s*(?:export\s+)?(HIVE_DATABASE_BACKEND|HIVE_DATABASE_URL)\s*=")


def update_env(path: Path, lines: list[str]) -> Path | None:
    """Set the two ``.env`` lines in ``path`` (other lines kept); the old file is kept as
    ``.env.bak-<time>`` first. Returns the backup's path (``None`` if there was no ``.env``)."""
    values = {line.split("=", 1)[0]: line for line in lines}
    backup: Path | None = None
    old: list[str] = []
    if path.exists():
        old = path.read_text(encoding="utf-8").splitlines()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = path.with_name(f"{path.name}.bak-{stamp}")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
            n += 1
        shutil.copy2(path, backup)
    out: list[str] = []
    for line in old:
        m = _ENV_KEY.match(line)
        if m:
            if m.group(1) in values:
                out.append(values.pop(m.group(1)))
            continue
        out.append(line)
    out.extend(values.values())
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return backup
