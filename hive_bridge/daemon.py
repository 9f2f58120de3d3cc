"""The detached supervisor: what ``hive-bridge supervise`` runs, one per data dir.

Started by :func:`hive_bridge.launch.launch_daemon` (for ``hive-bridge start`` and for applications
that auto-start their database), it forks once more so it is nobody's child, takes the data-dir lock,
supervises the Node server in this process and reports the outcome over the inherited pipe.

Two kinds, by ``origin``:

- ``cli`` (``hive-bridge start``): runs until ``hive-bridge stop`` (SIGTERM), whoever uses it.
- ``auto`` (on demand, for applications): runs while any process holds a live user lease
  (:mod:`hive_bridge.leases`); once none is left for ``idle_grace`` seconds it says STOPPING (under
  ``users.lock``) and stops. SIGUSR1 pins it: it becomes ``cli`` (``hive-bridge start`` on a server
  an application started).

SIGTERM, SIGINT, SIGHUP stop it (a second one kills Node at once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

from .bridge import Bridge
from .errors import BridgeStartError, DataDirLockedError, HiveBridgeError, error_to_dict
from .launch import DaemonSpec
from .leases import live_users, users_mutex
from .statefile import process_create_time
from .supervisor import Supervisor

__all__ = ["run_daemon"]

log = logging.getLogger("hive_bridge.daemon")

#: how often the main loop wakes up (pin requests, the end of the supervisor)
_TICK = 0.2


class _Reporter:
    """Writes the JSON report lines to the starter's pipe; a starter that went away is ignored."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, event: dict[str, Any]) -> None:
        if self.fd is None:
            return
        data = (json.dumps(event) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:  # the starter died: nobody to tell
            self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _detach() -> None:
    """Fork; the parent exits at once, so this process is reparented and never a zombie of the
    application that started it. Called before any thread exists."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() != 0:
        os._exit(0)


def run_daemon(spec: DaemonSpec, *, detach: bool, notify_fd: int | None) -> int:
    """Supervise the server of ``spec`` until stopped; returns the exit status."""
    if detach:
        _detach()
    reporter = _Reporter(notify_fd)
    me = os.getpid()
    reporter.send({"event": "daemon", "pid": me, "create_time": process_create_time(me)})
    try:
        return _serve(spec, reporter)
    except HiveBridgeError as exc:
        reporter.send({"event": "error", "error": error_to_dict(exc), "message": str(exc)})
        print(
            json.dumps({"event": "error", "type": type(exc).__name__, "message": str(exc)}),
            file=sys.stderr,
            flush=True,
        )
        return exc.exit_status
    finally:
        reporter.close()


def _serve(spec: DaemonSpec, reporter: _Reporter) -> int:
    bridge = Bridge(
        spec.data_dir,
        extensions=spec.extensions,
        options=spec.options,
        origin=spec.origin,
        attach=False,
        detached=True,
        settings=spec.settings,
    )
    signals: list[int] = []
    pin_requested: list[bool] = []

    def on_stop_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        bridge.request_stop(force=len(signals) > 1)  # only sets flags; the monitor thread acts

    def on_pin(signum: int, frame: FrameType | None) -> None:
        pin_requested.append(True)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_stop_signal)
    signal.signal(signal.SIGUSR1, on_pin)

    try:
        bridge.start()
    except DataDirLockedError as exc:
        log.info(
            "data dir %s is already served by process %s: leaving it to that one",
            spec.data_dir,
            exc.owner_pid,
        )
        reporter.send({"event": "busy", "owner_pid": exc.owner_pid})
        return 0
    except BridgeStartError:
        if not signals:
            raise
        name = signal.Signals(signals[0]).name
        log.info("%s received before the server was ready; stopped", name)
        raise
    supervisor = bridge.supervisor
    assert supervisor is not None
    log.info(
        "supervising %s for %s (pid %d, port %s)",
        spec.data_dir,
        "applications, until the last one exits"
        if spec.origin == "auto"
        else "hive-bridge start, until hive-bridge stop",
        os.getpid(),
        bridge.port,
    )
    reporter.send({"event": "running", "pid": os.getpid(), "port": bridge.port})
    reporter.close()
    try:
        _watch(bridge, supervisor, spec, pin_requested)
        bridge.wait()  # raises the FATAL error, if it gave up
    finally:
        bridge.stop()
    return 0


def _watch(bridge: Bridge, supervisor: Supervisor, spec: DaemonSpec, pins: list[bool]) -> None:
    """Until the supervisor ends: apply pin requests; stop an on-demand server without users."""
    assert bridge.paths is not None
    paths = bridge.paths
    options = spec.options
    idle_since: float | None = None
    next_check = time.monotonic()
    while supervisor.active:
        supervisor.wait(timeout=_TICK)
        if pins and supervisor.origin != "cli":
            pins.clear()
            supervisor.set_origin("cli")
            log.info("pinned by hive-bridge start: now runs until hive-bridge stop")
        now = time.monotonic()
        if supervisor.origin != "auto" or not supervisor.active or now < next_check:
            continue
        next_check = now + options.idle_check_interval
        users = live_users(paths.users_dir)
        if users:
            if idle_since is not None:
                log.info("%d user(s) again: keeps running", len(users))
            idle_since = None
            continue
        if idle_since is None:
            idle_since = now
            log.info("no users left; stopping in %.1fs unless one comes", options.idle_grace)
            continue
        if now - idle_since < options.idle_grace:
            continue
        with users_mutex(paths.users_lock):
            if live_users(paths.users_dir):
                idle_since = None
                continue
            log.info("no users for %.1fs: stopping the server", now - idle_since)
            supervisor.announce_stop()
