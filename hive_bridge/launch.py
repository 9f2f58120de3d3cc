"""Start a detached supervisor (``hive-bridge supervise --detach``) and wait for its report.

The supervisor process forks once more right away, so it is nobody's child (no zombie in the app
that started it, and it outlives that app). It reports over an inherited pipe, one JSON line per
event:

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
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .config import BridgeSettings
from .errors import BridgeStartError, HiveBridgeError, error_from_dict
from .paths import RunPaths
from .process import read_log, read_log_tail
from .statefile import Origin, process_matches
from .supervisor import SupervisorOptions

__all__ = ["DaemonSpec", "Launched", "launch_daemon"]

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
    try:
        with open(paths.supervisor_log, "ab") as log_file:
            offset = log_file.seek(0, os.SEEK_END)
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                close_fds=True,
                pass_fds=(write_fd,),
                env=_child_env(),
            )
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


def _reap(child: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """Wait for the intermediate process (it exits right after forking the daemon)."""
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def _give_up(daemon_pid: int | None, created: object) -> None:
    """Stop a supervisor that took too long (it stops its server and exits)."""
    if daemon_pid is None or not isinstance(created, float | int):
        return
    if process_matches(daemon_pid, float(created)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(daemon_pid, signal.SIGTERM)
