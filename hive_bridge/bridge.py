"""``Bridge``: one PGlite server for one data dir, started here or attached to from another process.

``start()`` takes the data dir lock and runs a :class:`~hive_bridge.supervisor.Supervisor` in this
process. If another process already holds the lock, the bridge reads that process's state file and
attaches to its DSN instead (waiting up to the start deadline for it to reach RUNNING), so a data dir
is never opened twice.
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
from .errors import BridgeNotRunningError, ConfigError, DataDirLockedError, display_path
from .locate import locate
from .lock import DataDirLock
from .logs import configure_logging
from .paths import (
    RunPaths,
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


class Bridge:
    """A PGlite server for ``data_dir`` (``None`` or ``memory=True``: in-memory).

    Unset keyword arguments come from ``HIVE_BRIDGE_*``/``HIVE_LOG_LEVEL`` (and ``.env``).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        memory: bool = False,
        host: str | None = None,
        port: int | None = None,
        extensions: Sequence[str] = ("vector",),
        run_dir: str | Path | None = None,
        node: str | None = None,
        js_dir: str | Path | None = None,
        log_level: str | None = None,
        options: SupervisorOptions | None = None,
        origin: Origin = "api",
        attach: bool = True,
        allow_remote: bool | None = None,
        unix_socket: bool | None = None,
        socket_dir: str | Path | None = None,
        settings: BridgeSettings | None = None,
    ) -> None:
        if data_dir is None and not memory:
            raise ValueError("Bridge needs a data_dir, or memory=True for an in-memory database")
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
        self.options = options or SupervisorOptions()
        self.origin: Origin = origin
        self._attach = attach
        self.supervisor: Supervisor | None = None
        self.paths: RunPaths | None = None
        self._attached_state: BridgeState | None = None
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
        paths = run_paths_for(self.data_dir, run_dir=self._run_dir)
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
                if state is not None and state.state == State.RUNNING.value and state.port:
                    self._attach_to(paths, state)
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

    def _attach_to(self, paths: RunPaths, state: BridgeState) -> None:
        password = read_password(paths.password)
        if password is None:
            raise BridgeNotRunningError(
                data_dir=str(paths.data_dir),
                state_path=str(paths.state),
                detail=f"the running server's password file {paths.password} is missing",
            )
        self.paths = paths
        self._attached_state = state
        self._password = password
        log.info(
            "attached: data dir %s is served by process %d on %s:%s",
            paths.data_dir,
            state.supervisor_pid,
            state.host,
            state.port,
        )

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
        """Stop the server this bridge runs (an attached bridge only detaches). Idempotent."""
        supervisor, self.supervisor = self.supervisor, None
        self._attached_state = None
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

    @property
    def running(self) -> bool:
        """Serving: our supervisor is not STOPPED/FATAL, or the process we attached to is alive."""
        if self._attached_state is not None:
            return self.paths is not None and read_live_state(self.paths.state) is not None
        return self.supervisor is not None and self.supervisor.state not in (
            State.FATAL,
            State.STOPPED,
        )

    @property
    def state(self) -> str:
        if self._attached_state is not None:
            live = read_live_state(self.paths.state) if self.paths else None
            return live.state if live is not None else State.STOPPED.value
        return self.supervisor.state.value if self.supervisor else State.STOPPED.value

    @property
    def port(self) -> int:
        if self._attached_state is not None and self._attached_state.port:
            return self._attached_state.port
        if self.supervisor is not None and self.supervisor.port:
            return self.supervisor.port
        raise BridgeNotRunningError(
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
            live = read_live_state(self.paths.state) if self.paths else None
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
            live = read_live_state(self.paths.state)
            if live is None:
                return {"state": State.STOPPED.value, "data_dir": str(self.paths.data_dir)}
            snapshot = live
        report = status_report(snapshot)
        report["attached"] = self.attached
        return report

    def raise_if_fatal(self) -> None:
        """Raise the supervisor's FATAL error, if it gave up."""
        if self.supervisor is not None and self.supervisor.fatal_error is not None:
            raise self.supervisor.fatal_error

    def __repr__(self) -> str:
        where = display_path(self.data_dir)
        return f"<Bridge {where} state={self.state}{' attached' if self.attached else ''}>"
