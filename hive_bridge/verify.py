"""What a migration compares: a fingerprint of a database, taken the same way on both sides.

The fingerprint is a handful of plain ``SELECT`` queries (:data:`QUERIES`), so the same text runs on
PGlite inside the dump helper (bridge-js/dump.js, on the very snapshot that was dumped), on a
PostgreSQL server through psycopg, and on a bridge. Per table: the row count and the sums of the
two 64-bit halves of every row text's md5 (independent of row order and collation, in constant
memory, no sort; duplicate rows do not cancel out as they would with XOR). Also sequences, indexes
(HNSW included), extensions, views, functions and constraints by name and definition, and for every
serial/identity column whether its sequence is past the column's largest value (the next insert
must not collide). Per-table queries are built inside the server with ``query_to_xml``, which needs
no helper function on either side.

Session settings (time zone, date style, float digits, search path) are fixed by :data:`SETUP` so
row texts compare across servers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["QUERIES", "SETUP", "Comparison", "Fingerprint", "compare", "fingerprint_from_rows"]

SETUP = (
    "SELECT set_config('search_path', 'pg_catalog', false), set_config('TimeZone', 'UTC', false), "
    "set_config('DateStyle', 'ISO, YMD', false), set_config('IntervalStyle', 'postgres', false), "
    "set_config('extra_float_digits', '1', false), set_config('bytea_output', 'hex', false)"
)

_USER_NS = (
    "SELECT oid, nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', "
    "'information_schema') AND nspname !~ '^pg_(toast|temp_|toast_temp_)'"
)
_NOT_EXT_MEMBER = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"

QUERIES: dict[str, str] = {
    "_setup": SETUP,
    "tables": f"""
WITH ns AS ({_USER_NS})
SELECT format('%I.%I', ns.nspname, c.relname),
       query_to_xml(format(
         'SELECT count(*)::text || '' '' ||
                 coalesce(sum((''x'' || left(h, 16))::bit(64)::bigint::numeric), 0)::text || '':'' ||
                 coalesce(sum((''x'' || right(h, 16))::bit(64)::bigint::numeric), 0)::text AS v
            FROM (SELECT md5(ROW(r.*)::text) AS h FROM %I.%I r) s', ns.nspname, c.relname),
         false, true, '')::text
FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {_NOT_EXT_MEMBER.format(oid="c.oid")}
ORDER BY 1""",
    "sequences": f"""
WITH ns AS ({_USER_NS})
SELECT format('%I.%I', s.schemaname, s.sequencename), coalesce(s.last_value::text, 'unused')
FROM pg_sequences s JOIN ns ON ns.nspname = s.schemaname ORDER BY 1""",
    "owned_sequences": f"""
WITH ns AS ({_USER_NS})
SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I.%I', tn.nspname, t.relname, a.attname),
       query_to_xml(format('SELECT max(%I)::text AS v FROM %I.%I', a.attname, tn.nspname, t.relname),
                    false, true, '')::text,
       ps.last_value::text, ps.increment_by::text
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN ns sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN ns tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
JOIN pg_sequences ps ON ps.schemaname = sn.nspname AND ps.sequencename = s.relname
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i')
ORDER BY 1""",
    "indexes": f"""
WITH ns AS ({_USER_NS})
SELECT format('%I.%I', ns.nspname, i.relname), am.amname, pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam
JOIN ns ON ns.oid = i.relnamespace
WHERE {_NOT_EXT_MEMBER.format(oid="x.indrelid")} ORDER BY 1""",
    "extensions": "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
    "views": f"""
WITH ns AS ({_USER_NS})
SELECT format('%I.%I', ns.nspname, c.relname), c.relkind::text
FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND {_NOT_EXT_MEMBER.format(oid="c.oid")} ORDER BY 1""",
    "functions": f"""
WITH ns AS ({_USER_NS})
SELECT format('%I.%I', ns.nspname, p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       p.prokind::text
FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
WHERE {_NOT_EXT_MEMBER.format(oid="p.oid")} ORDER BY 1""",
    "constraints": f"""
WITH ns AS ({_USER_NS})
SELECT format('%I.%I', ns.nspname, c.relname) || ' ' || quote_ident(k.conname), k.contype::text
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN ns ON ns.oid = c.relnamespace
WHERE k.contype <> 'n' AND {_NOT_EXT_MEMBER.format(oid="c.oid")} ORDER BY 1""",
}

_XML_VALUE = re.compile(r"<v>(.*?)</v>", re.DOTALL)

Rows = Sequence[Sequence[Any]]


def _xml_value(xml: object) -> str | None:
    m = _XML_VALUE.search(str(xml or ""))
    return m.group(1) if m else None


@dataclass(frozen=True)
class Fingerprint:
    """A database, as :data:`QUERIES` see it."""

    tables: dict[str, tuple[int, str]]  # name -> (row count, checksum)
    sequences: dict[str, str]
    indexes: dict[str, tuple[str, str]]  # name -> (access method, definition)
    extensions: dict[str, str]  # name -> version
    views: dict[str, str]
    functions: dict[str, str]
    constraints: dict[str, str]
    #: sequence -> (column, max value, last value) where the next value would collide
    collisions: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(count for count, _ in self.tables.values())


def fingerprint_from_rows(results: Mapping[str, Rows]) -> Fingerprint:
    """Build a fingerprint from the rows each query of :data:`QUERIES` returned."""

    def pairs(name: str) -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in results.get(name, [])}

    tables: dict[str, tuple[int, str]] = {}
    for name, xml in results.get("tables", []):
        value = _xml_value(xml) or "-1 ?"
        count, _, checksum = value.partition(" ")
        tables[str(name)] = (int(count), checksum)
    collisions: dict[str, tuple[str, str, str]] = {}
    for seq, column, xml, last, increment in results.get("owned_sequences", []):
        top = _xml_value(xml)
        if top is None or not increment or int(increment) < 0:
            continue
        if last is None or int(top) > int(last):
            collisions[str(seq)] = (str(column), top, "unused" if last is None else str(last))
    return Fingerprint(
        tables=tables,
        sequences=pairs("sequences"),
        indexes={str(r[0]): (str(r[1]), str(r[2])) for r in results.get("indexes", [])},
        extensions=pairs("extensions"),
        views=pairs("views"),
        functions=pairs("functions"),
        constraints=pairs("constraints"),
        collisions=collisions,
    )


def run_queries(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Run :data:`QUERIES` on a psycopg connection (the settings of :data:`SETUP` stay set)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with conn.cursor() as cur:
        for name, sql in QUERIES.items():
            cur.execute(sql.encode())
            out[name] = list(cur.fetchall())
    return out


@dataclass(frozen=True)
class Comparison:
    """Source and target side by side: ``lines`` is the report, ``differences`` what failed."""

    lines: list[str]
    differences: list[str]

    @property
    def ok(self) -> bool:
        return not self.differences


def compare(source: Fingerprint, target: Fingerprint) -> Comparison:
    """Every table, sequence, index, extension, view, function and constraint of both sides."""
    lines: list[str] = []
    diffs: list[str] = []
    width = max((len(t) for t in source.tables.keys() | target.tables.keys()), default=5)
    lines.append(f"  {'table':<{width}}  {'source rows':>11}  {'target rows':>11}  checksum")
    for name in sorted(source.tables.keys() | target.tables.keys()):
        s, t = source.tables.get(name), target.tables.get(name)
        sr = "-" if s is None else str(s[0])
        tr = "-" if t is None else str(t[0])
        if s is None or t is None:
            verdict = "MISSING on the target" if t is None else "EXTRA on the target"
        elif s == t:
            verdict = "identical"
        elif s[0] != t[0]:
            verdict = "DIFFERENT row count"
        else:
            verdict = "DIFFERENT content"
        if verdict != "identical":
            diffs.append(f"table {name}: {verdict.lower()}")
        lines.append(f"  {name:<{width}}  {sr:>11}  {tr:>11}  {verdict}")

    def same(kind: str, a: Mapping[str, object], b: Mapping[str, object], *, values: bool) -> None:
        missing = sorted(a.keys() - b.keys())
        extra = sorted(b.keys() - a.keys())
        changed = sorted(k for k in a.keys() & b.keys() if values and a[k] != b[k])
        for k in missing:
            diffs.append(f"{kind} {k}: missing on the target")
        for k in extra:
            diffs.append(f"{kind} {k}: extra on the target")
        for k in changed:
            diffs.append(f"{kind} {k}: {a[k]} on the source, {b[k]} on the target")
        ok = not (missing or extra or changed)
        lines.append(
            f"  {kind}{'es' if kind.endswith('x') else 's'}: {len(a)} on the source, {len(b)} on the target"
            + (" - identical" if ok else " - DIFFERENT")
        )

    same("sequence", source.sequences, target.sequences, values=True)
    same("index", source.indexes, target.indexes, values=True)
    hnsw = sorted(k for k, (am, _) in target.indexes.items() if am == "hnsw")
    if hnsw:
        lines.append(f"    HNSW on the target: {', '.join(hnsw)}")
    same("extension", source.extensions, target.extensions, values=False)
    if target.extensions:
        lines.append(
            "    on the target: "
            + ", ".join(f"{k} {v}" for k, v in sorted(target.extensions.items()))
        )
    same("view", source.views, target.views, values=True)
    same("function", source.functions, target.functions, values=True)
    same("constraint", source.constraints, target.constraints, values=True)
    for seq, (column, top, last) in sorted(target.collisions.items()):
        diffs.append(
            f"sequence {seq}: at {last} but {column} already holds {top}; the next insert "
            "would collide"
        )
    if not target.collisions:
        lines.append("  serial/identity sequences: all past their column's largest value")
    return Comparison(lines=lines, differences=diffs)
