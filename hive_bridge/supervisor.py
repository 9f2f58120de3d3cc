"""The supervisor: supervisord's state machine around one Node server, in a monitor thread.

States: STOPPED → STARTING → RUNNING; a failed start goes to BACKOFF and is retried with exponential
backoff (``startretries`` times, then FATAL); an unexpected exit goes EXITED → BACKOFF → STARTING.
The failure count is reset once a server stayed up ``startsecs``, and - unlike supervisord - crash
loops are capped after RUNNING too: ``crash_limit`` crashes within ``crash_window`` seconds → FATAL.

A health thread pings the server (``SELECT 1`` on a fresh connection) every ``health_interval``;
after ``health_failures`` consecutive failures the server is killed and restarted - unless the admin
endpoint still answers "ok" (Node's main thread alive: a long query is running), in which case it
gets ``busy_grace`` seconds first.

Restarts reuse the port the first start got, so a DSN handed out stays valid. Stop requests (also
from signal handlers) only set a flag; the monitor thread acts on it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenacity

from . import __version__
from .admin import get_health
from .dsn import libpq_dsn
from .errors import BridgeFatalError, BridgeStartError, PortInUseError, display_path
from .locate import BridgeInstall
from .lock import DataDirLock
from .logs import LOGGER_NAME, LogTailer
from .paths import RunPaths
from .process import NodeProcess, SpawnSpec, read_log_tail
from .readiness import NON_RETRYABLE_CODES, ReadyInfo, StartCancelled, ping, wait_ready
from .statefile import BridgeState, Origin, process_create_time, remove_state, write_state

__all__ = ["ServerTarget", "State", "Supervisor", "SupervisorOptions"]

log = logging.getLogger("hive_bridge.supervisor")
NAME = "hive-bridge"


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
    """Timing knobs (seconds), named after their supervisord counterparts where there is one."""

    startsecs: float = 5.0
    startretries: int = 3
    stopwaitsecs: float = 10.0
    start_timeout: float = 60.0
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    crash_limit: int = 5
    crash_window: float = 60.0
    health_interval: float = 2.0
    health_timeout: float = 2.0
    health_failures: int = 2
    hang_kill_wait: float = 2.0
    busy_grace: float = 60.0
    #: a shared (on-demand) server looks for live users this often, and stops once it has had
    #: none for ``idle_grace`` seconds
    idle_check_interval: float = 1.0
    idle_grace: float = 2.0

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
    extensions: tuple[str, ...] = ("vector",)
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


@dataclass
class _Counters:
    failures: int = 0
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)


def _backoff(failures: int, options: SupervisorOptions) -> float:
    wait = tenacity.wait_exponential(
        multiplier=options.backoff_min, min=options.backoff_min, max=options.backoff_max
    )
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = max(1, failures)
    return float(wait(state))


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"terminated by {signal.Signals(-status).name}"
        except ValueError:
            return f"terminated by signal {-status}"
    return f"exit status {status}"


class Supervisor:
    """Runs and watches one Node server. Thread-safe; ``request_stop`` is async-signal-safe."""

    def __init__(
        self,
        install: BridgeInstall,
        target: ServerTarget,
        *,
        password: str,
        lock: DataDirLock | None,
        options: SupervisorOptions | None = None,
    ) -> None:
        self.install = install
        self.target = target
        self.options = options or SupervisorOptions()
        self.password = password
        self._lock = lock
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._state = State.STOPPED
        self._proc: NodeProcess | None = None
        self._ready: ReadyInfo | None = None
        self._port = target.port
        self._generation = 0
        self._unhealthy_generation = -1
        self._counters = _Counters()
        self._fatal_error: BridgeStartError | None = None
        self._started_wall: float | None = None
        self._running_since: float | None = None
        # plain attributes: set from signal handlers, so no locks may be taken there
        self._stop_requested = False
        self._force = False
        self._wake = threading.Event()
        self._monitor: threading.Thread | None = None
        self._health: threading.Thread | None = None
        self._tailer: LogTailer | None = None
        self._create_time = process_create_time(os.getpid()) or 0.0
        self._origin: Origin = target.origin
        _LIVE.add(self)

    # ------------------------------------------------------------------ public properties

    @property
    def state(self) -> State:
        return self._state

    @property
    def port(self) -> int | None:
        """The port, known after the first successful start (and kept across restarts)."""
        return self._port if self._ready is not None else (self._port or None)

    @property
    def admin_port(self) -> int | None:
        return self._ready.admin_port if self._ready else None

    @property
    def node_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.alive else None

    @property
    def restarts(self) -> int:
        return self._counters.restarts

    @property
    def fatal_error(self) -> BridgeStartError | None:
        return self._fatal_error

    @property
    def ready_info(self) -> ReadyInfo | None:
        return self._ready

    @property
    def origin(self) -> Origin:
        return self._origin

    def set_origin(self, origin: Origin) -> None:
        """Change who the server belongs to (an on-demand server pinned by ``hive-bridge start``)."""
        self._origin = origin
        self._write_state()

    def announce_stop(self) -> None:
        """Request a stop and write STOPPING to the state file before returning, so a process that
        reads it afterwards knows not to attach to this server."""
        self.request_stop()
        if self.active:
            self._write_state()

    @property
    def dsn(self) -> str:
        if self._ready is None:
            raise RuntimeError("the server has not started yet")
        return libpq_dsn(self.target.host, self._port, self.password)

    # ------------------------------------------------------------------------- control

    def start(self, timeout: float | None = None) -> None:
        """Start the server and block until it is RUNNING; raise the start error if it went FATAL."""
        with self._cond:
            if self._monitor is not None and self._monitor.is_alive():
                if self._state is State.RUNNING:
                    return
                raise RuntimeError(f"supervisor is already active (state {self._state})")
            if self._monitor is not None:
                raise RuntimeError("a Supervisor runs once; create a new one to start again")
            self._started_wall = time.time()
        if log.isEnabledFor(logging.DEBUG) or logging.getLogger(LOGGER_NAME + ".node").isEnabledFor(
            logging.DEBUG
        ):
            offset = _size(self.target.paths.server_log)
            self._tailer = LogTailer(self.target.paths.server_log, offset, lambda: self.node_pid)
            self._tailer.start()
        self._monitor = threading.Thread(target=self._run, name="hive-bridge-monitor", daemon=True)
        self._health = threading.Thread(
            target=self._health_loop, name="hive-bridge-health", daemon=True
        )
        self._monitor.start()
        self._health.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._state not in (State.RUNNING, State.FATAL) and self._monitor.is_alive():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._cond.wait(0.05)
            state = self._state
        if state is State.RUNNING:
            return
        error = self._fatal_error
        cancelled = self._stop_requested
        self.stop()
        if error is not None:
            raise error
        if cancelled:
            raise BridgeStartError(
                data_dir=self.target.label,
                reason="the start was cancelled by a stop request",
                log_path=str(self.target.paths.server_log),
            )
        raise BridgeStartError(
            data_dir=self.target.label,
            reason=f"it did not reach RUNNING within {timeout}s (state {state})",
            log_path=str(self.target.paths.server_log),
            log_tail=read_log_tail(self.target.paths.server_log),
        )

    def request_stop(self, force: bool = False) -> None:
        """Ask the monitor to stop the server. Safe to call from a signal handler (sets flags only)."""
        if force:
            self._force = True
        self._stop_requested = True

    def stop(self) -> None:
        """Stop the server (SIGTERM, wait ``stopwaitsecs``, SIGKILL), reap it, release the lock."""
        self.request_stop()
        self._wake.set()
        for thread in (self._monitor, self._health):
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        if self._tailer is not None:
            self._tailer.stop()
            self._tailer = None
        self._release_lock()
        remove_state(self.target.paths.state, only_if_pid=os.getpid())

    def wait(self, poll: float = 0.2, timeout: float | None = None) -> BridgeStartError | None:
        """Block until the monitor ends (stopped or FATAL), or ``timeout`` passed; returns the FATAL
        error, if any.

        Waits in short slices so signal handlers of the main thread keep running.
        """
        monitor = self._monitor
        deadline = None if timeout is None else time.monotonic() + timeout
        while monitor is not None and monitor.is_alive():
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                monitor.join(min(poll, left))
            else:
                monitor.join(poll)
        return self._fatal_error

    @property
    def active(self) -> bool:
        """Whether the monitor thread still runs (not yet STOPPED or FATAL)."""
        return self._monitor is not None and self._monitor.is_alive()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return self._snapshot().__dict__.copy()

    # ---------------------------------------------------------------------- monitor loop

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug here must not leave a server unsupervised
            log.exception("supervisor loop failed")
            self._fatal_error = BridgeStartError(
                data_dir=self.target.label, reason=f"the supervisor itself failed: {exc!r}"
            )
            self._transition(State.FATAL)
        finally:
            self._kill_child()
            if self._state is not State.FATAL:
                self._transition(State.STOPPED)
                remove_state(self.target.paths.state, only_if_pid=os.getpid())
            else:
                # gave up: let another process try (the state file keeps the error for `status`)
                self._release_lock()
            self._wake.set()

    def _loop(self) -> None:
        opts = self.options
        counters = self._counters
        ever_ran = False
        while not self._stop_requested:
            self._transition(State.STARTING)
            try:
                proc = self._start_once()
            except StartCancelled:
                return
            except BridgeStartError as err:
                counters.failures += 1
                if err.exit_code is not None:
                    log.info("exited: %s (%s; not expected)", NAME, _describe_exit(err.exit_code))
                # before the first successful start, a taken port or a data dir PGlite cannot open
                # will not change by retrying; after it, a restart may well succeed
                fatal_now = err.code in NON_RETRYABLE_CODES or (
                    not ever_ran and (isinstance(err, PortInUseError) or err.code == "open_failed")
                )
                if fatal_now:
                    self._give_up(err, "the error cannot be fixed by a retry")
                    return
                if counters.failures > opts.startretries:
                    self._give_up(
                        BridgeFatalError.from_error(
                            err,
                            reason="too many start retries too quickly",
                            attempts=counters.failures,
                        ),
                        "too many start retries too quickly",
                    )
                    return
                log.info("start failed: %s", err.reason)
                if self._backoff():
                    return
                continue
            ever_ran = True
            outcome = self._watch(proc)
            if outcome == "stop":
                return
            counters.restarts += 1
            counters.failures += 1
            now = time.monotonic()
            counters.crashes.append(now)
            while counters.crashes and now - counters.crashes[0] > opts.crash_window:
                counters.crashes.popleft()
            self._transition(State.EXITED)
            if len(counters.crashes) >= opts.crash_limit:
                self._give_up(
                    BridgeFatalError(
                        data_dir=self.target.label,
                        reason=(
                            f"it crashed {len(counters.crashes)} times within "
                            f"{opts.crash_window:.0f}s"
                        ),
                        attempts=len(counters.crashes),
                        log_path=str(proc.spec.log_path),
                        log_tail=read_log_tail(proc.spec.log_path, 40, proc.log_offset),
                        exit_code=proc.poll(),
                    ),
                    "too many crashes",
                )
                return
            if counters.failures > opts.startretries:
                self._give_up(
                    BridgeFatalError(
                        data_dir=self.target.label,
                        reason="it kept exiting right after start (too many start retries too quickly)",
                        attempts=counters.failures,
                        log_path=str(proc.spec.log_path),
                        log_tail=read_log_tail(proc.spec.log_path, 40, proc.log_offset),
                        exit_code=proc.poll(),
                    ),
                    "too many start retries too quickly",
                )
                return
            if self._backoff():
                return

    def _backoff(self) -> bool:
        """Enter BACKOFF and sleep the backoff delay; True if a stop was requested meanwhile."""
        delay = _backoff(self._counters.failures, self.options)
        self._transition(State.BACKOFF, f"retrying in {delay:.2f}s")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self._stop_requested:
                return True
            self._wake.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
        return self._stop_requested

    def _start_once(self) -> NodeProcess:
        spec = SpawnSpec(
            install=self.install,
            data_dir=self.target.data_dir,
            host=self.target.host,
            port=self._port,
            log_path=self.target.paths.server_log,
            password_file=self.target.paths.password,
            lock_fd=self._lock.fd if self._lock is not None else None,
            extensions=self.target.extensions,
            admin_port=0,
            log_level=self.target.log_level,
            socket_dir=self.target.socket_dir,
            allow_remote=self.target.allow_remote,
            cache_dir=self.target.cache_dir,
        )
        proc = NodeProcess.spawn(spec)
        with self._cond:
            self._proc = proc
            self._generation += 1
        log.info("spawned: '%s' with pid %d", NAME, proc.pid)
        self._write_state()
        try:
            ready = wait_ready(
                proc,
                dsn_for=lambda host, port: libpq_dsn(host, port, self.password),
                deadline=time.monotonic() + self.options.start_timeout,
                cancelled=lambda: self._stop_requested,
            )
        except StartCancelled:
            self._transition(State.STOPPING)
            proc.terminate(self._stop_wait(), abort=lambda: self._force)
            raise
        except BaseException:
            proc.terminate(self.options.hang_kill_wait)
            raise
        with self._cond:
            self._ready = ready
            self._port = ready.port
            self._running_since = time.time()
        self._transition(
            State.RUNNING,
            f"pid {proc.pid} serves SQL on {self.target.host}:{ready.port}",
        )
        return proc

    def _watch(self, proc: NodeProcess) -> str:
        """Wait while RUNNING; returns ``stop``, ``exited`` or ``hung``."""
        generation = self._generation
        reset = False
        while True:
            if self._stop_requested:
                return "stop"
            status = proc.poll()
            if status is not None:
                log.warning("exited: %s (%s; not expected)", NAME, _describe_exit(status))
                return "exited"
            if self._unhealthy_generation == generation:
                log.warning(
                    "unhealthy: %s pid %d accepts connections but does not answer SQL; "
                    "killing it to restart",
                    NAME,
                    proc.pid,
                )
                status = proc.terminate(self.options.hang_kill_wait)
                log.info("exited: %s (%s; killed as unhealthy)", NAME, _describe_exit(status))
                return "hung"
            if not reset and proc.uptime() >= self.options.startsecs:
                self._counters.failures = 0
                reset = True
            self._wake.wait(0.05)
            self._wake.clear()

    def _give_up(self, error: BridgeStartError, why: str) -> None:
        self._fatal_error = error
        log.error("gave up: %s entered FATAL state, %s", NAME, why)
        self._transition(State.FATAL)

    def _stop_wait(self) -> float:
        return 0.0 if self._force else self.options.stopwaitsecs

    def _kill_child(self) -> None:
        proc = self._proc
        if proc is None or proc.popen.returncode is not None:
            if proc is not None:
                proc.kill()  # reaps, closes stdin
            return
        if proc.alive:
            self._transition(State.STOPPING)
        status = proc.terminate(self._stop_wait(), abort=lambda: self._force)
        log.info("stopped: %s (%s)", NAME, _describe_exit(status))

    # ---------------------------------------------------------------------- health loop

    def _health_loop(self) -> None:
        opts = self.options
        failures = 0
        busy_since: float | None = None
        monitor = self._monitor
        while monitor is not None and monitor.is_alive() and not self._stop_requested:
            self._sleep_unless_stopping(opts.health_interval)
            with self._cond:
                state = self._state
                generation = self._generation
                ready = self._ready
            if state is not State.RUNNING or ready is None or self._stop_requested:
                failures, busy_since = 0, None
                continue
            try:
                took = ping(
                    libpq_dsn(self.target.host, self._port, self.password), opts.health_timeout
                )
            except Exception as exc:
                if self._stop_requested or self._state is not State.RUNNING:
                    continue  # the server is being stopped or restarted: not a health problem
                failures += 1
                log.log(
                    logging.WARNING if failures == opts.health_failures else logging.DEBUG,
                    "health check failed for pid %s (%d in a row, limit %d): %r",
                    self.node_pid,
                    failures,
                    opts.health_failures,
                    exc,
                )
            else:
                if failures:
                    log.info("health check ok again after %d failure(s)", failures)
                failures, busy_since = 0, None
                log.debug("health check ok: SELECT 1 in %.1f ms", took * 1000)
                continue
            if failures < opts.health_failures or generation != self._generation:
                continue
            admin = get_health(ready.admin_port, timeout=1.0) if ready.admin_port else None
            if admin == "ok":
                now = time.monotonic()
                first = busy_since is None
                busy_since = busy_since or now
                if now - busy_since < opts.busy_grace:
                    log.log(
                        logging.WARNING if first else logging.DEBUG,
                        "SQL does not answer but the admin endpoint says ok: assuming a long "
                        "query, not restarting for up to %.0fs (%.0fs used)",
                        opts.busy_grace,
                        now - busy_since,
                    )
                    continue
            self._unhealthy_generation = generation
            self._wake.set()
            failures, busy_since = 0, None

    def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    # ----------------------------------------------------------------------- bookkeeping

    def _transition(self, state: State, detail: str | None = None) -> None:
        with self._cond:
            old, self._state = self._state, state
            self._cond.notify_all()
        if state is State.RUNNING:
            log.info("success: %s entered RUNNING state, %s", NAME, detail or "")
        elif old is not state:
            log.debug(
                "%s: %s -> %s%s", NAME, old.value, state.value, f" ({detail})" if detail else ""
            )
        if state is not State.STOPPED:
            self._write_state()

    def _snapshot(self) -> BridgeState:
        proc = self._proc
        node_alive = proc is not None and proc.alive
        ready = self._ready
        versions = {
            "hive_bridge": __version__,
            "node": self.install.node_version,
            "pglite": (ready.pglite_version if ready and ready.pglite_version else None)
            or self.install.pglite_version,
        }
        if ready is not None and ready.postgres_version:
            versions["postgres"] = ready.postgres_version
        state = self._state
        if self._stop_requested and state not in (State.STOPPED, State.FATAL):
            state = State.STOPPING  # on its way out: nobody may attach any more
        return BridgeState(
            supervisor_pid=os.getpid(),
            supervisor_create_time=self._create_time,
            state=state.value,
            data_dir=None if self.target.data_dir is None else str(self.target.data_dir),
            host=self.target.host,
            port=self._port if ready is not None else None,
            admin_port=ready.admin_port if ready is not None else None,
            node_pid=proc.pid if proc is not None and node_alive else None,
            node_create_time=(
                process_create_time(proc.pid) if proc is not None and node_alive else None
            ),
            started_at=self._started_wall,
            running_since=self._running_since if self._state is State.RUNNING else None,
            restarts=self._counters.restarts,
            versions=versions,
            log_path=str(self.target.paths.server_log),
            supervisor_log_path=(
                str(self.target.paths.supervisor_log) if self.target.detached else None
            ),
            origin=self._origin,
            error=str(self._fatal_error) if self._fatal_error is not None else None,
            updated_at=time.time(),
            socket_dir=(ready.socket_dir if ready is not None else None),
        )

    def _write_state(self) -> None:
        # one writer at a time, snapshot and write together: a snapshot taken before a stop request
        # must never overwrite the STOPPING that announce_stop() wrote after it
        with self._write_lock:
            with self._cond:
                snapshot = self._snapshot()
            try:
                write_state(self.target.paths.state, snapshot)
            except OSError as exc:
                log.warning("cannot write %s: %s", self.target.paths.state, exc)

    def _forget_inherited_fds(self) -> None:
        proc = self._proc
        if proc is not None and proc.popen.stdin is not None:
            with contextlib.suppress(OSError):
                proc.popen.stdin.close()
        if self._lock is not None:
            self._lock.forget()
        self._stop_requested = True  # this copy supervises nothing: its threads did not fork

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()


#: supervisors of this process, for the fork handler below
_LIVE: weakref.WeakSet[Supervisor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (multiprocessing, gunicorn --preload) must not keep Node alive.

    It inherited the write end of Node's stdin pipe and the lock fd: as long as it held them, Node
    would not see EOF when the supervising parent dies, and the data dir would stay locked. The
    child closes its copies; the parent goes on supervising, and the child may still use the DSN.
    """
    for supervisor in list(_LIVE):
        supervisor._forget_inherited_fds()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _size(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return 0
