"""The workload on one server, in order: RSS at start, ``pgbench -i -s 10`` (RSS after it),
SELECT 1 latency (psycopg over TCP and the Unix socket, asyncpg), vector COPY (text, binary), HNSW
build, the concurrent SQLAlchemy sessions, pgbench runs, RSS at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import pgbench
from .common import Handle, client, log, memory_of, short_error


class Server(Protocol):
    name: str
    vector: bool
    copy: bool
    pgbench_init_steps: str | None

    def start(self, data_dir: Path, deadline: float) -> Handle: ...


@dataclass
class Config:
    quick: bool
    runs: int
    lat_n: int
    init_scale: int
    vec_text_rows: int
    vec_bin_rows: int
    hnsw_rows: int
    sessions: int
    session_requests: int
    pgbench_s: int


def _settle(seconds: float = 2.0) -> None:
    time.sleep(seconds)  # let V8 collect and the allocator give back what it will


def run_workload(t: Server, data_dir: Path, cfg: Config, work: Path) -> dict[str, Any]:
    r: dict[str, Any] = {"errors": [], "client": {}}

    def step(key: str, name: str, timeout: float, conn: Any = None, **args: Any) -> None:
        try:
            res = client(name, conn or h.conn, timeout, **args)
            r["client"][key] = res
            log(t.name, f"{key}: {_show(res)}")
        except Exception as exc:
            r["client"][key] = {"error": short_error(exc, 300)}
            r["errors"].append(f"{key}: {short_error(exc, 300)}")
            log(t.name, f"{key} FAILED: {short_error(exc, 300)}")

    h = t.start(data_dir, time.monotonic() + 180)
    try:
        _settle()
        r["mem_start"] = memory_of(h.pids())
        if pgbench.available():
            init_timeout = 600 if not cfg.quick else 300
            r["pgbench_init"] = pgbench.init(h, cfg.init_scale, t.pgbench_init_steps, init_timeout)
            log(t.name, f"pgbench -i -s {cfg.init_scale}: {r['pgbench_init']}")
            _settle(5.0)  # hive-bridge gives buffers back after 2 s idle
            r["mem_after_init"] = memory_of(h.pids())
            log(t.name, f"memory after pgbench -i: {r['mem_after_init']}")
        lat_timeout = 60 + cfg.lat_n * 0.01
        step("select1_psycopg", "latency_psycopg", lat_timeout, n=cfg.lat_n, warmup=cfg.lat_n // 10)
        if "unix" in h.info:
            step(
                "select1_psycopg_unix",
                "latency_psycopg",
                lat_timeout,
                conn=h.info["unix"],
                n=cfg.lat_n,
                warmup=cfg.lat_n // 10,
            )
        step("select1_asyncpg", "latency_asyncpg", lat_timeout, n=cfg.lat_n, warmup=cfg.lat_n // 10)
        if t.vector and t.copy:
            step("vector_copy_text", "vector_copy", 600, rows=cfg.vec_text_rows, binary=False)
            step("vector_copy_binary", "vector_copy", 600, rows=cfg.vec_bin_rows, binary=True)
            step("hnsw_build", "hnsw_build", 900, rows=cfg.hnsw_rows)
            if t.name in ("postgres", "embedded"):  # PGlite has no parallel workers anyway
                step("hnsw_build_serial", "hnsw_build", 900, rows=cfg.hnsw_rows, parallel=False)
        floor = cfg.session_requests * 0.2
        step(
            "sessions",
            "sessions",
            120 + floor * cfg.sessions * 3,
            clients=cfg.sessions,
            requests=cfg.session_requests,
        )
        if pgbench.available() and (r.get("pgbench_init") or {}).get("ok"):
            runs: dict[str, Any] = {}
            for script, clients, mode in pgbench.RUNS:
                key = f"{script}/c{clients}/{mode}"
                res = pgbench.bench(h, script, clients, mode, cfg.pgbench_s, work)
                runs[key] = res
                cpu = res.get("server_cpu_us_per_tx")
                log(
                    t.name,
                    f"pgbench {key}: {res.get('tps') or 0:,.0f} tps"
                    + (f", server CPU {cpu:.0f} µs/tx" if cpu else "")
                    + (f" ({res['error']})" if res.get("error") else ""),
                )
            r["pgbench"] = runs
        _settle(5.0)
        r["mem_end"] = memory_of(h.pids())
    finally:
        try:
            h.stop()
        except Exception as exc:
            r["errors"].append(f"stop: {short_error(exc)}")
    return r


def _show(res: dict[str, Any]) -> str:
    if "p50_us" in res:
        return f"p50 {res['p50_us']:.0f} µs, p99 {res['p99_us']:.0f} µs"
    if "rows_per_s" in res:
        return f"{res['rows_per_s']:,.0f} rows/s ({res['rows']} rows, {res['seconds']:.2f} s)"
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items())
