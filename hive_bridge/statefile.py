"""``<run_dir>/state.json``: what a running supervisor tells other processes (CLI, attachers).

Written atomically (temp file, fsync, ``os.replace``) on every state change. A reader checks that the
supervisor pid is alive *and* is the same process (psutil create time), so a file left by a killed
supervisor, or one whose pid was reused, is recognised as stale and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import psutil

__all__ = [
    "BridgeState",
    "process_create_time",
    "process_matches",
    "read_live_state",
    "read_state",
    "remove_state",
    "write_state",
]

Origin = Literal["cli", "auto", "api"]


@dataclass
class BridgeState:
    """One snapshot of a supervisor and its Node server."""

    supervisor_pid: int
    supervisor_create_time: float
    state: str
    data_dir: str | None
    host: str
    port: int | None = None
    admin_port: int | None = None
    node_pid: int | None = None
    node_create_time: float | None = None
    started_at: float | None = None  # wall clock, supervisor start
    running_since: float | None = None  # wall clock, current node became RUNNING
    restarts: int = 0
    #: why the server last exited unexpectedly (supervisord wording), and when (wall clock)
    last_exit: str | None = None
    last_exit_at: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    log_path: str | None = None
    supervisor_log_path: str | None = None
    origin: Origin = "api"
    error: str | None = None
    updated_at: float | None = None
    socket_dir: str | None = None
    format: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BridgeState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def process_create_time(pid: int) -> float | None:
    """psutil's create time of ``pid``, or ``None`` if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


def process_matches(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` is alive and is the very process that had ``create_time``."""
    if not pid or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        actual = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return False
    return abs(actual - create_time) < 0.01


def write_state(path: Path, state: BridgeState) -> None:
    """Atomically replace ``path`` with ``state``."""
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(state.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: Path) -> BridgeState | None:
    """The state file as written, live or not (``None`` if missing or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return BridgeState.from_dict(data)
    except TypeError:
        return None


def read_live_state(path: Path, *, clean: bool = True) -> BridgeState | None:
    """The state of a live supervisor, or ``None``; a stale file is removed when ``clean``."""
    state = read_state(path)
    if state is None:
        if clean and path.exists():
            # unreadable or half-written by a foreign tool: only remove it if it stays unreadable
            with contextlib.suppress(OSError):
                if read_state(path) is None:
                    path.unlink()
        return None
    if process_matches(state.supervisor_pid, state.supervisor_create_time):
        return state
    if clean:
        remove_state(path, only_if_pid=state.supervisor_pid)
    return None


def remove_state(path: Path, *, only_if_pid: int | None = None) -> None:
    """Delete the state file (when ``only_if_pid`` is given, only if that pid still owns it)."""
    if only_if_pid is not None:
        current = read_state(path)
        if current is not None and current.supervisor_pid != only_if_pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
