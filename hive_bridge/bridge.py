"""``Bridge``: one PGlite server for one data dir, run here, run by a shared supervisor, or attached to.

Two ways to get a server:

- **owned** (the default, ``Bridge(data_dir).start()`` / ``with Bridge(data_dir):``): this process
  takes the data-dir lock and runs a :class:`~hive_bridge.supervisor.Supervisor` itself; the server
  lives exactly as long as this object (or this process).
- **shared** (``Bridge(data_dir, shared=True)``, what :func:`hive_bridge.create_engine` uses): the
  server is run by a detached supervisor process (``hive-bridge supervise``), shared by every
  process that uses the data dir. Each registers a user lease (:mod:`hive_bridge.leases`); the
  supervisor stops the server shortly after its last user is gone, SIGKILLed users included.

Either way, if a server already runs for the data dir the bridge attaches to it (reading its state
file, waiting for RUNNING) and registers as a user while attached, so a data dir is never opened
twice and a shared server never stops under a process that uses it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import dsn as _dsn
from .config import BridgeSettings, check_exposure, load_bridge_settings
from .errors import (
    BridgeNotRunningError,
    BridgeStartError,
    ConfigError,
    DataDirLockedError,
    display_path,
)
from .launch import DaemonSpec, launch_daemon
from .leases import UserLease, users_mutex
from .locate import locate
from .lock import DataDirLock, is_locked
from .logs import configure_logging
from .paths import (
    RunPaths,
    discard_unused_run_dir,
    ensure_password,
    ensure_socket_dir,
    memory_run_paths,
    read_password,
    run_paths_for,
)
from .statefile import BridgeState, Origin, read_live_state
from .status import status_report
from .supervisor import ServerTarget, State, Supervisor, SupervisorOptions

__all__ = ["Bridge"]

log = logging.getLogger("hive_bridge.bridge")

#: how long a lock held with no live state file is waited for (a supervisor that is just starting,
#: or a Node server whose supervisor died and that is about to exit at stdin EOF)
LOCK_WITHOUT_STATE_WAIT = 10.0
#: states of another process's server in which this bridge counts it as serving
_SERVING = frozenset({State.STARTING.value, State.RUNNING.value, State.BACKOFF.value})


class Bridge:
    """A PGlite server for ``data_dir`` (``None`` or ``memory=True``: in-memory).

    Unset keyword arguments come from ``HIVE_BRIDGE_*``/``HIVE_LOG_LEVEL`` (and ``.env``).
    ``shared=True``: use (or start) the detached supervisor every process of this data dir shares,
    instead of running the server in this process. Use as a context manager, or call :meth:`start`
    and :meth:`stop` (for a shared or attached bridge, ``stop`` only ends this process's use).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        memory: bool = False,
        host: str | None = None,
        port: int | None = None,
        extensions: Sequence[str] = ("all",),
        run_dir: str | Path | None = None,
        node: str | None = None,
        js_dir: str | Path | None = None,
        log_level: str | None = None,
        options: SupervisorOptions | None = None,
        origin: Origin = "api",
        attach: bool = True,
        shared: bool = False,
        allow_remote: bool | None = None,
        unix_socket: bool | None = None,
        socket_dir: str | Path | None = None,
        detached: bool = False,
        settings: BridgeSettings | None = None,
    ) -> None:
        if data_dir is None and not memory:
            raise ValueError("Bridge needs a data_dir, or memory=True for an in-memory database")
        if data_dir is None and shared:
            raise ValueError("an in-memory database lives in one process and cannot be shared")
        env = settings or load_bridge_settings()
        self.memory = data_dir is None
        self.data_dir: Path | None = (
            None if data_dir is None else Path(data_dir).expanduser().absolute()
        )
        self.host = host or env.host
        self.allow_remote = env.allow_remote if allow_remote is None else allow_remote
        check_exposure(self.host, self.allow_remote, setting="host" if host else "HIVE_BRIDGE_HOST")
        self._port_setting = env.port if port is None else port
        self.extensions = tuple(extensions)
        self._run_dir = Path(run_dir) if run_dir is not None else env.run_dir
        self._node = node if node is not None else env.node
        self._js_dir = Path(js_dir) if js_dir is not None else env.js_dir
        self.log_level = (log_level or env.log_level).upper()
        self._unix_socket = env.unix_socket if unix_socket is None else unix_socket
        self._socket_setting = Path(socket_dir) if socket_dir is not None else env.socket_dir
        self._cache_dir = env.cache_dir
        self.options = options or SupervisorOptions.from_settings(env)
        self.origin: Origin = origin
        self.shared = shared
        self._attach = attach
        self._detached = detached
        self.supervisor: Supervisor | None = None
        self.paths: RunPaths | None = None
        self._attached_state: BridgeState | None = None
        self._lease: UserLease | None = None
        self._password: str | None = None
        self._starting: Supervisor | None = None
        self._stop_requested = False

    # --------------------------------------------------------------------------- lifecycle

    def start(self) -> Bridge:
        """Start (or attach to) the server; returns ``self`` once ``SELECT 1`` answers."""
        if self.running:
            return self
        configure_logging(self.log_level)
        if self.data_dir is None:
            self._start_owned(memory_run_paths(), lock=None)
            return self
        fresh = not run_paths_for(
            self.data_dir, run_dir=self._run_dir, create=False
        ).run_dir.exists()
        paths = run_paths_for(self.data_dir, run_dir=self._run_dir)
        try:
            return self._start_on_disk(paths)
        except BaseException:
            if fresh:  # a failed first start leaves no empty run dir behind
                discard_unused_run_dir(paths)
            raise

    def _start_on_disk(self, paths: RunPaths) -> Bridge:
        if self.shared:
            self._start_shared(paths)
            return self
        deadline = time.monotonic() + self.options.start_timeout
        orphan_deadline = time.monotonic() + LOCK_WITHOUT_STATE_WAIT
        while True:
            try:
                lock = DataDirLock.acquire(paths.lock, data_dir=str(paths.data_dir))
            except DataDirLockedError:
                # held: by a live supervisor (attach to it), or briefly by a starting one or by a
                # Node server whose supervisor just died (it exits at stdin EOF): wait and retry
                state = read_live_state(paths.state)
                if state is not None and not self._attach:
                    raise
                if state is not None and self._try_attach(paths):
                    return self
                now = time.monotonic()
                if state is not None:
                    orphan_deadline = now + LOCK_WITHOUT_STATE_WAIT
                if now >= deadline or now >= orphan_deadline or self._stop_requested:
                    raise
                time.sleep(0.05)
                continue
            break
        self._start_owned(paths, lock=lock)
        return self

    def _start_owned(self, paths: RunPaths, *, lock: DataDirLock | None) -> None:
        try:
            install = locate(node=self._node, js_dir=self._js_dir)
            log.debug(
                "node %s (v%s), bridge-js %s, PGlite %s, run dir %s",
                install.node,
                install.node_version,
                install.js_dir,
                install.pglite_version,
                paths.run_dir,
            )
            password = ensure_password(paths.password)
            socket_dir = (
                ensure_socket_dir(paths, self._socket_setting) if self._unix_socket else None
            )
            target = ServerTarget(
                data_dir=paths.data_dir,
                paths=paths,
                host=self.host,
                port=self._port_setting,
                extensions=self.extensions,
                log_level=self.log_level,
                origin=self.origin,
                socket_dir=socket_dir,
                allow_remote=self.allow_remote,
                cache_dir=self._cache_dir,
                detached=self._detached,
            )
            supervisor = Supervisor(
                install, target, password=password, lock=lock, options=self.options
            )
            self._starting = supervisor
            if self._stop_requested:
                supervisor.request_stop()
            supervisor.start()
        except BaseException:
            self._starting = None
            if lock is not None:
                lock.release()
            if paths.data_dir is None:
                shutil.rmtree(paths.run_dir, ignore_errors=True)
            raise
        self.paths = paths
        self.supervisor = supervisor
        self._starting = None
        self._password = password

    def _start_shared(self, paths: RunPaths) -> None:
        """Attach to the data dir's server, starting a detached supervisor if there is none."""
        lease = UserLease(paths.users_dir)
        deadline = time.monotonic() + self.options.start_budget
        try:
            while True:
                if self._try_attach(paths, lease):
                    return
                state = read_live_state(paths.state)
                if self._stop_requested:
                    raise BridgeStartError(
                        data_dir=str(paths.data_dir),
                        reason="the start was cancelled by a stop request",
                    )
                if time.monotonic() >= deadline:
                    raise BridgeStartError(
                        data_dir=str(paths.data_dir),
                        reason=(
                            "no shared server reached RUNNING in time (last seen: "
                            f"{'state ' + state.state if state else 'no server'})"
                        ),
                        log_path=str(paths.supervisor_log),
                    )
                # none, or one that gave up (and let go of the lock): start a supervisor
                startable = state is None or state.state == State.FATAL.value
                if startable and not is_locked(paths.lock):
                    launched = launch_daemon(self._daemon_spec(paths), paths, deadline=deadline)
                    log.debug("detached supervisor pid %s: %s", launched.pid, launched.outcome)
                    continue  # running: attach to it; busy: another one won, attach to that
                time.sleep(0.05)  # starting, stopping, or an orphaned Node about to exit
        except BaseException:
            lease.release()
            raise

    def _daemon_spec(self, paths: RunPaths) -> DaemonSpec:
        assert paths.data_dir is not None
        settings = BridgeSettings(
            log_level=self.log_level,  # type: ignore[arg-type]
            node=self._node,
            js_dir=self._js_dir.absolute() if self._js_dir else None,
            run_dir=paths.run_dir if self._run_dir else None,
            port=self._port_setting,
            host=self.host,
            allow_remote=self.allow_remote,
            socket_dir=self._socket_setting.absolute() if self._socket_setting else None,
            unix_socket=self._unix_socket,
            cache_dir=self._cache_dir.absolute() if self._cache_dir else None,
        )
        return DaemonSpec(
            data_dir=paths.data_dir,
            origin="auto",
            extensions=self.extensions,
            settings=settings,
            options=self.options,
        )

    def _try_attach(self, paths: RunPaths, lease: UserLease | None = None) -> bool:
        """Register as a user and attach if another process's server is RUNNING.

        Registering and reading the state happen under ``users.lock``, so a shared supervisor that
        is about to stop for want of users either sees this user or has already said STOPPING.
        """
        own_lease = lease is None
        lease = lease or UserLease(paths.users_dir)
        with users_mutex(paths.users_lock):
            lease.acquire()
            state = read_live_state(paths.state)
        if state is None or state.state != State.RUNNING.value or not state.port:
            if own_lease:
                lease.release()
            return False
        password = read_password(paths.password)
        if password is None:
            lease.release()
            raise BridgeNotRunningError(
                data_dir=str(paths.data_dir),
                state_path=str(paths.state),
                detail=f"the running server's password file {paths.password} is missing",
            )
        self.paths = paths
        self._attached_state = state
        self._lease = lease
        self._password = password
        log.info(
            "attached: data dir %s is served by process %d on %s:%s (started by %s)",
            paths.data_dir,
            state.supervisor_pid,
            state.host,
            state.port,
            state.origin,
        )
        return True

    def request_stop(self, force: bool = False) -> None:
        """Ask a starting or running server to stop; safe in a signal handler (sets flags only)."""
        self._stop_requested = True
        supervisor = self._starting or self.supervisor
        if supervisor is not None:
            supervisor.request_stop(force)

    def wait(self) -> None:
        """Block until the server this bridge runs stops; raise its error if it went FATAL."""
        if self.supervisor is not None:
            error = self.supervisor.wait()
            if error is not None:
                raise error

    def stop(self) -> None:
        """Stop the server this bridge runs; a shared or attached bridge only ends its use of the
        server (the shared supervisor stops it once no user is left). Idempotent."""
        supervisor, self.supervisor = self.supervisor, None
        lease, self._lease = self._lease, None
        self._attached_state = None
        if lease is not None:
            lease.release()
        if supervisor is not None:
            supervisor.stop()
            if self.paths is not None and self.paths.data_dir is None:
                shutil.rmtree(self.paths.run_dir, ignore_errors=True)

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --------------------------------------------------------------------------- properties

    @property
    def attached(self) -> bool:
        """True when another process runs the server and this bridge only uses it."""
        return self._attached_state is not None

    def _live_state(self) -> BridgeState | None:
        return read_live_state(self.paths.state) if self.paths is not None else None

    @property
    def running(self) -> bool:
        """Serving: our supervisor is not STOPPED/FATAL, or the process we attached to is alive
        and neither stopping nor given up."""
        if self._attached_state is not None:
            live = self._live_state()
            return live is not None and live.state in _SERVING
        return self.supervisor is not None and self.supervisor.state not in (
            State.FATAL,
            State.STOPPED,
        )

    @property
    def state(self) -> str:
        if self._attached_state is not None:
            live = self._live_state()
            return live.state if live is not None else State.STOPPED.value
        return self.supervisor.state.value if self.supervisor else State.STOPPED.value

    @property
    def port(self) -> int:
        if self._attached_state is not None and self._attached_state.port:
            return self._attached_state.port
        if self.supervisor is not None and self.supervisor.port:
            return self.supervisor.port
        raise self._not_started()

    def _not_started(self) -> BridgeNotRunningError:
        return BridgeNotRunningError(
            data_dir=display_path(self.data_dir),
            state_path=str(self.paths.state) if self.paths else "(none)",
            detail="this Bridge was not started",
        )

    @property
    def connect_host(self) -> str:
        host = self._attached_state.host if self._attached_state is not None else self.host
        return _dsn.connect_host(host)

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def node_pid(self) -> int | None:
        if self._attached_state is not None:
            live = self._live_state()
            return live.node_pid if live is not None else None
        return self.supervisor.node_pid if self.supervisor else None

    @property
    def socket_dir(self) -> str | None:
        """The directory of the server's Unix socket (``None`` if it has none)."""
        if self._attached_state is not None:
            return self._attached_state.socket_dir
        ready = self.supervisor.ready_info if self.supervisor is not None else None
        return ready.socket_dir if ready is not None else None

    @property
    def dsn(self) -> str:
        """libpq DSN: ``postgresql://postgres:PW@127.0.0.1:PORT/postgres?sslmode=disable&…``"""
        return _dsn.libpq_dsn(self.connect_host, self.port, self._password)

    @property
    def unix_dsn(self) -> str:
        """libpq DSN over the Unix socket, no password: ``postgresql://postgres@/postgres?host=DIR&port=PORT``"""
        port = self.port
        directory = self.socket_dir
        if directory is None:
            raise ConfigError(
                setting="HIVE_BRIDGE_SOCKET_DIR",
                value="off",
                problem="this server was started without a Unix socket",
                example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                fix="unset HIVE_BRIDGE_SOCKET_DIR (or set it to a directory) and restart the server",
            )
        return _dsn.unix_dsn(directory, port)

    @property
    def asyncpg_dsn(self) -> str:
        """The DSN for ``asyncpg.connect`` (``sslmode=disable`` only; asyncpg knows no gssencmode)."""
        return _dsn.asyncpg_dsn(self.connect_host, self.port, self._password)

    @property
    def sqlalchemy_url(self) -> str:
        """``postgresql+psycopg://…`` for :func:`sqlalchemy.create_engine`."""
        return _dsn.sqlalchemy_url(self.connect_host, self.port, self._password)

    @property
    def async_sqlalchemy_url(self) -> str:
        """``postgresql+asyncpg://…?ssl=disable`` for :func:`create_async_engine`."""
        return _dsn.async_sqlalchemy_url(self.connect_host, self.port, self._password)

    def status(self) -> dict[str, Any]:
        """State, pids, port, uptime, restarts, RSS, versions and live admin stats."""
        if self.paths is None:
            return {"state": State.STOPPED.value, "data_dir": display_path(self.data_dir)}
        if self.supervisor is not None:
            snapshot = BridgeState(**self.supervisor.status())
        else:
            live = self._live_state()
            if live is None:
                return {"state": State.STOPPED.value, "data_dir": str(self.paths.data_dir)}
            snapshot = live
        report = status_report(snapshot, users_dir=self.paths.users_dir)
        report["attached"] = self.attached
        return report

    def raise_if_fatal(self) -> None:
        """Raise the supervisor's FATAL error, if it gave up."""
        if self.supervisor is not None and self.supervisor.fatal_error is not None:
            raise self.supervisor.fatal_error

    def __repr__(self) -> str:
        where = display_path(self.data_dir)
        return f"<Bridge {where} state={self.state}{' attached' if self.attached else ''}>"
