"""The data-dir lock: exclusive across processes, inherited by Node, owner pid reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until

from hive_bridge.errors import DataDirLockedError
from hive_bridge.lock import DataDirLock, is_locked, read_lock_owner

HOLDER = """
import sys, time
from pathlib import Path
from hive_bridge.lock import DataDirLock
lock = DataDirLock.acquire(Path(sys.argv[1]), data_dir="/some/db")
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_acquire_in_same_process_fails(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    lock = DataDirLock.acquire(path, data_dir="/d/db")
    try:
        assert read_lock_owner(path) == os.getpid()
        assert is_locked(path)
        with pytest.raises(DataDirLockedError) as info:
            DataDirLock.acquire(path, data_dir="/d/db")
        assert info.value.owner_pid == os.getpid()
        assert f"in use by process {os.getpid()}" in str(info.value)
    finally:
        lock.release()
    assert not is_locked(path)
    DataDirLock.acquire(path, data_dir="/d/db").release()
    lock.release()  # idempotent


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLockedError) as info:
            DataDirLock.acquire(path, data_dir="/some/db")
        assert info.value.owner_pid == holder.pid
        assert info.value.lock_path == str(path)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    # the holder died: its lock died with it
    DataDirLock.acquire(path, data_dir="/some/db").release()


def test_lock_lives_on_in_a_child_that_inherited_the_fd(tmp_path: Path) -> None:
    """What --lock-fd relies on: a flock follows the open file description into the child."""
    path = tmp_path / "lock"
    lock = DataDirLock.acquire(path, data_dir="/d/db")
    child = subprocess.Popen(["sleep", "30"], pass_fds=(lock.fd,))
    try:
        lock.release()
        assert is_locked(path), "the child holds the lock after the parent let go"
    finally:
        child.kill()
        child.wait()
    wait_until(lambda: not is_locked(path), timeout=30, what="lock to be free")
