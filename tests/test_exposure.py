"""Exposure and authentication: loopback unless remote access is asked for, a private Unix socket
without password, a 0600 password file, no secrets on the admin endpoint."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from helpers import node_pids_for, run_cli

from hive_bridge import Bridge, ConfigError
from hive_bridge.config import load_bridge_settings
from hive_bridge.paths import MAX_DEFAULT_SOCKET_PATH, run_paths_for, socket_dir_for

StartBridge = Callable[..., Bridge]


def scalar(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


@pytest.fixture
def short_base() -> Iterator[Path]:
    """A directory with a short path (pytest's tmp paths can be too long for a Unix socket)."""
    base = Path(tempfile.mkdtemp(prefix="hb-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------ listen address


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_non_loopback_host_needs_allow_remote(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_bridge_settings({"HIVE_BRIDGE_HOST": host}, dotenv=False)
    message = str(info.value)
    assert f"HIVE_BRIDGE_HOST = {host!r}" in message
    assert "HIVE_BRIDGE_ALLOW_REMOTE=1" in message
    settings = load_bridge_settings(
        {"HIVE_BRIDGE_HOST": host, "HIVE_BRIDGE_ALLOW_REMOTE": "1"}, dotenv=False
    )
    assert (settings.host, settings.allow_remote) == (host, True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_nothing(host: str) -> None:
    assert load_bridge_settings({"HIVE_BRIDGE_HOST": host}, dotenv=False).host == host


def test_allow_remote_must_be_yes_or_no() -> None:
    with pytest.raises(ConfigError, match=r"HIVE_BRIDGE_ALLOW_REMOTE = 'maybe': not a yes/no"):
        load_bridge_settings({"HIVE_BRIDGE_ALLOW_REMOTE": "maybe"}, dotenv=False)


def test_non_loopback_host_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"host = '0\.0\.0\.0'"):
        Bridge(tmp_path / "db", host="0.0.0.0")
    result = run_cli("start", "--data-dir", str(tmp_path / "db"), "--host", "0.0.0.0")
    assert result.returncode == 1
    assert "--host = '0.0.0.0': it is not a loopback address" in result.stderr
    assert "HIVE_BRIDGE_ALLOW_REMOTE=1" in result.stderr
    assert not (tmp_path / "db.bridge").exists()  # nothing was created, nothing spawned


def test_allow_remote_listens_everywhere_with_the_password(
    fresh_data_dir: Path, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fresh_data_dir, host="0.0.0.0", allow_remote=True)
    (pid,) = node_pids_for(fresh_data_dir)
    cmdline = psutil.Process(pid).cmdline()
    assert "--allow-remote" in cmdline
    assert cmdline[cmdline.index("--host") + 1] == "0.0.0.0"
    assert "@127.0.0.1:" in bridge.dsn
    assert scalar(bridge.dsn, "SELECT 1") == 1
    without_password = bridge.dsn.replace(f":{bridge.password}@", "@")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(without_password, connect_timeout=5)


# ---------------------------------------------------------------------------- Unix socket


def test_unix_socket_in_the_run_dir_needs_no_password(
    short_base: Path, start_bridge: StartBridge
) -> None:
    data_dir = short_base / "app.db"
    bridge = start_bridge(data_dir)
    socket_dir = data_dir.parent / "app.db.bridge" / "sock"
    assert bridge.socket_dir == str(socket_dir)
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    assert bridge.unix_dsn == (
        f"postgresql://postgres@/postgres?host={socket_dir}&port={bridge.port}"
    )
    assert "password" not in bridge.unix_dsn and (bridge.password or "") not in bridge.unix_dsn
    assert scalar(bridge.unix_dsn, "SELECT current_user") == "postgres"
    assert bridge.status()["socket_dir"] == str(socket_dir)


def test_a_long_path_puts_the_socket_under_tmp(
    tmp_path: Path, start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    data_dir = tmp_path / ("deep-" * 20) / "app.db"
    bridge = start_bridge(data_dir)
    socket_dir = Path(bridge.socket_dir or "")
    assert socket_dir.parent == Path(f"/tmp/hive-bridge-{os.getuid()}")  # noqa: S108
    assert len(os.fsencode(socket_dir / ".s.PGSQL.65535")) <= MAX_DEFAULT_SOCKET_PATH
    for directory in (socket_dir, socket_dir.parent):
        info = directory.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, os.getuid())
    assert scalar(bridge.unix_dsn, "SELECT 2") == 2


def test_a_long_path_prefers_xdg_runtime_dir(
    tmp_path: Path, short_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = short_base / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    paths = run_paths_for(tmp_path / ("deep-" * 20) / "app.db", create=False)
    assert socket_dir_for(paths).parent == runtime / "hive-bridge"
    short = run_paths_for(short_base / "app.db", create=False)
    assert socket_dir_for(short) == short.run_dir / "sock"


def test_configured_socket_dir(
    short_base: Path, fresh_data_dir: Path, start_bridge: StartBridge
) -> None:
    chosen = short_base / "sockets"
    bridge = start_bridge(fresh_data_dir, socket_dir=chosen)
    assert bridge.socket_dir == str(chosen)
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o700
    assert (chosen / f".s.PGSQL.{bridge.port}").is_socket()
    assert scalar(bridge.unix_dsn, "SELECT 3") == 3


def test_configured_socket_dir_must_be_private(short_base: Path, tmp_path: Path) -> None:
    shared = short_base / "open"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ConfigError) as info:
        Bridge(tmp_path / "db", socket_dir=shared).start()
    assert f"chmod 700 {shared}" in str(info.value)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # a directory the user chose is not touched
    too_long = short_base / ("x" * 100)
    with pytest.raises(ConfigError, match="too long for a Unix socket"):
        Bridge(tmp_path / "db", socket_dir=too_long).start()


def test_socket_can_be_turned_off(
    fresh_data_dir: Path, start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIVE_BRIDGE_SOCKET_DIR", "off")
    bridge = start_bridge(fresh_data_dir)
    (pid,) = node_pids_for(fresh_data_dir)
    assert "--socket-dir" not in psutil.Process(pid).cmdline()
    assert bridge.socket_dir is None
    with pytest.raises(ConfigError, match="without a Unix socket"):
        _ = bridge.unix_dsn
    result = run_cli("url", "--unix", "--data-dir", str(fresh_data_dir))
    assert result.returncode == 1
    assert "without a Unix socket" in result.stderr


def test_url_unix_from_the_cli(short_base: Path, start_bridge: StartBridge) -> None:
    bridge = start_bridge(short_base / "app.db")
    result = run_cli("url", "--unix", "--data-dir", str(short_base / "app.db"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == bridge.unix_dsn
    psql = subprocess.run(
        ["psql", result.stdout.strip(), "-X", "-A", "-t", "-c", "SELECT 'over the socket'"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
    )
    assert psql.stdout.strip() == "over the socket", psql.stderr


# ------------------------------------------------------------------------- secrets at rest


def test_password_file_is_private_and_admin_endpoint_has_no_secrets(
    short_base: Path, start_bridge: StartBridge
) -> None:
    data_dir = short_base / "app.db"
    bridge = start_bridge(data_dir)
    run_dir = short_base / "app.db.bridge"
    password_file = run_dir / "password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert password_file.read_text().strip() == bridge.password

    admin_port = bridge.status()["admin_port"]
    assert admin_port
    password = bridge.password or ""
    with httpx.Client(timeout=5, trust_env=False) as client:
        stats = client.get(f"http://127.0.0.1:{admin_port}/stats")
        assert stats.status_code == 200
        assert stats.json()["data_dir"] == str(data_dir)
        for path in ("/stats", "/health", "/metrics"):
            assert password not in client.get(f"http://127.0.0.1:{admin_port}{path}").text
        # the one endpoint that acts needs the password
        refused = client.post(
            f"http://127.0.0.1:{admin_port}/backup", json={"path": str(short_base / "x")}
        )
        assert refused.status_code == 401
    assert password not in (run_dir / "state.json").read_text()
