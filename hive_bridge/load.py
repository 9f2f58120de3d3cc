"""Loading a plain SQL dump into a PostgreSQL server (or a bridge) in one transaction.

Nothing is half-written: every statement runs inside one transaction, so a failure - a statement
the server rejects, the connection dropped, the server stopped - rolls everything back and the
target is as it was. :func:`target_objects` says what an existing database already holds, so a
migration can refuse a target that is not empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from .errors import MigrateError
from .sqlscript import ScriptError, Statement, copy_rows, data_table, skip_reason

__all__ = ["LoadStats", "load_statements", "target_objects"]

#: a progress line for a long table at most this often (seconds)
PROGRESS_EVERY = 5.0

_OBJECTS = """
WITH ns AS (
  SELECT oid, nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
    AND nspname !~ '^pg_(toast|temp_|toast_temp_)'
), ext AS (SELECT objid FROM pg_depend WHERE deptype = 'e')
SELECT 'schema ' || quote_ident(nspname) FROM ns
 WHERE nspname <> 'public' AND oid NOT IN (SELECT objid FROM ext)
UNION ALL
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
         WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table'
         ELSE 'relation' END || ' ' || format('%I.%I', ns.nspname, c.relname)
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.oid NOT IN (SELECT objid FROM ext)
UNION ALL
SELECT 'function ' || format('%I.%I', ns.nspname, p.proname) || '()'
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace WHERE p.oid NOT IN (SELECT objid FROM ext)
UNION ALL
SELECT 'type ' || format('%I.%I', ns.nspname, t.typname)
  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
 WHERE t.typtype IN ('e', 'd', 'r', 'm') AND t.oid NOT IN (SELECT objid FROM ext)
ORDER BY 1
"""


def target_objects(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """What the database of ``conn`` holds besides what every new database has (schemas other than
    ``public``, tables, views, sequences, functions, types); extensions alone do not count."""
    return [str(r[0]) for r in conn.execute(_OBJECTS.encode()).fetchall()]


@dataclass
class LoadStats:
    statements: int = 0
    skipped: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)  # as the dump names them -> rows
    ms: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def load_statements(
    conn: psycopg.Connection[tuple[object, ...]],
    statements: Iterable[Statement],
    *,
    where: str,
    action: str,
    expected_tables: int | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> LoadStats:
    """Run ``statements`` on ``conn`` (not in autocommit) in one transaction, and commit."""
    stats = LoadStats()
    started = time.monotonic()
    major = conn.info.server_version // 10000
    current: str | None = None
    last_note = time.monotonic()
    total = f"/{expected_tables}" if expected_tables is not None else ""

    def finish(table: str | None) -> None:
        if table is not None:
            progress(
                f"  {table}: {stats.tables[table]} rows ({len(stats.tables)}{total} tables, "
                f"{stats.rows} rows copied)"
            )

    stmt: Statement | None = None
    try:
        with conn.transaction(), conn.cursor() as cur:
            for stmt in statements:
                reason = skip_reason(stmt, major)
                if reason is not None:
                    stats.skipped.append(f"line {stmt.line}: {stmt.sql.splitlines()[0]} ({reason})")
                    continue
                table = data_table(stmt.sql)
                if table != current:
                    finish(current)
                    current = table
                if stmt.copy_data is not None:
                    with cur.copy(stmt.sql.encode()) as copy:
                        copy.write(stmt.copy_data.encode())
                else:
                    cur.execute(stmt.sql.encode())
                stats.statements += 1
                if table is not None:
                    stats.tables[table] = stats.tables.get(table, 0) + copy_rows(stmt)
                    if time.monotonic() - last_note > PROGRESS_EVERY:
                        last_note = time.monotonic()
                        progress(f"  {table}: {stats.tables[table]} rows so far ...")
            finish(current)
            stmt = None
            progress("  committing ...")
    except ScriptError as exc:
        raise MigrateError(
            action=action,
            where=where,
            problem=f"the dump cannot be read: {exc}; the transaction was rolled back, nothing "
            "was written",
            fix="pass a plain SQL dump written by pg_dump (or hive-bridge dump)",
        ) from exc
    except psycopg.Error as exc:
        lost = conn.closed or conn.broken or isinstance(exc, psycopg.OperationalError)
        at = (
            f" at line {stmt.line} ({stmt.sql.splitlines()[0][:120]})"
            if stmt is not None
            else " while committing"
        )
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if lost:
            problem = (
                f"the connection to the target was lost{at}: {message}. The load ran in one "
                "transaction that never committed, so the server rolled it back: nothing was "
                "written"
            )
            if stmt is None:
                problem += " (unless the commit itself reached the server: check the target)"
            fix = "check that the target server runs and accepts connections, then run the same command again"
        else:
            problem = (
                f"the target rejected a statement{at}: {message}. The transaction was rolled "
                "back: nothing was written"
            )
            fix = (
                "see the statement and error above (PostgreSQL 15+ is needed; an extension the "
                "dump uses must be installed on the target)"
            )
        raise MigrateError(action=action, where=where, problem=problem, fix=fix) from exc
    stats.ms = (time.monotonic() - started) * 1000
    return stats
