"""Start a detached supervisor and wait for its report.

The supervisor is forked from this process, which has already imported everything it needs, so
``hive-bridge start`` and ``create_engine()`` pay for one Python start, not two (~0.3-0.5 s saved).
A process with other threads is not forked (a fork copies their locks in whatever state they are
in): it spawns ``python -m hive_bridge supervise --detach`` instead. Either way the supervisor
forks once more right away, so it is nobody's child (no zombie in the app that started it, and it
outlives that app). It reports over an inherited pipe, one JSON line per event:

- ``{"event": "daemon", "pid": N}`` - it runs, detached, as pid N;
- ``{"event": "running", "pid": N, "port": P}`` - the server answers SQL;
- ``{"event": "busy", "owner_pid": M}`` - another process holds the data-dir lock (it lost a race:
  attach to the winner instead);
- ``{"event": "error", "error": {...}, "message": "..."}`` - the start failed; ``error`` rebuilds the
  typed exception (:func:`hive_bridge.errors.error_from_dict`).

End of file without a result means it died; its ``supervisor.log`` tells why.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .config import BridgeSettings
from .errors import BridgeStartError, HiveBridgeError, error_from_dict
from .leases import drop_inherited_leases
from .logs import LOGGER_NAME
from .paths import RunPaths
from .process import read_log, read_log_tail
from .statefile import Origin, process_matches
from .supervisor import SupervisorOptions

__all__ = ["DaemonSpec", "Launched", "launch_daemon"]

log = logging.getLogger(LOGGER_NAME + ".launch")

_PATH_FIELDS = frozenset({"js_dir", "run_dir", "socket_dir", "cache_dir"})


@dataclass(frozen=True)
class DaemonSpec:
    """Everything a detached supervisor needs, so it reads no environment or ``.env`` of its own."""

    data_dir: Path
    origin: Origin = "auto"
    extensions: tuple[str, ...] = ("all",)
    settings: BridgeSettings = field(default_factory=BridgeSettings)
    options: SupervisorOptions = field(default_factory=SupervisorOptions)

    def to_json(self) -> str:
        settings = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.settings).items()
        }
        return json.dumps(
            {
                "data_dir": str(self.data_dir),
                "origin": self.origin,
                "extensions": list(self.extensions),
                "settings": settings,
                "options": asdict(self.options),
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> DaemonSpec:
        data = json.loads(text)
        known = {f.name for f in fields(BridgeSettings)}
        settings: dict[str, Any] = {
            k: (Path(v) if k in _PATH_FIELDS and v is not None else v)
            for k, v in data.get("settings", {}).items()
            if k in known
        }
        option_names = {f.name for f in fields(SupervisorOptions)}
        options = {k: v for k, v in data.get("options", {}).items() if k in option_names}
        return cls(
            data_dir=Path(data["data_dir"]),
            origin=data.get("origin", "auto"),
            extensions=tuple(data.get("extensions", ("all",))),
            settings=BridgeSettings(**settings),
            options=SupervisorOptions(**options),
        )


@dataclass(frozen=True)
class Launched:
    """What the detached supervisor reported: ``running`` (it serves) or ``busy`` (lost the race)."""

    outcome: Literal["running", "busy"]
    pid: int | None


def _child_env() -> dict[str, str]:
    """Our environment, with hive_bridge importable even if this app found it through sys.path."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    current = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_parent + (os.pathsep + current if current else "")
    return env


class _Reports:
    """JSON lines from the report pipe, read under a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def next(self, deadline: float) -> dict[str, Any] | None:
        """The next event; ``None`` at end of file; :class:`TimeoutError` at the deadline."""
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            event = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            return {}
        return event if isinstance(event, dict) else {}


def launch_daemon(spec: DaemonSpec, paths: RunPaths, *, deadline: float) -> Launched:
    """Start a detached supervisor for ``spec`` and wait (until ``deadline``, a monotonic time)
    until it serves, or lost the race for the lock. Start failures are raised as the typed error
    the supervisor reported (:class:`DataDirError`, :class:`PortInUseError`, …)."""
    read_fd, write_fd = os.pipe()
    try:
        with open(paths.supervisor_log, "ab") as log_file:
            offset = log_file.seek(0, os.SEEK_END)
            if _can_fork():
                child: _Child = _Forked(_fork_daemon(spec, paths, read_fd, write_fd))
            else:
                child = _Spawned(_spawn_daemon(spec, log_file.fileno(), write_fd))
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    daemon_pid: int | None = None
    daemon_created: object = None
    try:
        reports = _Reports(read_fd)
        while True:
            try:
                event = reports.next(deadline)
            except TimeoutError:
                _give_up(daemon_pid, daemon_created)
                raise BridgeStartError(
                    data_dir=str(spec.data_dir),
                    reason="the detached supervisor did not report a running server in time",
                    log_path=str(paths.supervisor_log),
                    log_tail=read_log_tail(paths.supervisor_log, 20, offset),
                ) from None
            if event is None:
                status = _reap(child)
                raise BridgeStartError(
                    data_dir=str(spec.data_dir),
                    reason=(
                        f"the detached supervisor exited before it reported a result "
                        f"(status {status})"
                    ),
                    log_path=str(paths.supervisor_log),
                    log_tail=read_log_tail(paths.supervisor_log, 20, offset),
                )
            kind = event.get("event")
            if kind == "daemon":
                daemon_pid = int(event.get("pid") or 0) or None
                daemon_created = event.get("create_time")
                _reap(child)
            elif kind == "running":
                return Launched("running", daemon_pid)
            elif kind == "busy":
                return Launched("busy", daemon_pid)
            elif kind == "error":
                raise _error_of(event, spec, paths, offset)
    finally:
        os.close(read_fd)
        _reap(child, timeout=5.0)


def _error_of(
    event: dict[str, Any], spec: DaemonSpec, paths: RunPaths, offset: int
) -> HiveBridgeError:
    error = error_from_dict(event.get("error"))
    if error is not None:
        return error
    message = str(event.get("message") or "")
    return BridgeStartError(
        data_dir=str(spec.data_dir),
        reason=f"the detached supervisor failed: {message or 'no reason given'}",
        log_path=str(paths.supervisor_log),
        log_tail="" if message else read_log(paths.supervisor_log, offset)[-4000:],
    )


def _reap(child: _Child, timeout: float = 30.0) -> int | None:
    """Wait for the intermediate process (it exits right after forking the daemon)."""
    return child.reap(timeout)


class _Child:
    """The intermediate process (forked or spawned): it exits right after forking the daemon."""

    def reap(self, timeout: float) -> int | None:
        raise NotImplementedError


class _Spawned(_Child):
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def reap(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class _Forked(_Child):
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None

    def reap(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (an app with its own SIGCHLD handling)
                return None
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.002)
        return self.status


def _can_fork() -> bool:
    """Fork only a Linux process with no other thread: a thread's locks would be copied mid-use
    (``/proc/self/task`` counts native threads too). macOS forbids using many system frameworks
    in a forked child that does not exec, so there the supervisor is always spawned."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _spawn_daemon(spec: DaemonSpec, log_fd: int, write_fd: int) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "hive_bridge",
        "supervise",
        "--data-dir",
        str(spec.data_dir),
        "--origin",
        spec.origin,
        "--detach",
        "--notify-fd",
        str(write_fd),
        "--spec",
        spec.to_json(),
    ]
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=log_fd,
        start_new_session=True,
        close_fds=True,
        pass_fds=(write_fd,),
        env=_child_env(),
    )


def _fork_daemon(spec: DaemonSpec, paths: RunPaths, read_fd: int, write_fd: int) -> int:
    """Fork the supervisor from this (single-threaded) process; returns the child's pid.

    The child never returns into the caller's code: it becomes the daemon and leaves with
    ``os._exit`` (no atexit handlers, no finalizers of the application's objects)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    status = 1
    try:
        os.close(read_fd)
        _become_supervisor(spec, paths, write_fd)
        from .daemon import run_daemon

        status = run_daemon(spec, detach=True, notify_fd=write_fd)
    except BaseException:  # the child must end here, whatever happened
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _become_supervisor(spec: DaemonSpec, paths: RunPaths, keep_fd: int) -> None:
    """In the forked child: shed everything of the application it was forked from."""
    os.setsid()
    gc.freeze()  # the app's objects are never collected here: none of them closes an fd we reuse
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # asyncio's self-pipe is closed below
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import faulthandler

    faulthandler.disable()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(paths.supervisor_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 1 << 20)
    _KEEP.append((sys.stdin, sys.stdout, sys.stderr))  # never finalized: they may own an fd
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdio
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    drop_inherited_leases()  # the supervisor is no user of its own server
    _log_to_stderr(spec.settings.log_level)
    _set_process_name(b"hive-supervise")


#: objects of the application the forked supervisor must never finalize
_KEEP: list[object] = []


def _log_to_stderr(level: str) -> None:
    """The ``hive_bridge`` loggers write to supervisor.log only, never to the app's handlers."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        _KEEP.append(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(level)


def _set_process_name(name: bytes) -> None:
    """What ``ps -o comm``/``top`` show (Linux ``PR_SET_NAME``); best effort."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _give_up(daemon_pid: int | None, created: object) -> None:
    """Stop a supervisor that took too long (it stops its server and exits)."""
    if daemon_pid is None or not isinstance(created, float | int):
        return
    if process_matches(daemon_pid, float(created)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(daemon_pid, signal.SIGTERM)
