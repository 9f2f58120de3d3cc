"""The health watchdog: restart Node only when Node itself stops answering, never because it is busy.

Every ``health_interval`` seconds it asks the admin endpoint's ``/health``. That is answered by Node's
main thread (its event loop) while PGlite runs in a worker thread, so it answers in milliseconds however
long a statement runs, and it never queues behind clients (``SELECT 1`` over the wire would). Only
``health_failures`` unanswered checks in a row (each waiting ``health_timeout``) mean Node is hung
(SIGSTOPped, deadlocked, spinning): then the supervisor kills and restarts it.

A long statement is not the watchdog's business: it is bounded by the client's own
``statement_timeout`` and cancel, as in PostgreSQL. The watchdog only remembers what the backend is
doing (for ``status`` and DEBUG logs) and says at INFO when a statement passes ``busy_notice``.
One exception: an engine that stays *restarting* (reopening after a cancel) longer than
``start_timeout`` will never come back by itself, so that counts as hung too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .admin import get_health_report
from .readiness import ping

__all__ = ["Probe", "Watchdog", "describe_activity"]

log = logging.getLogger("hive_bridge.watchdog")


@dataclass(frozen=True)
class Probe:
    """What to check: the RUNNING server of one generation (``None`` while not RUNNING)."""

    generation: int
    pid: int
    admin_port: int | None
    dsn: str


def describe_activity(report: dict[str, Any] | None) -> str:
    """``running a statement for 12.3s (pid 10003, psql): SELECT …`` and the like, for humans."""
    if not report:
        return "unknown"
    backend = report.get("backend")
    holder = report.get("holder") if isinstance(report.get("holder"), dict) else None
    who = ""
    if holder:
        app = holder.get("application_name")
        who = f" (client {holder.get('pid')}{', ' + str(app) if app else ''})"
    sql = holder.get("last_statement") if holder else None
    what = f": {sql}" if sql else ""
    waiting = report.get("waiting") or 0
    queue = f"; {waiting} waiting" if waiting else ""
    parked = report.get("parked") or 0
    if parked:
        queue += f"; {parked} idle read transaction(s) parked"
    if backend == "running":
        took = report.get("running_ms")
        since = f" for {took / 1000:.1f}s" if isinstance(took, int | float) else ""
        job = report.get("job")
        if job:
            return f"running the {job} job{since}{queue}"
        return f"running a statement{since}{who}{what}{queue}"
    if backend == "holding":
        held = report.get("held_ms")
        since = f" for {held / 1000:.1f}s" if isinstance(held, int | float) else ""
        why = holder.get("park_refused") if holder else None
        kept = f", not parked: {why}" if why else ""
        return f"held by a client between statements{since}{who}{kept}{what}{queue}"
    if backend == "restarting":
        return f"restarting the engine (after a cancel or timeout){queue}"
    return str(backend or "unknown") + queue


class Watchdog:
    """Runs in its own thread; ``probe()`` says what to check, ``on_hung(generation, why)`` acts."""

    def __init__(
        self,
        *,
        interval: float,
        timeout: float,
        failures: int,
        restart_limit: float,
        busy_notice: float,
        probe: Callable[[], Probe | None],
        on_hung: Callable[[int, str], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self.restart_limit = restart_limit
        self.busy_notice = busy_notice
        self._probe = probe
        self._on_hung = on_hung
        self._stopping = stopping
        self._thread: threading.Thread | None = None
        #: the last /health answer (what the backend was doing), with its monotonic time
        self.last_report: dict[str, Any] | None = None
        self.last_report_at: float | None = None

    def start(self, alive: Callable[[], bool]) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(alive,), name="hive-bridge-watchdog", daemon=True
        )
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping() and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _ask(self, probe: Probe) -> dict[str, Any] | None:
        """The /health answer, or ``None`` if Node did not answer within ``timeout``."""
        if probe.admin_port is not None:
            return get_health_report(probe.admin_port, timeout=self.timeout)
        # no admin endpoint (never the case for servers we spawn): SQL is all there is
        try:
            ping(probe.dsn, self.timeout)
        except Exception:
            return None
        return {"status": "ok", "backend": "unknown"}

    def _loop(self, alive: Callable[[], bool]) -> None:
        generation = -1
        missed = 0
        restarting_since: float | None = None
        noticed: tuple[Any, ...] | None = None
        while alive() and not self._stopping():
            self._sleep(self.interval)
            probe = self._probe()
            if probe is None or self._stopping():
                missed, restarting_since = 0, None
                continue
            if probe.generation != generation:
                generation, missed, restarting_since, noticed = probe.generation, 0, None, None
            started = time.monotonic()
            report = self._ask(probe)
            if self._stopping() or self._probe() != probe:
                continue  # stopped or restarted meanwhile: not a health problem
            if report is not None:
                if missed:
                    log.info("health check: node pid %d answers again", probe.pid)
                missed = 0
                self.last_report, self.last_report_at = report, time.monotonic()
                log.debug(
                    "health check: node pid %d answered in %.1f ms; backend %s",
                    probe.pid,
                    (time.monotonic() - started) * 1000,
                    describe_activity(report),
                )
                noticed = self._notice_long(probe, report, noticed)
                if report.get("backend") == "restarting":
                    restarting_since = restarting_since or time.monotonic()
                    if time.monotonic() - restarting_since > self.restart_limit:
                        self._on_hung(
                            generation,
                            f"its database engine has been restarting for more than "
                            f"{self.restart_limit:.0f}s",
                        )
                        restarting_since = None
                else:
                    restarting_since = None
                continue
            missed += 1
            log.log(
                logging.WARNING if missed == self.failures else logging.INFO,
                "health check: node pid %d did not answer its admin endpoint within %.1fs "
                "(%d in a row, limit %d)",
                probe.pid,
                self.timeout,
                missed,
                self.failures,
            )
            if missed >= self.failures:
                self._on_hung(
                    generation,
                    f"Node did not answer {missed} health checks in a row "
                    f"({self.timeout:.1f}s timeout each): its event loop is stuck",
                )
                missed = 0

    def _notice_long(
        self, probe: Probe, report: dict[str, Any], noticed: tuple[Any, ...] | None
    ) -> tuple[Any, ...] | None:
        """Say once per statement at INFO that it runs long (it is not restarted for that)."""
        took = report.get("running_ms")
        if report.get("backend") != "running" or not isinstance(took, int | float):
            return noticed
        holder = report.get("holder") if isinstance(report.get("holder"), dict) else {}
        key = (probe.generation, holder.get("pid") if holder else None, report.get("job"))
        if took / 1000 < self.busy_notice or key == noticed:
            return noticed
        log.info(
            "node pid %d is busy, not hung: %s (a long statement is never restarted; it is "
            "bounded by the client's statement_timeout or a cancel)",
            probe.pid,
            describe_activity(report),
        )
        return key
