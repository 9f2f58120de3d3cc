"""hive-bridge: a real PostgreSQL server (PGlite in a supervised Node.js sidecar) for Python apps.

Typical use: set ``HIVE_DATABASE_BACKEND``/``HIVE_DATABASE_URL`` and call :func:`create_engine` or
:func:`create_async_engine`; for pglite the bridge is started (or attached to) automatically.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .bridge import Bridge
from .config import BridgeSettings, DatabaseTarget, Settings, load_settings
from .engines import (
    auto_bridge,
    create_async_engine,
    create_engine,
    database_url,
    stop_auto_bridges,
)
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
