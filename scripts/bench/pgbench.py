"""pgbench against a running server: ``-i`` (timed, RSS after it), select-only and tpcb-like at 1 and
8 clients, and ``SELECT 1`` prepared at 8 clients with the server's CPU time per query (all its
processes and threads, user + system)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from .common import Handle, cpu_seconds, run, short_error

#: (script, clients, protocol)
RUNS = [
    ("select-only", 1, "prepared"),
    ("select-only", 8, "prepared"),
    ("select-only", 1, "simple"),
    ("select-only", 8, "simple"),
    ("tpcb-like", 1, "prepared"),
    ("tpcb-like", 8, "prepared"),
    ("select1", 8, "prepared"),
]


def available() -> bool:
    return shutil.which("pgbench") is not None


def init(h: Handle, scale: int, steps: str | None, timeout: float) -> dict[str, Any]:
    argv = ["pgbench", "-i", "-s", str(scale), "-q"] + (["-I", steps] if steps else [])
    t0 = time.monotonic()
    try:
        p = run(argv, timeout=timeout, env=h.conn.pg_env())
    except TimeoutError as exc:
        return {"ok": False, "error": str(exc)}
    res: dict[str, Any] = {
        "ok": p.returncode == 0,
        "seconds": time.monotonic() - t0,
        "scale": scale,
    }
    res["steps"] = steps or "dtgvp (client-side COPY)"
    if p.returncode != 0:
        res["error"] = short_error(p.stderr or p.stdout, 300)
    return res


def bench(
    h: Handle, script: str, clients: int, mode: str, seconds: int, work: Path
) -> dict[str, Any]:
    argv = [
        "pgbench",
        "-n",
        "-T",
        str(seconds),
        "-c",
        str(clients),
        "-j",
        str(min(clients, os.cpu_count() or 2)),
        "-M",
        mode,
    ]
    if script == "select1":
        f = work / "select1.sql"
        f.write_text("SELECT 1;\n")
        argv += ["-f", str(f)]
    else:
        argv += ["-b", script]
    cpu0 = cpu_seconds(h.pids())
    try:
        p = run(argv, timeout=seconds + 60, env=h.conn.pg_env())
    except TimeoutError as exc:
        return {"error": str(exc), "hung": True}
    cpu = cpu_seconds(h.pids()) - cpu0
    out = p.stdout + "\n" + p.stderr
    res: dict[str, Any] = {"exit": p.returncode}
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    res["tps"] = float(m.group(1)) if m else None
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    res["transactions"] = int(m.group(1)) if m else None
    m = re.search(r"number of failed transactions: (\d+)", out)
    res["failed"] = int(m.group(1)) if m else 0
    res["aborted_clients"] = len(re.findall(r"client \d+ aborted", out))
    if res["transactions"]:
        res["server_cpu_us_per_tx"] = cpu / res["transactions"] * 1e6
    if p.returncode != 0 or res["aborted_clients"]:
        errs = [
            ln for ln in p.stderr.splitlines() if "error" in ln.lower() or "fatal" in ln.lower()
        ]
        res["error"] = short_error(errs[0] if errs else (p.stderr or p.stdout), 300)
    return res
