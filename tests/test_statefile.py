"""state.json: atomic writes, stale files (dead pid, reused pid) recognised and removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hive_bridge.statefile import (
    BridgeState,
    process_create_time,
    read_live_state,
    read_state,
    write_state,
)


def state_for(pid: int, create_time: float | None) -> BridgeState:
    return BridgeState(
        supervisor_pid=pid,
        supervisor_create_time=create_time or 0.0,
        state="RUNNING",
        data_dir="/d/db",
        host="127.0.0.1",
        port=5555,
        restarts=2,
        versions={"node": "20.1.0"},
        origin="cli",
    )


def test_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = state_for(os.getpid(), process_create_time(os.getpid()))
    write_state(path, state)
    assert read_state(path) == state
    assert read_live_state(path) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_dead_pid_is_stale_and_cleaned(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = process_create_time(child.pid)
    child.wait()
    path = tmp_path / "state.json"
    write_state(path, state_for(child.pid, create_time))
    assert read_live_state(path) is None
    assert not path.exists()


def test_reused_pid_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    # our own pid is alive, but it is not the process that wrote this file
    write_state(path, state_for(os.getpid(), (process_create_time(os.getpid()) or 0) - 100))
    assert read_live_state(path, clean=False) is None
    assert path.exists()
    assert read_live_state(path) is None
    assert not path.exists()


def test_unreadable_file_is_not_live(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert read_state(path) is None
    assert read_live_state(path) is None
    assert not path.exists()
    assert read_live_state(tmp_path / "missing.json") is None


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(state_for(1, 1.0).to_json().replace('"format": 1', '"format": 1, "new": 3'))
    state = read_state(path)
    assert state is not None and state.port == 5555
