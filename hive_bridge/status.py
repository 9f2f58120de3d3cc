"""What ``status`` reports about a server: its state file enriched with live numbers.

Shared by ``hive-bridge status`` and :meth:`hive_bridge.Bridge.status`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from .admin import get_stats
from .leases import live_users
from .statefile import BridgeState, process_matches

__all__ = ["status_report"]


def _rss(pid: int | None, create_time: float | None) -> int | None:
    if pid is None or not process_matches(pid, create_time):
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def status_report(
    state: BridgeState, *, live: bool = True, users_dir: Path | None = None
) -> dict[str, Any]:
    """A JSON-able description: pids, address, state, uptime, restarts and the last exit cause, RSS,
    versions, live stats and what the backend is doing (``activity``), and the pids of the
    processes registered as users (``users_dir``)."""
    now = time.time()
    report: dict[str, Any] = {
        "state": state.state,
        "data_dir": state.data_dir,
        "memory": state.data_dir is None,
        "pid": state.supervisor_pid,
        "supervisor_pid": state.supervisor_pid,
        "node_pid": state.node_pid,
        "host": state.host,
        "port": state.port,
        "admin_port": state.admin_port,
        "origin": state.origin,
        "uptime_s": round(now - state.running_since, 3) if state.running_since else None,
        "supervisor_uptime_s": round(now - state.started_at, 3) if state.started_at else None,
        "restarts": state.restarts,
        "last_exit": state.last_exit,
        "last_exit_at": state.last_exit_at,
        "versions": dict(state.versions),
        "log_path": state.log_path,
        "supervisor_log_path": state.supervisor_log_path,
        "socket_dir": state.socket_dir,
        "error": state.error,
    }
    if users_dir is not None:
        report["users"] = [lease.pid for lease in live_users(users_dir, clean=False)]
    if live:
        report["rss_bytes"] = _rss(state.node_pid, state.node_create_time)
        stats = get_stats(state.admin_port) if state.admin_port else None
        report["stats"] = stats
        # what the backend is doing right now (answered by Node itself, never queued)
        report["activity"] = stats.get("activity") if isinstance(stats, dict) else None
    return report
