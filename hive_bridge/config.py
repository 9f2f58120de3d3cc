"""Settings from the environment and from ``.env`` in the working directory (the environment wins).

``HIVE_DATABASE_BACKEND`` picks the backend (``pglite``, ``sqlite``, ``postgresql``); when it is unset
the backend follows the scheme of ``HIVE_DATABASE_URL``; when both are unset the default is PGlite at
``pglite://./data/automagik_hive.db``. Every bad value raises :class:`ConfigError` naming the
variable, the value (password masked) and a correct example.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

__all__ = [
    "BACKENDS",
    "DEFAULT_PGLITE_URL",
    "LOG_LEVELS",
    "Backend",
    "BridgeSettings",
    "DatabaseTarget",
    "LogLevel",
    "Settings",
    "check_exposure",
    "is_loopback",
    "load_bridge_settings",
    "load_settings",
    "mask_url",
    "normalize_postgres_url",
    "parse_database_url",
    "parse_dotenv",
]

Backend = Literal["pglite", "sqlite", "postgresql"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

BACKENDS: tuple[Backend, ...] = ("pglite", "sqlite", "postgresql")
LOG_LEVELS: tuple[LogLevel, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")

DEFAULT_PGLITE_URL = "pglite://./data/automagik_hive.db"
DEFAULT_SQLITE_URL = "sqlite:///./data/automagik_hive.db"
EXAMPLE_URLS: dict[Backend, str] = {
    "pglite": DEFAULT_PGLITE_URL,
    "sqlite": DEFAULT_SQLITE_URL,
    "postgresql": "postgresql+psycopg://user:password@localhost:5432/hive",
}
MEMORY_NAMES = frozenset({"memory", ":memory:"})

_SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"})
_POSTGRES_SCHEMES = frozenset(
    {
        "postgresql",
        "postgres",
        "postgresql+psycopg",
        "postgresql+psycopg2",
        "postgresql+asyncpg",
    }
)


@dataclass(frozen=True)
class DatabaseTarget:
    """Where the application's data lives.

    ``url`` is the URL as configured. For pglite ``data_dir`` is the absolute data directory, or
    ``None`` with ``memory=True`` for an in-memory database.
    """

    backend: Backend
    url: str
    data_dir: Path | None = None
    memory: bool = False


@dataclass(frozen=True)
class BridgeSettings:
    """How to run the bridge: ``HIVE_BRIDGE_*`` and ``HIVE_LOG_LEVEL``.

    ``socket_dir`` ``None`` means the default place (see :func:`hive_bridge.paths.socket_dir_for`);
    ``unix_socket=False`` (``HIVE_BRIDGE_SOCKET_DIR=off``) turns the Unix socket off.
    """

    log_level: LogLevel = "INFO"
    node: str | None = None
    js_dir: Path | None = None
    run_dir: Path | None = None
    port: int = 0
    host: str = "127.0.0.1"
    allow_remote: bool = False
    socket_dir: Path | None = None
    unix_socket: bool = True
    cache_dir: Path | None = None
    #: watchdog and autovacuum knobs (``None``: the defaults of :class:`SupervisorOptions`)
    health_interval: float | None = None
    health_timeout: float | None = None
    health_failures: int | None = None
    vacuum_interval: float | None = None
    vacuum_threshold: int | None = None
    vacuum_scale_factor: float | None = None


@dataclass(frozen=True)
class Settings:
    """Everything hive-bridge reads from ``HIVE_*`` variables."""

    database: DatabaseTarget
    bridge: BridgeSettings = BridgeSettings()

    @property
    def log_level(self) -> LogLevel:
        return self.bridge.log_level


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)


# --------------------------------------------------------------------------------------- .env


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse ``.env`` text: ``KEY=value`` lines, ``export KEY=value``, ``#`` comments, quotes.

    Double-quoted values understand ``\\n``, ``\\t``, ``\\"`` and ``\\\\``; single-quoted values are
    literal; unquoted values end at `` #``. Lines that are not assignments are ignored.
    """
    result: dict[str, str] = {}
    for raw in text.split("\n"):  # not splitlines(): it also splits on \x1c-\x1e, \x85, \u2028
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(
                    r"\\(.)",
                    lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)),
                    value,
                )
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        result[key] = value
    return result


def _read_dotenv(cwd: Path) -> dict[str, str]:
    path = cwd / ".env"
    try:
        return parse_dotenv(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            setting=str(path),
            value=None,
            problem=f"the .env file cannot be read ({exc})",
            example="HIVE_DATABASE_URL=pglite://./data/automagik_hive.db",
            fix=f"make {path} a readable UTF-8 text file, or remove it",
        ) from exc


# ------------------------------------------------------------------------------------ URLs


def _scheme_of(url: str) -> str:
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def _backend_of_scheme(scheme: str) -> Backend | None:
    if scheme == "pglite":
        return "pglite"
    if scheme in _SQLITE_SCHEMES:
        return "sqlite"
    if scheme in _POSTGRES_SCHEMES:
        return "postgresql"
    return None


def _url_error(url: str, problem: str, backend: Backend = "pglite") -> ConfigError:
    return ConfigError(
        setting="HIVE_DATABASE_URL",
        value=mask_url(url),
        problem=problem,
        example=f"HIVE_DATABASE_URL={EXAMPLE_URLS[backend]}",
    )


def parse_database_url(url: str, *, cwd: Path | None = None) -> DatabaseTarget:
    """Parse ``HIVE_DATABASE_URL`` (any supported form) into a :class:`DatabaseTarget`.

    Relative pglite paths are made absolute against ``cwd`` (default: the working directory).
    """
    base = cwd if cwd is not None else Path.cwd()
    url = url.strip()
    scheme = _scheme_of(url)
    if not scheme:
        raise _url_error(
            url,
            "it is not a URL (expected scheme://…, one of pglite://, sqlite:///, postgresql://)",
        )
    backend = _backend_of_scheme(scheme)
    if backend is None:
        raise _url_error(
            url,
            f"unknown scheme {scheme!r}; use pglite://, sqlite:/// or postgresql[+psycopg|+asyncpg]://",
        )
    rest = url.partition("://")[2]

    if backend == "pglite":
        if "?" in rest or "#" in rest:
            raise _url_error(url, "pglite URLs take a path only, no ?query or #fragment")
        if not rest:
            raise _url_error(url, "the data directory path is empty")
        if rest in MEMORY_NAMES:
            return DatabaseTarget("pglite", url, None, memory=True)
        normalized = os.path.normpath(rest)
        if normalized in (".", "..", "/", "//") or normalized.endswith("/.."):
            raise _url_error(url, "the path names no data directory (it ends in ., .. or /)")
        path = Path(normalized)
        if not path.is_absolute():
            path = base / path
        return DatabaseTarget("pglite", url, Path(os.path.normpath(path)))

    if backend == "sqlite":
        if not rest.startswith("/"):
            raise _url_error(
                url, "a sqlite URL needs three slashes before the path (sqlite:///…)", "sqlite"
            )
        path_part = rest[1:].split("?", 1)[0]
        if not path_part:
            raise _url_error(url, "the database file path is empty", "sqlite")
        return DatabaseTarget("sqlite", url)

    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced [ ] in the host or password part
        raise _url_error(url, f"it is not a valid URL ({exc})", "postgresql") from exc
    if not parts.path.strip("/"):
        raise _url_error(url, "the database name is missing (…/dbname)", "postgresql")
    try:
        _ = parts.port
    except ValueError as exc:
        raise _url_error(url, f"the port is not a number ({exc})", "postgresql") from exc
    return DatabaseTarget("postgresql", url)


def normalize_postgres_url(url: str, *, async_: bool) -> str:
    """Pick the driver SQLAlchemy should use: ``postgresql+psycopg`` sync, ``postgresql+asyncpg`` async.

    For asyncpg the libpq-only query keys ``sslmode`` (becomes ``ssl``) and ``gssencmode``
    (dropped, asyncpg never requests GSS encryption) are translated.
    """
    parts = urlsplit(url)
    scheme = "postgresql+asyncpg" if async_ else "postgresql+psycopg"
    query = parts.query
    if async_ and query:
        items = []
        for item in query.split("&"):
            key, _, value = item.partition("=")
            if key == "gssencmode":
                continue
            items.append(f"ssl={value}" if key == "sslmode" else item)
        query = "&".join(items)
    return urlunsplit((scheme, parts.netloc, parts.path, query, parts.fragment))


# ------------------------------------------------------------------------------ exposure


def is_loopback(host: str) -> bool:
    """Whether the server would listen on loopback only (the same rule as bridge-js)."""
    return host in ("localhost", "::1") or host.startswith("127.")


def check_exposure(host: str, allow_remote: bool, *, setting: str = "HIVE_BRIDGE_HOST") -> None:
    """Refuse a non-loopback listen address unless remote access was asked for explicitly."""
    if allow_remote or is_loopback(host):
        return
    raise ConfigError(
        setting=setting,
        value=host,
        problem=(
            "it is not a loopback address, so the database would be reachable from other "
            "machines, and HIVE_BRIDGE_ALLOW_REMOTE is not set"
        ),
        example="HIVE_BRIDGE_HOST=127.0.0.1",
        fix=(
            "listen on 127.0.0.1 (unset HIVE_BRIDGE_HOST), or set HIVE_BRIDGE_ALLOW_REMOTE=1 if you "
            "really mean to expose it (clients then need the password in <data dir>.bridge/password)"
        ),
    )


# -------------------------------------------------------------------------------- settings

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
SOCKET_OFF = frozenset({"off", "none", "no", "0", "false"})


def _bool_setting(env: Mapping[str, str], name: str) -> bool:
    raw = _get(env, name)
    if raw is None:
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(
        setting=name,
        value=raw,
        problem="not a yes/no value (use 1, true, yes, on or 0, false, no, off)",
        example=f"{name}=1",
    )


def _number_setting(
    env: Mapping[str, str],
    name: str,
    *,
    minimum: float,
    example: str,
    integer: bool = False,
    positive: bool = False,
) -> float | None:
    """A number >= ``minimum`` (> 0 with ``positive``), or ``None`` when unset."""
    raw = _get(env, name)
    if raw is None:
        return None
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum or (positive and not value > 0) or value == float("inf"):
        kind = "a whole number" if integer else "a number"
        bound = f"> {minimum:g}" if positive else f">= {minimum:g}"
        raise ConfigError(
            setting=name,
            value=raw,
            problem=f"not {kind} {bound}",
            example=f"{name}={example}",
        )
    return value


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _path_setting(env: Mapping[str, str], name: str, base: Path) -> Path | None:
    value = _get(env, name)
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _environment(environ: Mapping[str, str] | None, base: Path, dotenv: bool) -> dict[str, str]:
    env: dict[str, str] = _read_dotenv(base) if dotenv else {}
    env.update(os.environ if environ is None else environ)
    return env


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    dotenv: bool = True,
) -> Settings:
    """Read every ``HIVE_*`` setting; ``environ`` defaults to ``os.environ`` over ``<cwd>/.env``."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    env = _environment(environ, base, dotenv)
    return Settings(database=_database_target(env, base), bridge=_bridge_settings(env, base))


def load_bridge_settings(
    environ: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    dotenv: bool = True,
) -> BridgeSettings:
    """Only the ``HIVE_BRIDGE_*``/``HIVE_LOG_LEVEL`` settings (``HIVE_DATABASE_*`` is not read)."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    return _bridge_settings(_environment(environ, base, dotenv), base)


def _database_target(env: Mapping[str, str], base: Path) -> DatabaseTarget:
    backend_raw = _get(env, "HIVE_DATABASE_BACKEND")
    backend: Backend | None = None
    if backend_raw is not None:
        lowered = backend_raw.lower()
        if lowered == "postgres":
            lowered = "postgresql"
        if lowered not in BACKENDS:
            raise ConfigError(
                setting="HIVE_DATABASE_BACKEND",
                value=backend_raw,
                problem=f"unknown backend; choose one of {', '.join(BACKENDS)}",
                example="HIVE_DATABASE_BACKEND=pglite",
            )
        backend = lowered

    url = _get(env, "HIVE_DATABASE_URL")
    if url is None:
        if backend == "postgresql":
            raise ConfigError(
                setting="HIVE_DATABASE_URL",
                value=None,
                problem="HIVE_DATABASE_BACKEND=postgresql needs the server's URL",
                example=f"HIVE_DATABASE_URL={EXAMPLE_URLS['postgresql']}",
            )
        url = DEFAULT_SQLITE_URL if backend == "sqlite" else DEFAULT_PGLITE_URL
    target = parse_database_url(url, cwd=base)
    if backend is not None and target.backend != backend:
        raise ConfigError(
            setting="HIVE_DATABASE_URL",
            value=mask_url(url),
            problem=(
                f"it is a {target.backend} URL but HIVE_DATABASE_BACKEND={backend}; "
                f"the two must agree"
            ),
            example=f"HIVE_DATABASE_URL={EXAMPLE_URLS[backend]}",
        )
    return target


def _bridge_settings(env: Mapping[str, str], base: Path) -> BridgeSettings:
    level_raw = _get(env, "HIVE_LOG_LEVEL") or "INFO"
    level = level_raw.upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(
            setting="HIVE_LOG_LEVEL",
            value=level_raw,
            problem=f"unknown level; choose one of {', '.join(LOG_LEVELS)}",
            example="HIVE_LOG_LEVEL=DEBUG",
        )

    port_raw = _get(env, "HIVE_BRIDGE_PORT") or "0"
    try:
        port = int(port_raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(
            setting="HIVE_BRIDGE_PORT",
            value=port_raw,
            problem="not a TCP port number (0-65535; 0 lets the OS pick a free port)",
            example="HIVE_BRIDGE_PORT=0",
        )

    host = _get(env, "HIVE_BRIDGE_HOST") or "127.0.0.1"
    allow_remote = _bool_setting(env, "HIVE_BRIDGE_ALLOW_REMOTE")
    check_exposure(host, allow_remote)

    socket_raw = _get(env, "HIVE_BRIDGE_SOCKET_DIR")
    unix_socket = socket_raw is None or socket_raw.lower() not in SOCKET_OFF

    def number(name: str, example: str, **kw: bool) -> float | None:
        return _number_setting(env, name, minimum=0, example=example, **kw)

    failures = number("HIVE_BRIDGE_HEALTH_FAILURES", "3", integer=True, positive=True)
    threshold = number("HIVE_BRIDGE_VACUUM_THRESHOLD", "50", integer=True)

    return BridgeSettings(
        log_level=level,
        node=_get(env, "HIVE_BRIDGE_NODE"),
        js_dir=_path_setting(env, "HIVE_BRIDGE_JS_DIR", base),
        run_dir=_path_setting(env, "HIVE_BRIDGE_RUN_DIR", base),
        port=port,
        host=host,
        allow_remote=allow_remote,
        socket_dir=_path_setting(env, "HIVE_BRIDGE_SOCKET_DIR", base) if unix_socket else None,
        unix_socket=unix_socket,
        cache_dir=_path_setting(env, "HIVE_BRIDGE_CACHE_DIR", base),
        health_interval=number("HIVE_BRIDGE_HEALTH_INTERVAL", "2", positive=True),
        health_timeout=number("HIVE_BRIDGE_HEALTH_TIMEOUT", "5", positive=True),
        health_failures=None if failures is None else int(failures),
        vacuum_interval=number("HIVE_BRIDGE_VACUUM_INTERVAL", "10"),
        vacuum_threshold=None if threshold is None else int(threshold),
        vacuum_scale_factor=number("HIVE_BRIDGE_VACUUM_SCALE_FACTOR", "0.2"),
    )
