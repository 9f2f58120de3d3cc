"""pytest fixtures: one hive-bridge server per test session (per xdist worker), a clean database per test.

Registered as the ``hive_bridge`` pytest11 entry point. Until a test asks for one of its fixtures it
only adds its options: no server, no Node, no SQLAlchemy import.

Fixtures:

- ``hive_bridge_server`` (session): the running :class:`~hive_bridge.Bridge`.
- ``hive_bridge_database`` (function): a clean database for this test, :class:`HiveBridgeDatabase`
  (``dsn``, ``asyncpg_dsn``, ``sqlalchemy_url``, ``async_sqlalchemy_url``, ``server_settings``).
- ``hive_bridge_dsn`` (function): its libpq/psycopg DSN.
- ``hive_bridge_engine`` / ``hive_bridge_async_engine`` (function): SQLAlchemy engines on it,
  disposed after the test.

Isolation (``--hive-bridge-isolation`` / ``hive_bridge_isolation``):

- ``schema`` (default): each test gets a new schema, first on its connections' ``search_path``,
  dropped (CASCADE) after the test. Milliseconds per test; what a test creates without naming a
  schema is gone afterwards, but objects it puts elsewhere (``public.x``, other schemas, roles) stay.
- ``datadir``: each test gets its own server on a copy of a data dir prepared once for the session
  (with ``hive_bridge_load`` applied). Complete isolation, at the cost of a server start per test.
"""

from __future__ import annotations

import importlib
import itertools
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .bridge import Bridge

ISOLATIONS = ("schema", "datadir")

#: (option name, help, ini type, default): each is a CLI flag ``--hive-bridge-NAME`` and an ini key
#: ``hive_bridge_NAME``; the flag wins
_OPTIONS: tuple[tuple[str, str, str | None, Any], ...] = (
    (
        "data_dir",
        "directory for the session's data dirs (one per xdist worker); default: pytest's basetemp",
        None,
        None,
    ),
    (
        "extensions",
        "extensions the server offers, comma-separated; default: all that PGlite ships",
        None,
        "all",
    ),
    (
        "isolation",
        "how each test gets a clean database: schema (a new schema per test, fast) or datadir "
        "(a server on a fresh copy of the data dir per test, complete)",
        None,
        "schema",
    ),
    (
        "load",
        "SQL files or module:function callables (called with a DSN) that set up every clean "
        "database; repeat the flag, or one per line in the ini",
        "linelist",
        [],
    ),
    ("start_timeout", "seconds a server may take to start (default 60)", None, "60"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hive-bridge", "hive-bridge PostgreSQL (PGlite) fixtures")
    for name, help_text, ini_type, default in _OPTIONS:
        flag = "--hive-bridge-" + name.replace("_", "-")
        if ini_type == "linelist":
            group.addoption(flag, action="append", dest=f"hive_bridge_{name}", help=help_text)
            parser.addini(f"hive_bridge_{name}", help_text, type="linelist", default=default)
        else:
            group.addoption(flag, dest=f"hive_bridge_{name}", help=help_text)
            parser.addini(f"hive_bridge_{name}", help_text, default=default)


def pytest_configure(config: pytest.Config) -> None:
    """Refuse bad option values at once (a UsageError), not when the first fixture runs."""
    PluginSettings.from_config(config)


@dataclass(frozen=True)
class PluginSettings:
    data_dir: Path | None
    extensions: tuple[str, ...]
    isolation: str
    load: tuple[str, ...]
    start_timeout: float

    @classmethod
    def from_config(cls, config: pytest.Config) -> PluginSettings:
        def get(name: str) -> Any:
            value = config.getoption(f"hive_bridge_{name}")
            return value if value is not None else config.getini(f"hive_bridge_{name}")

        isolation = str(get("isolation")).strip()
        if isolation not in ISOLATIONS:
            raise pytest.UsageError(
                f"hive_bridge_isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r} "
                "(e.g. --hive-bridge-isolation schema)"
            )
        raw_timeout = str(get("start_timeout"))
        try:
            timeout = float(raw_timeout)
        except ValueError:
            raise pytest.UsageError(
                f"hive_bridge_start_timeout must be a number of seconds, got {raw_timeout!r} "
                "(e.g. --hive-bridge-start-timeout 120)"
            ) from None
        data_dir = get("data_dir")
        extensions = tuple(e.strip() for e in str(get("extensions")).split(",") if e.strip())
        return cls(
            data_dir=Path(data_dir).expanduser().absolute() if data_dir else None,
            extensions=extensions,
            isolation=isolation,
            load=tuple(str(x) for x in get("load") or ()),
            start_timeout=timeout,
        )


@dataclass(frozen=True)
class HiveBridgeDatabase:
    """A clean database for one test: connection strings that all land in it."""

    bridge: Bridge
    #: the test's schema (first on ``search_path``), or None with ``datadir`` isolation
    schema: str | None
    #: PostgreSQL settings every connection needs (asyncpg: ``server_settings``)
    server_settings: dict[str, str] = field(default_factory=dict)

    def _libpq_options(self) -> str:
        opts = " ".join(f"-c {k}={v}" for k, v in self.server_settings.items())
        return f"&options={quote(opts)}" if opts else ""

    @property
    def dsn(self) -> str:
        """libpq/psycopg DSN (``options=-c search_path=…`` included)."""
        return self.bridge.dsn + self._libpq_options()

    @property
    def asyncpg_dsn(self) -> str:
        """asyncpg DSN (asyncpg takes unknown query parameters as server settings)."""
        extra = "".join(f"&{k}={quote(v)}" for k, v in self.server_settings.items())
        return self.bridge.asyncpg_dsn + extra

    @property
    def sqlalchemy_url(self) -> str:
        """``postgresql+psycopg://`` URL (psycopg takes ``options`` from the query)."""
        return self.bridge.sqlalchemy_url + self._libpq_options()

    @property
    def async_sqlalchemy_url(self) -> str:
        """``postgresql+asyncpg://`` URL; it cannot carry settings: also pass
        ``connect_args={"server_settings": db.server_settings}`` (``hive_bridge_async_engine`` does)."""
        return self.bridge.async_sqlalchemy_url


def _bridge(data_dir: Path, settings: PluginSettings) -> Bridge:
    from .bridge import Bridge
    from .policy import SupervisorOptions

    options = SupervisorOptions(start_timeout=settings.start_timeout)
    # attach=False: a server of this data dir that another process runs is not ours to share
    return Bridge(data_dir, extensions=settings.extensions, options=options, attach=False)


def _run_load(dsn: str, entries: tuple[str, ...], rootdir: Path) -> None:
    """Apply the ``hive_bridge_load`` entries, in order, through ``dsn``."""
    if not entries:
        return
    import psycopg

    for entry in entries:
        path = Path(entry) if Path(entry).is_absolute() else rootdir / entry
        if entry.endswith(".sql") or path.is_file():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(path.read_text(encoding="utf-8").encode())
            continue
        module, _, attr = entry.partition(":")
        if not attr:
            raise pytest.UsageError(
                f"hive_bridge_load entry {entry!r} is neither an existing .sql file nor "
                "module:function (e.g. myapp.testing:create_schema)"
            )
        loader: Callable[[str], object] = getattr(importlib.import_module(module), attr)
        loader(dsn)


def _schema_sql(statement: LiteralString, schema: str) -> sql.Composed:
    from psycopg import sql

    return sql.SQL(statement).format(sql.Identifier(schema))


def _worker_dir(base: Path, config: pytest.Config) -> Path:
    """One directory per xdist worker (``gw0``, …), or ``main`` without xdist.

    Asked of this session's config, not the environment: a pytest run started from inside an xdist
    worker (pytester, a subprocess) inherits PYTEST_XDIST_WORKER without being a worker itself.
    """
    workerinput = getattr(config, "workerinput", None)
    worker = workerinput.get("workerid", "main") if isinstance(workerinput, dict) else "main"
    return base / str(worker)


class _SessionState:
    """What the session fixtures share: settings, the server, its admin connection."""

    def __init__(self, settings: PluginSettings, root: Path, rootdir: Path) -> None:
        self.settings = settings
        self.root = root
        self.rootdir = rootdir
        self.counter = itertools.count(1)
        self.template: Path | None = None
        self._admin: psycopg.Connection[Any] | None = None

    def admin(self, bridge: Bridge) -> psycopg.Connection[Any]:
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(bridge.dsn, autocommit=True)
        return self._admin

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()


@pytest.fixture(scope="session")
def _hive_bridge_state(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_SessionState]:
    settings = PluginSettings.from_config(request.config)
    base = settings.data_dir or tmp_path_factory.getbasetemp() / "hive-bridge"
    root = _worker_dir(base, request.config)
    root.mkdir(parents=True, exist_ok=True)
    state = _SessionState(settings, root, request.config.rootpath)
    yield state
    state.close()


@pytest.fixture(scope="session")
def hive_bridge_server(_hive_bridge_state: _SessionState) -> Iterator[Bridge]:
    """The session's server (one per xdist worker), on ``<data dir>/<worker>/db``."""
    state = _hive_bridge_state
    bridge = _bridge(state.root / "db", state.settings).start()
    try:
        if state.settings.isolation == "schema":
            # schemas a killed earlier session left behind
            admin = state.admin(bridge)
            rows = admin.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hb\\_test\\_%'"
            ).fetchall()
            for (name,) in rows:
                admin.execute(_schema_sql("DROP SCHEMA {} CASCADE", name))
        yield bridge
    finally:
        state.close()
        bridge.stop()


def _template(state: _SessionState) -> Path:
    """``datadir`` isolation: a data dir made (and loaded) once, copied for every test."""
    if state.template is None:
        template = state.root / "template"
        if template.exists():
            shutil.rmtree(template)  # from an earlier session: its load may have changed
        with _bridge(template, state.settings) as bridge:
            _run_load(bridge.dsn, state.settings.load, state.rootdir)
        state.template = template
    return state.template


@pytest.fixture
def hive_bridge_database(
    request: pytest.FixtureRequest, _hive_bridge_state: _SessionState
) -> Iterator[HiveBridgeDatabase]:
    """A clean database for this test (see the module docstring for the isolation modes)."""
    state = _hive_bridge_state
    if state.settings.isolation == "datadir":
        data_dir = state.root / f"test-{next(state.counter)}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(_template(state), data_dir, symlinks=True)
        try:
            with _bridge(data_dir, state.settings) as own:
                yield HiveBridgeDatabase(bridge=own, schema=None)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(Path(f"{data_dir}.bridge"), ignore_errors=True)
        return
    bridge: Bridge = request.getfixturevalue("hive_bridge_server")
    schema = f"hb_test_{next(state.counter)}_{uuid.uuid4().hex[:8]}"
    admin = state.admin(bridge)
    admin.execute(_schema_sql("CREATE SCHEMA {}", schema))
    db = HiveBridgeDatabase(
        bridge=bridge, schema=schema, server_settings={"search_path": f"{schema},public"}
    )
    try:
        _run_load(db.dsn, state.settings.load, state.rootdir)
        yield db
    finally:
        admin.execute(_schema_sql("DROP SCHEMA {} CASCADE", schema))


@pytest.fixture
def hive_bridge_dsn(hive_bridge_database: HiveBridgeDatabase) -> str:
    """libpq/psycopg DSN of this test's clean database."""
    return hive_bridge_database.dsn


@pytest.fixture
def hive_bridge_engine(hive_bridge_database: HiveBridgeDatabase) -> Iterator[Engine]:
    """A SQLAlchemy engine (psycopg) on this test's clean database, disposed after the test."""
    from sqlalchemy import create_engine

    engine = create_engine(hive_bridge_database.sqlalchemy_url)
    yield engine
    engine.dispose()


@pytest.fixture
def hive_bridge_async_engine(hive_bridge_database: HiveBridgeDatabase) -> Iterator[AsyncEngine]:
    """An asyncio SQLAlchemy engine (asyncpg) on this test's clean database.

    It uses NullPool: asyncpg connections belong to the event loop that opened them, and a pool kept
    across tests would outlive the loop of each test (pytest-asyncio, anyio).
    """
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(
        hive_bridge_database.async_sqlalchemy_url,
        poolclass=NullPool,
        connect_args={"server_settings": hive_bridge_database.server_settings},
    )
    yield engine
    engine.sync_engine.dispose()
