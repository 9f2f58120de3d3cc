"""``hive-bridge doctor``: check everything the bridge needs, one line per check with the fix.

``OK`` fine, ``WARN`` works but could be better (not a failure), ``SKIP`` cannot be checked because
something it depends on failed, ``FAIL`` will not work (exit 1).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shlex
import shutil
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .config import BridgeSettings, load_bridge_settings
from .errors import BridgeNotFoundError, ConfigError, HiveBridgeError
from .locate import check_js_dir, default_js_dir
from .node import select_node
from .paths import MAX_SOCKET_PATH, run_paths_for, socket_dir_for, socket_path_length
from .statefile import read_live_state
from .template import template_dir

__all__ = ["Warn", "run_doctor"]


class Warn(Exception):
    """Raised by a check that found something that works, but not as well as it could."""


class _Skip(Exception):
    pass


@dataclass
class _Doctor:
    out: Callable[[str], None]
    ok: bool = True

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        try:
            detail = fn()
        except HiveBridgeError as exc:
            self.out(f"FAIL {name}: {str(exc).removeprefix('hive-bridge: ')}")
            self.ok = False
            return False
        except Warn as exc:
            self.out(f"WARN {name}: {exc}")
            return True
        except _Skip as exc:
            self.out(f"SKIP {name}: {exc}")
            return True
        self.out(f"OK   {name}: {detail}")
        return True


def _python_deps() -> str:
    found, missing = [], []
    for module, dist in (
        ("psutil", "psutil"),
        ("sqlalchemy", "sqlalchemy"),
        ("asyncpg", "asyncpg"),
        ("psycopg", "psycopg[binary]"),
        ("httpx", "httpx"),
    ):
        try:
            importlib.import_module(module)
            version = importlib.metadata.version(dist.split("[")[0])
        except ImportError:
            missing.append(dist)
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{module} (version unknown)")
        else:
            found.append(f"{module} {version}")
    if missing:
        raise BridgeNotFoundError(
            cause="python_deps",
            what=f"Python packages missing: {', '.join(missing)}",
            looked_in=sys.executable,
            fix=f"{sys.executable} -m pip install {' '.join(shlex.quote(m) for m in missing)} "
            "(or: make install)",
        )
    return ", ".join(found)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_doctor(
    resolve_data_dir: Callable[[], Path | None],
    *,
    port: int | None,
    out: Callable[[str], None],
    settings: BridgeSettings | None = None,
) -> bool:
    """Run every check, printing one line each through ``out``; ``True`` if none failed.

    ``resolve_data_dir()`` names the data dir to check (``None``: in-memory); a ConfigError it
    raises is reported as a failed check.
    """
    doctor = _Doctor(out)
    out(f"hive-bridge {__version__}, Python {sys.version.split()[0]} ({sys.executable})")
    doctor.check("python packages", _python_deps)
    if settings is None:
        try:
            settings = load_bridge_settings()
        except ConfigError as exc:
            out(f"FAIL settings: {exc}")
            return False
    config = settings

    chosen: dict[str, Path] = {}

    def node() -> str:
        choice = select_node(config.node)
        chosen["node"] = choice.path
        return choice.describe()

    doctor.check("node", node)
    js_dir = config.js_dir or default_js_dir()
    js: dict[str, object] = {}

    def run_js_check() -> str:
        try:
            version = check_js_dir(js_dir, from_setting=config.js_dir is not None)
        except BridgeNotFoundError as exc:
            js["error"] = exc
            raise
        js["pglite"] = version
        return version

    def bridge_js() -> str:
        try:
            run_js_check()
        except BridgeNotFoundError as exc:
            if exc.cause in ("js_dir_missing", "server_js_missing", "lockfile_missing"):
                raise
        return f"{js_dir} (server.js present)"

    def node_modules() -> str:
        error = js.get("error")
        if isinstance(error, BridgeNotFoundError):
            if error.cause in ("js_dir_missing", "server_js_missing", "lockfile_missing"):
                raise _Skip("bridge-js itself is missing")
            raise error
        return f"match package-lock.json; PGlite {js.get('pglite')}"

    doctor.check("bridge-js", bridge_js)
    doctor.check("node_modules", node_modules)

    def template_cache() -> str:
        version = js.get("pglite")
        if not isinstance(version, str):
            raise _Skip("the PGlite version is unknown (see node_modules)")
        path = template_dir(version, cache_dir=config.cache_dir)
        if (path / "PG_VERSION").is_file():
            return f"{path} (new data dirs are a quick copy of it)"
        parent = _nearest_existing(path.parent)
        writable = os.access(parent, os.W_OK | os.X_OK)
        raise Warn(
            f"not built yet at {path}: the first start of a new data dir runs initdb (~3.5 s "
            f"instead of ~0.1 s)"
            + ("" if writable else f", and {parent} is not writable, so it never will be")
            + ". Fix: make install (in a checkout), or: "
            + shlex.quote(str(chosen.get("node", "node")))
            + " "
            + shlex.quote(str(js_dir / "server.js"))
            + " --prepare-template"
            + ("" if writable else " --cache-dir DIR (or set HIVE_BRIDGE_CACHE_DIR=DIR)")
        )

    doctor.check("template cache", template_cache)

    try:
        data_dir = resolve_data_dir()
    except ConfigError as exc:
        out(f"FAIL data dir: {exc}")
        return False

    def data_dir_check() -> str:
        if data_dir is None:
            return "in-memory (nothing is written)"
        paths = run_paths_for(data_dir, run_dir=config.run_dir, create=False)
        parent = _nearest_existing(paths.run_dir.parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                setting="data dir",
                value=str(data_dir),
                problem=f"{parent} is not writable by this user",
                example="HIVE_DATABASE_URL=pglite://./data/automagik_hive.db",
                fix=f"chmod u+w {shlex.quote(str(parent))} or choose another data dir",
            )
        state = read_live_state(paths.state, clean=False)
        running = (
            f"; a server is {state.state} (pid {state.supervisor_pid}, port {state.port})"
            if state
            else ""
        )
        return f"{paths.data_dir} (writable; run dir {paths.run_dir}){running}"

    doctor.check("data dir", data_dir_check)

    def socket_dir() -> str:
        if not config.unix_socket:
            raise _Skip("turned off (HIVE_BRIDGE_SOCKET_DIR=off)")
        if data_dir is None:
            return "in the private temporary run dir of the in-memory server"
        paths = run_paths_for(data_dir, run_dir=config.run_dir, create=False)
        directory = socket_dir_for(paths, config.socket_dir)
        length = socket_path_length(directory)
        where = f"{directory} (socket path {length} bytes, limit {MAX_SOCKET_PATH})"
        q = shlex.quote(str(directory))
        if directory.exists():
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise ConfigError(
                    setting="HIVE_BRIDGE_SOCKET_DIR",
                    value=str(directory),
                    problem="it is not a directory owned by this user",
                    example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                    fix=f"remove it (rm -r {q}) or set HIVE_BRIDGE_SOCKET_DIR to another place",
                )
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                if config.socket_dir is not None:
                    raise ConfigError(
                        setting="HIVE_BRIDGE_SOCKET_DIR",
                        value=str(directory),
                        problem=f"it has mode {mode:o}; the server requires 0700",
                        example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                        fix=f"chmod 700 {q}",
                    )
                raise Warn(f"{where} has mode {mode:o}; hive-bridge makes it 0700 at start")
            return f"{where}, mode 0700"
        parent = _nearest_existing(directory.parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                setting="HIVE_BRIDGE_SOCKET_DIR",
                value=str(directory),
                problem=f"it cannot be created: {parent} is not writable by this user",
                example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                fix="set HIVE_BRIDGE_SOCKET_DIR to a writable place, or turn the socket off "
                "with HIVE_BRIDGE_SOCKET_DIR=off",
            )
        return f"{where}, created with mode 0700 at start"

    doctor.check("socket dir", socket_dir)

    def port_check() -> str:
        wanted = port if port is not None else config.port
        if not wanted:
            return "0: the OS picks a free port"
        if data_dir is not None:
            state = read_live_state(
                run_paths_for(data_dir, run_dir=config.run_dir, create=False).state,
                clean=False,
            )
            if state is not None and state.port == wanted:
                return f"{wanted} is used by this data dir's own server"
        with socket.socket() as sock:
            try:
                sock.bind((config.host, wanted))
            except OSError as exc:
                raise ConfigError(
                    setting="HIVE_BRIDGE_PORT",
                    value=str(wanted),
                    problem=f"{config.host}:{wanted} is not free ({exc.strerror})",
                    example="HIVE_BRIDGE_PORT=0",
                    fix=f"stop what listens there (ss -ltnp 'sport = :{wanted}') or use "
                    "HIVE_BRIDGE_PORT=0",
                ) from exc
        return f"{config.host}:{wanted} is free"

    doctor.check("port", port_check)
    for tool in ("psql", "pgbench"):
        found = shutil.which(tool)
        out(
            f"OK   {tool}: {found}"
            if found
            else f"WARN {tool}: not found (optional; apt-get install postgresql-client)"
        )
    return doctor.ok
