"""What the supervisor runs and how it restarts it: states, options, and the restart policy.

A server that reached RUNNING once is never given up on: after an unexpected exit it is restarted at
once (the first ``immediate_restarts`` times in a row), with exponential backoff (``backoff_min`` …
``backoff_max``) only while it keeps dying within ``startsecs`` of its start, like Kubernetes'
CrashLoopBackOff. FATAL is for a server that cannot get to RUNNING: ``startretries`` failed starts
in a row before its first RUNNING, or at once for an error no retry can fix.
"""

from __future__ import annotations

import enum
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import BridgeSettings
from .errors import BridgeStartError, PortInUseError, display_path
from .paths import RunPaths
from .readiness import NON_RETRYABLE_CODES
from .statefile import Origin

__all__ = [
    "Decision",
    "RestartPolicy",
    "ServerTarget",
    "State",
    "SupervisorOptions",
    "backoff_delay",
    "describe_exit",
]


class State(enum.StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


@dataclass(frozen=True)
class SupervisorOptions:
    """Timing knobs (seconds), named after their supervisord counterparts where there is one.

    The watchdog and autovacuum knobs come from ``HIVE_BRIDGE_*`` (:meth:`from_settings`).
    """

    startsecs: float = 5.0
    startretries: int = 3
    stopwaitsecs: float = 10.0
    start_timeout: float = 60.0
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    #: restarts right after an unexpected exit before backoff starts (while it keeps dying early)
    immediate_restarts: int = 2
    #: the watchdog: ask /health every ``health_interval``; ``health_failures`` unanswered in a row
    #: (``health_timeout`` each) mean Node is hung. A busy backend always answers.
    health_interval: float = 2.0
    health_timeout: float = 5.0
    health_failures: int = 3
    hang_kill_wait: float = 2.0
    #: a statement running this long is mentioned at INFO (never restarted for it)
    busy_notice: float = 60.0
    #: autovacuum between client turns: look every ``vacuum_interval`` (0 = off), vacuum tables with
    #: n_dead_tup > vacuum_threshold + vacuum_scale_factor * reltuples (PostgreSQL's formula)
    vacuum_interval: float = 10.0
    vacuum_threshold: int = 50
    vacuum_scale_factor: float = 0.2
    #: a shared (on-demand) server looks for live users this often, and stops once it has had
    #: none for ``idle_grace`` seconds
    idle_check_interval: float = 1.0
    idle_grace: float = 2.0

    @classmethod
    def from_settings(cls, settings: BridgeSettings) -> SupervisorOptions:
        """The defaults, with the ``HIVE_BRIDGE_*`` settings that are set."""
        names = (
            "health_interval",
            "health_timeout",
            "health_failures",
            "vacuum_interval",
            "vacuum_threshold",
            "vacuum_scale_factor",
        )
        given = {n: getattr(settings, n) for n in names if getattr(settings, n, None) is not None}
        return cls(**given)

    @property
    def start_budget(self) -> float:
        """The longest a start can take, all retries and backoffs included (plus a margin)."""
        return (
            self.start_timeout * (self.startretries + 1) + self.backoff_max * self.startretries + 30
        )


@dataclass(frozen=True)
class ServerTarget:
    """What to run: the data dir (``None`` = in-memory), its run paths, address and extensions."""

    data_dir: Path | None
    paths: RunPaths
    host: str = "127.0.0.1"
    port: int = 0
    extensions: tuple[str, ...] = ("all",)
    log_level: str = "INFO"
    origin: Origin = "api"
    socket_dir: Path | None = None
    allow_remote: bool = False
    cache_dir: Path | None = None
    #: supervised by a detached ``hive-bridge supervise`` process (its output: supervisor.log)
    detached: bool = False

    @property
    def label(self) -> str:
        return display_path(self.data_dir)


def backoff_delay(failures: int, options: SupervisorOptions) -> float:
    """Exponential backoff: ``backoff_min`` after the first failure, doubling, at most ``backoff_max``."""
    exponent = min(max(1, failures) - 1, 64)  # 2**64 s is past any maximum; no float overflow
    return float(
        min(options.backoff_max, max(options.backoff_min, options.backoff_min * 2**exponent))
    )


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"terminated by {signal.Signals(-status).name}"
        except ValueError:
            return f"terminated by signal {-status}"
    return f"exit status {status}"


#: what to do after a failed start: ``fatal`` (give up), ``retry`` after ``delay`` seconds, or
#: ``new_port`` (the recorded port is taken: try again at once on a port the OS picks)
Decision = tuple[Literal["fatal", "retry", "new_port"], float]


class RestartPolicy:
    """Counts failures and restarts and decides what happens next. Not thread-safe: the monitor
    thread owns it (others only read ``restarts`` and ``last_exit``)."""

    def __init__(self, options: SupervisorOptions) -> None:
        self.options = options
        self.ever_ran = False
        #: failed starts in a row before the server first got to RUNNING
        self.failures = 0
        #: unexpected exits and failed restarts in a row, each soon after its start
        self.quick_deaths = 0
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_exit_at: float | None = None

    def record_exit(self, cause: str) -> None:
        self.last_exit, self.last_exit_at = cause, time.time()

    def running(self) -> None:
        self.ever_ran = True

    def stayed_up(self) -> None:
        """The server has been up ``startsecs``: a later start failure starts counting afresh."""
        self.failures = 0

    def restart_delay(self) -> float:
        """0 for the first ``immediate_restarts`` early deaths in a row, then exponential backoff."""
        extra = self.quick_deaths - self.options.immediate_restarts
        return 0.0 if extra <= 0 else backoff_delay(extra, self.options)

    def exited(self, ran: float, cause: str) -> float:
        """A RUNNING server exited unexpectedly after ``ran`` seconds: the delay before restarting."""
        self.restarts += 1
        self.record_exit(cause)
        self.quick_deaths = self.quick_deaths + 1 if ran < self.options.startsecs else 0
        return self.restart_delay()

    def start_failed(self, err: BridgeStartError, *, port_recorded: bool) -> Decision:
        if not self.ever_ran and isinstance(err, PortInUseError) and port_recorded:
            return ("new_port", 0.0)
        if err.code in NON_RETRYABLE_CODES:
            return ("fatal", 0.0)
        if self.ever_ran:
            # it ran before: never give up (a retry may well succeed, e.g. once a full disk has
            # room again); back off while it keeps failing
            self.quick_deaths += 1
            cause = describe_exit(err.exit_code) if err.exit_code is not None else "not ready"
            self.record_exit(f"restart failed ({cause}): {err.reason}")
            return ("retry", self.restart_delay())
        self.failures += 1
        # before the first successful start, a taken port or a data dir PGlite cannot open will
        # not change by retrying
        if isinstance(err, PortInUseError) or err.code == "open_failed":
            return ("fatal", 0.0)
        if self.failures > self.options.startretries:
            return ("fatal", 0.0)
        return ("retry", backoff_delay(self.failures, self.options))
