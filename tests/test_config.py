"""HIVE_* settings and URL parsing: every accepted form and every bad case."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_bridge.config import (
    DEFAULT_PGLITE_URL,
    load_bridge_settings,
    load_settings,
    mask_url,
    normalize_postgres_url,
    parse_database_url,
    parse_dotenv,
)
from hive_bridge.errors import ConfigError

CWD = Path("/srv/app")


@pytest.mark.parametrize(
    ("url", "backend", "data_dir", "memory"),
    [
        ("pglite://./data/automagik_hive.db", "pglite", "/srv/app/data/automagik_hive.db", False),
        ("pglite://data/x.db", "pglite", "/srv/app/data/x.db", False),
        ("pglite://../shared/x.db", "pglite", "/srv/shared/x.db", False),
        ("pglite:///var/lib/hive/db", "pglite", "/var/lib/hive/db", False),
        ("pglite://memory", "pglite", None, True),
        ("pglite://:memory:", "pglite", None, True),
        ("sqlite:///./data/x.db", "sqlite", None, False),
        ("sqlite:////abs/x.db", "sqlite", None, False),
        ("sqlite:///:memory:", "sqlite", None, False),
        ("sqlite+aiosqlite:///./x.db", "sqlite", None, False),
        (
            "postgresql+psycopg://u:pw@db.example:5432/hive?sslmode=require",
            "postgresql",
            None,
            False,
        ),
        ("postgresql://u:pw@localhost/hive", "postgresql", None, False),
        ("postgres://u@localhost:5433/hive", "postgresql", None, False),
        ("postgresql+asyncpg://u:pw@localhost/hive", "postgresql", None, False),
    ],
)
def test_valid_urls(url: str, backend: str, data_dir: str | None, memory: bool) -> None:
    target = parse_database_url(url, cwd=CWD)
    assert target.backend == backend
    assert target.url == url
    assert target.memory is memory
    assert (str(target.data_dir) if target.data_dir else None) == data_dir


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("./data/x.db", "not a URL"),
        ("mysql://u:pw@h/db", "unknown scheme 'mysql'"),
        ("pglite://", "path is empty"),
        ("pglite://./x.db?mode=rw", "no ?query"),
        ("pglite://.", "names no data directory"),
        ("sqlite://", "three slashes"),
        ("sqlite:///", "path is empty"),
        ("sqlite://relative.db", "three slashes"),
        ("postgresql://u:hunter2@localhost:5432", "database name is missing"),
        ("postgresql://u:hunter2@localhost:5432/", "database name is missing"),
        ("postgresql://u:hunter2@localhost:port/db", "port is not a number"),
    ],
)
def test_bad_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_database_url(url, cwd=CWD)
    message = str(info.value)
    assert "HIVE_DATABASE_URL" in message
    assert problem in message
    assert "hunter2" not in message  # password masked
    assert "Fix:" in message and "HIVE_DATABASE_URL=" in message  # a correct example
    assert isinstance(info.value, ValueError)


def env(**values: str) -> dict[str, str]:
    return {f"HIVE_{k}": v for k, v in values.items()}


def test_defaults_to_pglite_in_working_directory(tmp_path: Path) -> None:
    settings = load_settings({}, cwd=tmp_path, dotenv=False)
    assert settings.database.backend == "pglite"
    assert settings.database.url == DEFAULT_PGLITE_URL
    assert settings.database.data_dir == tmp_path / "data" / "automagik_hive.db"
    assert settings.log_level == "INFO"
    assert settings.bridge.port == 0
    assert settings.bridge.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("values", "backend", "url"),
    [
        ({"DATABASE_BACKEND": "sqlite"}, "sqlite", "sqlite:///./data/automagik_hive.db"),
        ({"DATABASE_BACKEND": "PGLITE"}, "pglite", DEFAULT_PGLITE_URL),
        ({"DATABASE_URL": "sqlite:///./x.db"}, "sqlite", "sqlite:///./x.db"),
        ({"DATABASE_URL": "postgres://u@h/db"}, "postgresql", "postgres://u@h/db"),
        (
            {"DATABASE_BACKEND": "postgres", "DATABASE_URL": "postgresql://u@h/db"},
            "postgresql",
            "postgresql://u@h/db",
        ),
    ],
)
def test_backend_inference(values: dict[str, str], backend: str, url: str, tmp_path: Path) -> None:
    settings = load_settings(env(**values), cwd=tmp_path, dotenv=False)
    assert settings.database.backend == backend
    assert settings.database.url == url


@pytest.mark.parametrize(
    ("values", "variable", "text"),
    [
        ({"DATABASE_BACKEND": "mysql"}, "HIVE_DATABASE_BACKEND", "choose one of pglite, sqlite"),
        ({"DATABASE_BACKEND": "postgresql"}, "HIVE_DATABASE_URL", "needs the server's URL"),
        (
            {"DATABASE_BACKEND": "sqlite", "DATABASE_URL": "pglite://./x.db"},
            "HIVE_DATABASE_URL",
            "it is a pglite URL but HIVE_DATABASE_BACKEND=sqlite",
        ),
        (
            {"DATABASE_BACKEND": "pglite", "DATABASE_URL": "postgresql://u:s3cret@h/db"},
            "HIVE_DATABASE_URL",
            "it is a postgresql URL but HIVE_DATABASE_BACKEND=pglite",
        ),
        ({"LOG_LEVEL": "verbose"}, "HIVE_LOG_LEVEL", "choose one of DEBUG, INFO"),
        ({"BRIDGE_PORT": "http"}, "HIVE_BRIDGE_PORT", "not a TCP port number"),
        ({"BRIDGE_PORT": "70000"}, "HIVE_BRIDGE_PORT", "not a TCP port number"),
        ({"BRIDGE_PORT": "-1"}, "HIVE_BRIDGE_PORT", "not a TCP port number"),
        ({"BRIDGE_HEALTH_INTERVAL": "0"}, "HIVE_BRIDGE_HEALTH_INTERVAL", "not a number > 0"),
        ({"BRIDGE_HEALTH_TIMEOUT": "soon"}, "HIVE_BRIDGE_HEALTH_TIMEOUT", "not a number > 0"),
        ({"BRIDGE_HEALTH_FAILURES": "1.5"}, "HIVE_BRIDGE_HEALTH_FAILURES", "a whole number > 0"),
        ({"BRIDGE_VACUUM_INTERVAL": "-1"}, "HIVE_BRIDGE_VACUUM_INTERVAL", "not a number >= 0"),
        ({"BRIDGE_VACUUM_SCALE_FACTOR": "nan"}, "HIVE_BRIDGE_VACUUM_SCALE_FACTOR", ">= 0"),
    ],
)
def test_bad_settings(values: dict[str, str], variable: str, text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(**values), cwd=tmp_path, dotenv=False)
    message = str(info.value)
    assert info.value.setting == variable
    assert message.startswith(f"hive-bridge: {variable}")
    assert text in message
    assert "s3cret" not in message
    assert "Fix:" in message


def test_contradiction_example_matches_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            env(DATABASE_BACKEND="sqlite", DATABASE_URL="pglite://./x.db"),
            cwd=tmp_path,
            dotenv=False,
        )
    assert "HIVE_DATABASE_URL=sqlite:///./data/automagik_hive.db" in str(info.value)


def test_bridge_settings(tmp_path: Path) -> None:
    settings = load_bridge_settings(
        env(
            LOG_LEVEL="debug",
            BRIDGE_NODE="/opt/node/bin/node",
            BRIDGE_JS_DIR="vendor/bridge-js",
            BRIDGE_RUN_DIR="/run/hive",
            BRIDGE_PORT="55432",
            BRIDGE_HOST="127.0.0.2",
        ),
        cwd=tmp_path,
        dotenv=False,
    )
    assert settings.log_level == "DEBUG"
    assert settings.node == "/opt/node/bin/node"
    assert settings.js_dir == tmp_path / "vendor" / "bridge-js"
    assert settings.run_dir == Path("/run/hive")
    assert settings.port == 55432
    assert settings.host == "127.0.0.2"


def test_watchdog_and_vacuum_settings_reach_the_supervisor(tmp_path: Path) -> None:
    from hive_bridge import SupervisorOptions

    defaults = SupervisorOptions.from_settings(load_bridge_settings({}, dotenv=False))
    assert defaults == SupervisorOptions()
    settings = load_bridge_settings(
        env(
            BRIDGE_HEALTH_INTERVAL="0.5",
            BRIDGE_HEALTH_TIMEOUT="10",
            BRIDGE_HEALTH_FAILURES="4",
            BRIDGE_VACUUM_INTERVAL="0",
            BRIDGE_VACUUM_THRESHOLD="1000",
            BRIDGE_VACUUM_SCALE_FACTOR="0.05",
        ),
        cwd=tmp_path,
        dotenv=False,
    )
    options = SupervisorOptions.from_settings(settings)
    assert (options.health_interval, options.health_timeout, options.health_failures) == (
        0.5,
        10.0,
        4,
    )
    assert (options.vacuum_interval, options.vacuum_threshold) == (0.0, 1000)
    assert options.vacuum_scale_factor == 0.05
    assert options.startsecs == defaults.startsecs  # the rest keeps its defaults


def test_bridge_settings_ignore_database_variables(tmp_path: Path) -> None:
    # a Bridge(data_dir) must not fail because of an unrelated HIVE_DATABASE_URL
    settings = load_bridge_settings(env(DATABASE_URL="mysql://x/y"), cwd=tmp_path, dotenv=False)
    assert settings.port == 0


# -------------------------------------------------------------------------------------- .env


def test_dotenv_parser() -> None:
    text = """
# comment
HIVE_LOG_LEVEL=DEBUG
export HIVE_BRIDGE_PORT = 5555   # trailing comment
HIVE_DATABASE_URL="pglite://./with space.db"
SINGLE='literal \\n # kept'
DOUBLE="a\\tb \\"q\\""
URL=postgresql://u:p#w@h/db
not an assignment
1BAD=x
EMPTY=
"""
    assert parse_dotenv(text) == {
        "HIVE_LOG_LEVEL": "DEBUG",
        "HIVE_BRIDGE_PORT": "5555",
        "HIVE_DATABASE_URL": "pglite://./with space.db",
        "SINGLE": "literal \\n # kept",
        "DOUBLE": 'a\tb "q"',
        "URL": "postgresql://u:p#w@h/db",
        "EMPTY": "",
    }


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "HIVE_DATABASE_URL=sqlite:///./from-dotenv.db\nHIVE_LOG_LEVEL=DEBUG\n", encoding="utf-8"
    )
    settings = load_settings({"HIVE_LOG_LEVEL": "ERROR"}, cwd=tmp_path)
    assert settings.database.url == "sqlite:///./from-dotenv.db"
    assert settings.log_level == "ERROR"
    assert load_settings({}, cwd=tmp_path, dotenv=False).database.backend == "pglite"


def test_bad_value_in_dotenv_is_reported(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HIVE_DATABASE_BACKEND=oracle\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="HIVE_DATABASE_BACKEND = 'oracle'"):
        load_settings({}, cwd=tmp_path)


# ------------------------------------------------------------------------------ URL helpers


@pytest.mark.parametrize(
    ("url", "async_", "expected"),
    [
        ("postgresql://u:p@h:5/db", False, "postgresql+psycopg://u:p@h:5/db"),
        ("postgres://u:p@h/db", False, "postgresql+psycopg://u:p@h/db"),
        ("postgresql+asyncpg://u:p@h/db", False, "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", True, "postgresql+asyncpg://u:p@h/db"),
        (
            "postgresql://u:p@h/db?sslmode=require&gssencmode=disable&application_name=x",
            True,
            "postgresql+asyncpg://u:p@h/db?ssl=require&application_name=x",
        ),
        (
            "postgresql://u:p@h/db?sslmode=require",
            False,
            "postgresql+psycopg://u:p@h/db?sslmode=require",
        ),
    ],
)
def test_normalize_postgres_url(url: str, async_: bool, expected: str) -> None:
    assert normalize_postgres_url(url, async_=async_) == expected


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@h:5432/db", "postgresql://user:***@h:5432/db"),
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://user@h/db", "postgresql://user@h/db"),
        ("pglite://./data/x.db", "pglite://./data/x.db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_socket_and_cache_settings() -> None:
    default = load_bridge_settings({}, cwd=CWD, dotenv=False)
    assert (default.unix_socket, default.socket_dir, default.cache_dir) == (True, None, None)
    assert default.allow_remote is False
    configured = load_bridge_settings(
        {"HIVE_BRIDGE_SOCKET_DIR": "run/sock", "HIVE_BRIDGE_CACHE_DIR": "/var/cache/hb"},
        cwd=CWD,
        dotenv=False,
    )
    assert configured.socket_dir == CWD / "run" / "sock"
    assert configured.cache_dir == Path("/var/cache/hb")
    for off in ("off", "OFF", "none", "0"):
        settings = load_bridge_settings({"HIVE_BRIDGE_SOCKET_DIR": off}, cwd=CWD, dotenv=False)
        assert (settings.unix_socket, settings.socket_dir) == (False, None)
    for yes in ("1", "true", "YES", "on"):
        settings = load_bridge_settings(
            {"HIVE_BRIDGE_ALLOW_REMOTE": yes, "HIVE_BRIDGE_HOST": "0.0.0.0"}, dotenv=False
        )
        assert settings.allow_remote is True
