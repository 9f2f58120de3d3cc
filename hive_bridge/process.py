"""The Node child process: spawn it, stop it, read its log.

Node is spawned directly (never through npx) in its own session, with a stdin pipe the parent keeps
open (Node exits at EOF, so it dies with us), stdout and stderr appended to ``server.log`` (never an
undrained pipe) and the data-dir lock fd inherited. Stopping signals the whole process group:
SIGTERM, wait, SIGKILL, and the child is always reaped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .locate import BridgeInstall
from .logs import rotate_log
from .node import NODE_FLAGS

__all__ = ["NodeProcess", "SpawnSpec", "build_argv", "read_log", "read_log_tail"]

log = logging.getLogger("hive_bridge.process")

NODE_LOG_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


@dataclass(frozen=True)
class SpawnSpec:
    """Everything one Node start needs."""

    install: BridgeInstall
    data_dir: Path | None  # None: in-memory
    host: str
    port: int
    log_path: Path
    password_file: Path | None
    lock_fd: int | None
    extensions: tuple[str, ...] = ("all",)
    admin_port: int = 0
    log_level: str = "INFO"
    socket_dir: Path | None = None
    allow_remote: bool = False
    cache_dir: Path | None = None
    #: autovacuum (seconds between looks, 0 = off; PostgreSQL's threshold and scale factor)
    vacuum_interval: float = 10.0
    vacuum_threshold: int = 50
    vacuum_scale_factor: float = 0.2


def build_argv(spec: SpawnSpec) -> list[str]:
    """The exact argv of the Node server (see bridge-js/README.md)."""
    argv = [str(spec.install.node), *NODE_FLAGS, str(spec.install.server_js)]
    argv += ["--memory"] if spec.data_dir is None else ["--data-dir", str(spec.data_dir)]
    argv += ["--host", spec.host, "--port", str(spec.port)]
    argv += ["--extensions", ",".join(spec.extensions)]
    if spec.lock_fd is not None:
        argv += ["--lock-fd", str(spec.lock_fd)]
    if spec.password_file is not None:
        argv += ["--password-file", str(spec.password_file)]
    argv += ["--admin-port", str(spec.admin_port)]
    argv += ["--log-level", NODE_LOG_LEVELS.get(spec.log_level.upper(), "info")]
    if spec.socket_dir is not None:
        argv += ["--socket-dir", str(spec.socket_dir)]
    if spec.allow_remote:
        argv += ["--allow-remote"]
    if spec.cache_dir is not None:
        argv += ["--cache-dir", str(spec.cache_dir)]
    argv += ["--vacuum-interval-ms", str(round(spec.vacuum_interval * 1000))]
    argv += ["--vacuum-threshold", str(spec.vacuum_threshold)]
    argv += ["--vacuum-scale-factor", repr(float(spec.vacuum_scale_factor))]
    return argv


class NodeProcess:
    """One spawned Node server. ``log_offset`` is where this spawn's output starts in the log."""

    def __init__(self, popen: subprocess.Popen[bytes], spec: SpawnSpec, log_offset: int) -> None:
        self.popen = popen
        self.spec = spec
        self.log_offset = log_offset
        self.started = time.monotonic()
        self.started_wall = time.time()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @classmethod
    def spawn(cls, spec: SpawnSpec) -> NodeProcess:
        argv = build_argv(spec)
        rotate_log(spec.log_path)
        with open(spec.log_path, "ab") as out:
            offset = out.seek(0, os.SEEK_END)
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=out,
                cwd=str(spec.install.js_dir),
                start_new_session=True,
                pass_fds=() if spec.lock_fd is None else (spec.lock_fd,),
                close_fds=True,
            )
        log.debug("spawn argv: %s", subprocess.list2cmdline(argv))
        return cls(popen, spec, offset)

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (its own session), ignoring a gone group."""
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def terminate(self, wait: float = 10.0, *, abort: Callable[[], bool] | None = None) -> int:
        """SIGTERM the group, wait up to ``wait`` s, then SIGKILL the group; reap; return the status.

        ``abort()`` turning true during the wait (a second Ctrl-C) skips to SIGKILL at once.
        """
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            # a SIGSTOPped process only acts on SIGTERM once continued
            self.signal_group(signal.SIGCONT)
            deadline = time.monotonic() + wait
            while self.popen.poll() is None and time.monotonic() < deadline:
                if abort is not None and abort():
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            if self.popen.poll() is None:
                log.debug(
                    "pid %d still alive after SIGTERM (%.1fs), sending SIGKILL", self.pid, wait
                )
        self.kill()
        return self.popen.returncode

    def kill(self) -> int:
        """SIGKILL the whole group and reap (a no-op on an already reaped child)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._close_stdin()
        return self.popen.returncode

    def _close_stdin(self) -> None:
        stdin: IO[bytes] | None = self.popen.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()

    def read_output(self) -> str:
        """Everything this spawn wrote to the log so far."""
        return read_log(self.spec.log_path, self.log_offset)


def read_log(path: Path, offset: int = 0, limit: int = 4 * 1024 * 1024) -> str:
    """The log from ``offset`` (at most the last ``limit`` bytes of it)."""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            if offset > end:  # rotated (truncated) since the offset was taken
                offset = 0
            fh.seek(max(offset, end - limit))
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def read_log_tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    """The last ``lines`` lines of the log (from ``offset``), for error messages."""
    text = read_log(path, offset, limit=256 * 1024)
    return "\n".join(deque(text.splitlines(), maxlen=lines))
