"""hive-bridge: a real PostgreSQL server (PGlite in a supervised Node.js sidecar) for Python apps.

Typical use: set ``HIVE_DATABASE_BACKEND``/``HIVE_DATABASE_URL`` and call :func:`create_engine` or
:func:`create_async_engine`; for pglite the shared server of the data dir is started (or attached
to) automatically.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .bridge import Bridge
    from .config import BridgeSettings, DatabaseTarget, Settings, load_settings
    from .engines import (
        auto_bridge,
        create_async_engine,
        create_engine,
        database_url,
        stop_auto_bridges,
    )
    from .readiness import ping
    from .supervisor import State, SupervisorOptions

#: imported on first use: importing hive_bridge (as the pytest plugin does in every pytest run, or an
#: app before it needs a server) costs only the error types; SQLAlchemy alone takes ~0.1 s to import,
#: and the CLI and the detached supervisor never need it
_LAZY = {
    "Bridge": "bridge",
    "BridgeSettings": "config",
    "DatabaseTarget": "config",
    "Settings": "config",
    "load_settings": "config",
    "ping": "readiness",
    "State": "supervisor",
    "SupervisorOptions": "supervisor",
    "auto_bridge": "engines",
    "create_async_engine": "engines",
    "create_engine": "engines",
    "database_url": "engines",
    "stop_auto_bridges": "engines",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hive_bridge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


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
