"""Small helpers shared by the tests: waiting on conditions, finding processes the tests started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import psutil

from hive_bridge import SupervisorOptions

T = TypeVar("T")

#: every process started by this test session inherits this variable (set in conftest)
MARKER = "HIVE_BRIDGE_TEST_RUN"
REPO = Path(__file__).resolve().parent.parent

#: quick timings for lifecycle tests (the production defaults are calmer)
FAST = SupervisorOptions(
    startsecs=1.0,
    stopwaitsecs=5.0,
    start_timeout=60.0,
    # a hang (SIGSTOP) is found in ~11 s; 5 s per /health answer (milliseconds when idle or busy)
    # leaves room for a loaded machine, so no test sees a restart it did not cause
    health_interval=0.5,
    health_timeout=5.0,
    health_failures=2,
    hang_kill_wait=1.0,
)

#: data dirs of servers that live longer than one test (session/module fixtures): the per-test
#: leak check ignores their processes
SHARED_SERVER_DIRS: list[str] = []


def wait_until(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; return it, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def marked_processes(
    exclude: Callable[[psutil.Process], bool] | None = None,
) -> list[psutil.Process]:
    """Live processes (not zombies) started by this test session, other than pytest itself."""
    marker = os.environ[MARKER]
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARKER) != marker:
                continue
            if exclude is not None and exclude(proc):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found.append(proc)
    return found


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
        except psutil.Error:
            lines.append(f"{proc.pid}: (gone)")
    return "\n".join(lines)


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def node_pids_for(data_dir: Path) -> list[int]:
    """pids of Node servers whose command line names ``data_dir``."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        is_server = any(arg.endswith("server.js") for arg in cmdline)
        if is_server and "--data-dir" in cmdline and str(data_dir) in cmdline:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    pids.append(proc.pid)
            except psutil.Error:
                pass
    return pids


def is_supervisor(proc: psutil.Process) -> bool:
    """A detached supervisor: forked from the CLI or the app (process name ``hive-supervise``) or
    spawned as ``python -m hive_bridge supervise`` (an app with other threads)."""
    return proc.name() == "hive-supervise" or "supervise" in proc.cmdline()[1:4]


def supervisor_pids(data_dir: Path) -> list[int]:
    """Live detached supervisors started by this test session for ``data_dir`` (named on their
    command line or in their environment, the way the CLI and the apps of the tests pass it)."""
    found = []
    needle = str(data_dir)
    for proc in marked_processes():
        try:
            if not is_supervisor(proc):
                continue
            mentions = any(needle in arg for arg in proc.cmdline())
            mentions = mentions or any(needle in value for value in proc.environ().values())
        except psutil.Error:
            continue
        if mentions:
            found.append(proc.pid)
    return found


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hive_bridge ARGS`` the way a user would, capturing stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "hive_bridge", *args],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
