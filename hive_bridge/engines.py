"""The application API: a database URL and SQLAlchemy engines for the configured backend.

``HIVE_DATABASE_BACKEND``/``HIVE_DATABASE_URL`` choose the backend. sqlite and postgresql URLs are
used as given (only the PostgreSQL driver is normalized: ``postgresql+psycopg`` sync,
``postgresql+asyncpg`` async). For pglite the first call attaches this process to the data dir's
shared server - started on demand as a detached supervisor process if none runs - and every engine
of this process uses it, over the server's Unix socket when it has one (faster than loopback TCP).
The process is registered as a user of that server until interpreter exit (or until it dies); the
server stops shortly after its last user is gone. An in-memory database
(``pglite://memory``) cannot be shared: it is run inside this process and stopped at exit.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy.engine import Engine

from . import dsn as _dsn
from .bridge import Bridge
from .config import Settings, load_settings, mask_url, normalize_postgres_url
from .errors import ConfigError
from .supervisor import State

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "Bridge",
    "auto_bridge",
    "bridge_url",
    "create_async_engine",
    "create_engine",
    "database_url",
    "stop_auto_bridges",
]

log = logging.getLogger("hive_bridge.engines")

#: engine defaults for the bridge: a normal pool, and dead connections replaced after a restart
PGLITE_ENGINE_DEFAULTS: dict[str, Any] = {"pool_size": 5, "max_overflow": 5, "pool_pre_ping": True}

_lock = threading.Lock()
_bridges: dict[str, Bridge] = {}
_atexit_registered = False


def auto_bridge(settings: Settings | None = None) -> Bridge:
    """The bridge of this process for the configured pglite data dir (attached on first use)."""
    global _atexit_registered
    settings = settings or load_settings()
    target = settings.database
    if target.backend != "pglite":
        raise ConfigError(
            setting="HIVE_DATABASE_BACKEND",
            value=target.backend,
            problem="the bridge is only used with the pglite backend",
            example="HIVE_DATABASE_BACKEND=pglite",
        )
    key = "memory" if target.data_dir is None else str(target.data_dir)
    with _lock:
        bridge = _bridges.get(key)
        if bridge is not None and bridge.running and bridge.state != State.FATAL.value:
            return bridge
        if bridge is not None:
            bridge.stop()
        bridge = Bridge(
            target.data_dir,
            memory=target.memory,
            origin="auto",
            shared=not target.memory,
            settings=settings.bridge,
        )
        bridge.start()
        _bridges[key] = bridge
        if not _atexit_registered:
            atexit.register(stop_auto_bridges)
            _atexit_registered = True
        return bridge


def stop_auto_bridges() -> None:
    """End this process's use of the bridges :func:`auto_bridge` gave it (runs at exit): shared
    servers stop once no other process uses them, an in-memory one stops now."""
    with _lock:
        bridges = list(_bridges.values())
        _bridges.clear()
    for bridge in bridges:
        try:
            bridge.stop()
        except Exception:  # at exit, keep stopping the others
            log.exception("stopping %r failed", bridge)


def _sqlite_url(url: str, *, async_: bool) -> str:
    scheme, _, rest = url.partition("://")
    path = rest[1:].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if not async_:
        return url if scheme != "sqlite+aiosqlite" else "sqlite://" + rest
    if importlib.util.find_spec("aiosqlite") is None:
        raise ConfigError(
            setting="HIVE_DATABASE_URL",
            value=mask_url(url),
            problem="async SQLAlchemy on sqlite needs the aiosqlite driver, which is not installed",
            example="HIVE_DATABASE_URL=sqlite:///./data/automagik_hive.db",
            fix="pip install aiosqlite (or use HIVE_DATABASE_BACKEND=pglite)",
        )
    return "sqlite+aiosqlite://" + rest


def database_url(async_: bool = False, *, settings: Settings | None = None) -> str:
    """The SQLAlchemy URL of the configured database (starting/attaching the bridge for pglite)."""
    settings = settings or load_settings()
    target = settings.database
    if target.backend == "sqlite":
        return _sqlite_url(target.url, async_=async_)
    if target.backend == "postgresql":
        return normalize_postgres_url(target.url, async_=async_)
    return bridge_url(auto_bridge(settings), async_=async_)


def bridge_url(bridge: Bridge, *, async_: bool = False) -> str:
    """The SQLAlchemy URL an application should use for ``bridge``: its Unix socket (no password,
    measured faster than loopback TCP for psycopg and asyncpg) when it has one, else TCP."""
    socket_dir = bridge.socket_dir
    if socket_dir is None:  # HIVE_BRIDGE_SOCKET_DIR=off
        return bridge.async_sqlalchemy_url if async_ else bridge.sqlalchemy_url
    build = _dsn.unix_async_sqlalchemy_url if async_ else _dsn.unix_sqlalchemy_url
    return build(socket_dir, bridge.port)


def _engine_defaults(settings: Settings) -> dict[str, Any]:
    return dict(PGLITE_ENGINE_DEFAULTS) if settings.database.backend == "pglite" else {}


def create_engine(*, settings: Settings | None = None, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine for the configured backend (keyword arguments override the defaults)."""
    settings = settings or load_settings()
    url = database_url(settings=settings)
    return sqlalchemy.create_engine(url, **{**_engine_defaults(settings), **kwargs})


def create_async_engine(*, settings: Settings | None = None, **kwargs: Any) -> AsyncEngine:
    """An asyncio SQLAlchemy engine (asyncpg for pglite/postgresql, aiosqlite for sqlite)."""
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    settings = settings or load_settings()
    url = database_url(async_=True, settings=settings)
    return sa_create_async_engine(url, **{**_engine_defaults(settings), **kwargs})
