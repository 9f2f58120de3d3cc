"""The supervisor: supervisord's state machine around one Node server, in a monitor thread.

States: STOPPED → STARTING → RUNNING; a failed start goes to BACKOFF and is retried with exponential
backoff (``startretries`` times, then FATAL); an unexpected exit goes EXITED → BACKOFF → STARTING.

The restart policy is :mod:`hive_bridge.policy`'s: a server that reached RUNNING once is never
given up on; FATAL is only for a server that cannot get to RUNNING.

Liveness is the watchdog's (:mod:`hive_bridge.watchdog`): Node is restarted only when its admin
endpoint stops answering, never because the backend is busy with a statement.

The first start picks the data dir's port and records it in the run dir; every later start reuses it
(:mod:`hive_bridge.address`), so a DSN handed out stays valid. Stop requests (also from signal
handlers) only set a flag; the monitor thread acts on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from . import __version__
from .address import StablePort
from .dsn import libpq_dsn
from .errors import BridgeFatalError, BridgeStartError, PortInUseError
from .locate import BridgeInstall
from .lock import DataDirLock
from .logs import LOGGER_NAME, LogTailer, rotate_log
from .policy import RestartPolicy, ServerTarget, State, SupervisorOptions, describe_exit
from .process import NodeProcess, SpawnSpec, read_log_tail
from .readiness import NON_RETRYABLE_CODES, ReadyInfo, StartCancelled, wait_ready
from .statefile import BridgeState, Origin, process_create_time, remove_state, write_state
from .watchdog import Probe, Watchdog

__all__ = ["ServerTarget", "State", "Supervisor", "SupervisorOptions"]

log = logging.getLogger("hive_bridge.supervisor")
NAME = "hive-bridge"
#: how often a RUNNING server's logs are checked for rotation (seconds)
LOG_CHECK_INTERVAL = 10.0


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
        #: the port to listen on: the configured one, else the one recorded for this data dir
        self._address = StablePort(
            target.port,
            None if target.data_dir is None else target.paths.port_file,
            target.host,
        )
        self._generation = 0
        self._hung: tuple[int, str] | None = None
        self._policy = RestartPolicy(self.options)
        self._fatal_error: BridgeStartError | None = None
        self._started_wall: float | None = None
        self._running_since: float | None = None
        # plain attributes: set from signal handlers, so no locks may be taken there
        self._stop_requested = False
        self._force = False
        self._wake = threading.Event()
        self._monitor: threading.Thread | None = None
        self._watchdog = Watchdog(
            interval=self.options.health_interval,
            timeout=self.options.health_timeout,
            failures=self.options.health_failures,
            restart_limit=self.options.start_timeout,
            busy_notice=self.options.busy_notice,
            probe=self._probe,
            on_hung=self._on_hung,
            stopping=lambda: self._stop_requested,
        )
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
        return self._address.port if self._ready is not None else (self._address.port or None)

    @property
    def admin_port(self) -> int | None:
        return self._ready.admin_port if self._ready else None

    @property
    def node_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.alive else None

    @property
    def restarts(self) -> int:
        return self._policy.restarts

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
        return libpq_dsn(self.target.host, self._address.port, self.password)

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
        self._monitor.start()
        monitor = self._monitor
        self._watchdog.start(alive=monitor.is_alive)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._state not in (State.RUNNING, State.FATAL) and self._monitor.is_alive():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._cond.wait(0.05)
            state = self._state
        if state is State.RUNNING:
            with (
                self._write_lock
            ):  # a transition is seen before its state file is written: wait for it
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
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join()
        self._watchdog.join()
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
        policy = self._policy
        while not self._stop_requested:
            self._transition(State.STARTING)
            try:
                proc = self._start_once()
            except StartCancelled:
                return
            except BridgeStartError as err:
                action, delay = policy.start_failed(err, port_recorded=self._address.recorded)
                if action == "new_port":
                    self._port_taken(err)
                    continue
                if err.exit_code is not None:
                    log.info("exited: %s (%s; not expected)", NAME, describe_exit(err.exit_code))
                if action == "fatal":
                    self._give_up(*self._fatal(err, policy.failures))
                    return
                log.log(
                    logging.WARNING if policy.ever_ran else logging.INFO,
                    "start failed: %s; retrying in %.2fs",
                    err.reason,
                    delay,
                )
                if self._backoff(delay):
                    return
                continue
            policy.running()
            cause = self._watch(proc)
            if cause is None:
                return
            ran = proc.uptime()
            delay = policy.exited(ran, cause)
            self._transition(State.EXITED)
            log.warning(
                "exited: %s (%s); restart %d %s (it ran %.1fs)",
                NAME,
                cause,
                policy.restarts,
                "now" if delay == 0 else f"in {delay:.1f}s",
                ran,
            )
            if delay and self._backoff(delay):
                return

    def _fatal(self, err: BridgeStartError, attempts: int) -> tuple[BridgeStartError, str]:
        """The error to raise for a start that gave up, and why it gave up."""
        if err.code in NON_RETRYABLE_CODES or err.code == "open_failed":
            return err, "the error cannot be fixed by a retry"
        if isinstance(err, PortInUseError):
            return err, "the error cannot be fixed by a retry"
        why = "too many start retries too quickly"
        return BridgeFatalError.from_error(err, reason=why, attempts=attempts), why

    def _port_taken(self, err: BridgeStartError) -> None:
        """The recorded port is taken by another program: pick a new one (documented fallback)."""
        owner = getattr(err, "owner_pid", None)
        by = f" by process {owner} ({getattr(err, 'owner_name', None)})" if owner else ""
        log.warning(
            "port %s:%d, recorded for data dir %s, is taken%s; listening on a new port instead "
            "(DSNs saved with the old port must be updated: hive-bridge url)",
            self.target.host,
            self._address.taken(),
            self.target.label,
            by,
        )

    def _backoff(self, delay: float) -> bool:
        """Enter BACKOFF and sleep ``delay``; True if a stop was requested meanwhile."""
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
            port=self._address.for_spawn(),
            log_path=self.target.paths.server_log,
            password_file=self.target.paths.password,
            lock_fd=self._lock.fd if self._lock is not None else None,
            extensions=self.target.extensions,
            admin_port=0,
            log_level=self.target.log_level,
            socket_dir=self.target.socket_dir,
            allow_remote=self.target.allow_remote,
            cache_dir=self.target.cache_dir,
            vacuum_interval=self.options.vacuum_interval,
            vacuum_threshold=self.options.vacuum_threshold,
            vacuum_scale_factor=self.options.vacuum_scale_factor,
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
            self._address.served(ready.port)
            self._running_since = time.time()
        self._transition(
            State.RUNNING,
            f"pid {proc.pid} serves SQL on {self.target.host}:{ready.port}",
        )
        return proc

    def _watch(self, proc: NodeProcess) -> str | None:
        """Wait while RUNNING; returns ``None`` for a stop, else the cause of the unexpected exit
        (supervisord wording: ``terminated by SIGKILL; not expected``)."""
        generation = self._generation
        reset = False
        next_rotation = 0.0
        while True:
            if self._stop_requested:
                return None
            status = proc.poll()
            if status is not None:
                return f"{describe_exit(status)}; not expected"
            hung = self._hung
            if hung is not None and hung[0] == generation:
                log.warning(
                    "unhealthy: %s pid %d: %s; killing it to restart", NAME, proc.pid, hung[1]
                )
                status = proc.terminate(self.options.hang_kill_wait)
                return f"{describe_exit(status)}; killed as hung: {hung[1]}"
            if not reset and proc.uptime() >= self.options.startsecs:
                self._policy.stayed_up()
                reset = True
            now = time.monotonic()
            if now >= next_rotation:
                next_rotation = now + LOG_CHECK_INTERVAL
                self._rotate_logs()
            self._wake.wait(0.05)
            self._wake.clear()

    def _rotate_logs(self) -> None:
        if rotate_log(self.target.paths.server_log):
            log.info("rotated %s", self.target.paths.server_log)
        if self.target.detached and rotate_log(self.target.paths.supervisor_log):
            log.info("rotated %s", self.target.paths.supervisor_log)

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
        log.info("stopped: %s (%s)", NAME, describe_exit(status))

    # ------------------------------------------------------------------------- watchdog

    def _probe(self) -> Probe | None:
        """What the watchdog checks: the RUNNING server of the current generation."""
        with self._cond:
            ready, proc = self._ready, self._proc
            if self._state is not State.RUNNING or ready is None or proc is None:
                return None
            return Probe(
                generation=self._generation,
                pid=proc.pid,
                admin_port=ready.admin_port,
                dsn=libpq_dsn(self.target.host, self._address.port, self.password),
            )

    def _on_hung(self, generation: int, why: str) -> None:
        self._hung = (generation, why)
        self._wake.set()

    def activity(self) -> dict[str, Any] | None:
        """What the backend was doing at the last health check (``/health``), if it answered."""
        return self._watchdog.last_report

    # ----------------------------------------------------------------------- bookkeeping

    def _transition(self, state: State, detail: str | None = None) -> None:
        # The state file says it before anyone waiting on the state hears of it: whoever sees the new
        # state (start() returning RUNNING, then `hive-bridge start` reading the file) finds it written.
        with self._write_lock:
            with self._cond:
                old, self._state = self._state, state
            if state is not State.STOPPED:
                self._write_state_locked()
        with self._cond:
            self._cond.notify_all()
        if state is State.RUNNING:
            log.info("success: %s entered RUNNING state, %s", NAME, detail or "")
        elif old is not state:
            log.debug(
                "%s: %s -> %s%s", NAME, old.value, state.value, f" ({detail})" if detail else ""
            )

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
            port=self._address.port if ready is not None else None,
            admin_port=ready.admin_port if ready is not None else None,
            node_pid=proc.pid if proc is not None and node_alive else None,
            node_create_time=(
                process_create_time(proc.pid) if proc is not None and node_alive else None
            ),
            started_at=self._started_wall,
            running_since=self._running_since if self._state is State.RUNNING else None,
            restarts=self._policy.restarts,
            last_exit=self._policy.last_exit,
            last_exit_at=self._policy.last_exit_at,
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
            self._write_state_locked()

    def _write_state_locked(self) -> None:
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
