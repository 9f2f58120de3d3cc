"""hive-bridge: a real PostgreSQL server (PGlite in a supervised Node.js sidecar) for Python apps.

Typical use: set ``HIVE_DATABASE_BACKEND``/``HIVE_DATABASE_URL`` and call :func:`create_engine` or
:func:`create_async_engine`; for pglite the shared server of the data dir is started (or attached
to) automatically.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from .bridge import Bridge
from .config import BridgeSettings, DatabaseTarget, Settings, load_settings
from .errors import (
    BackupError,
    BridgeFatalError,
    BridgeNotFoundError,
    BridgeNotRunningError,
    BridgeStartError,
    ConfigError,
    DataDirError,
    DataDirLockedError,
    HiveBridgeError,
    PortInUseError,
    RestoreVersionError,
    StopRefusedError,
)
from .readiness import ping
from .supervisor import State, SupervisorOptions

if TYPE_CHECKING:
    from .engines import (
        auto_bridge,
        create_async_engine,
        create_engine,
        database_url,
        stop_auto_bridges,
    )

#: imported on first use: SQLAlchemy takes ~0.1 s to import, and the CLI and the detached
#: supervisor never need it
_ENGINE_API = frozenset(
    {"auto_bridge", "create_async_engine", "create_engine", "database_url", "stop_auto_bridges"}
)


def __getattr__(name: str) -> Any:
    if name in _ENGINE_API:
        from . import engines

        return getattr(engines, name)
    raise AttributeError(f"module 'hive_bridge' has no attribute {name!r}")


__all__ = [
    "BackupError",
    "Bridge",
    "BridgeFatalError",
    "BridgeNotFoundError",
    "BridgeNotRunningError",
    "BridgeSettings",
    "BridgeStartError",
    "ConfigError",
    "DataDirError",
    "DataDirLockedError",
    "DatabaseTarget",
    "HiveBridgeError",
    "PortInUseError",
    "RestoreVersionError",
    "Settings",
    "State",
    "StopRefusedError",
    "SupervisorOptions",
    "__version__",
    "auto_bridge",
    "create_async_engine",
    "create_engine",
    "database_url",
    "load_settings",
    "ping",
    "stop_auto_bridges",
]
