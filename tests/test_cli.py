"""The hive-bridge CLI as a user runs it: exit codes, output, detached and foreground servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest
from helpers import node_pids_for, pid_gone, run_cli, supervisor_pids, wait_until

from hive_bridge.statefile import BridgeState, process_create_time, write_state


def sql(dsn: str, statement: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
        return row[0] if row else None


def test_nothing_running(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "db")
    status = run_cli("status", "--data-dir", data_dir)
    assert status.returncode == 3
    assert status.stdout.strip() == f"hive-bridge: not running (data dir {data_dir})"

    as_json = run_cli("status", "--json", "--data-dir", data_dir)
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout) == {
        "state": "STOPPED",
        "data_dir": data_dir,
        "running": False,
    }

    url = run_cli("url", "--data-dir", data_dir)
    assert url.returncode == 3
    assert url.stdout == ""
    assert f"no server is running for data dir {data_dir}" in url.stderr
    assert f"hive-bridge start --data-dir {data_dir}" in url.stderr

    stop = run_cli("stop", "--data-dir", data_dir)
    assert stop.returncode == 0
    assert "not running" in stop.stderr


def test_start_status_url_stop(fresh_data_dir: Path) -> None:
    data_dir = str(fresh_data_dir)
    start = run_cli("start", "--data-dir", data_dir)
    assert start.returncode == 0, start.stderr
    dsn = start.stdout.strip()
    assert dsn.startswith("postgresql://postgres:")
    assert dsn.endswith("/postgres?sslmode=disable&gssencmode=disable")
    assert "started for" in start.stderr
    try:
        assert sql(dsn, "SELECT 40 + 2") == 42
        psql = subprocess.run(
            ["psql", dsn, "-X", "-A", "-t", "-c", "SELECT 'via psql'"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert psql.stdout.strip() == "via psql", psql.stderr

        again = run_cli("start", "--data-dir", data_dir)
        assert again.returncode == 0
        assert again.stdout.strip() == dsn
        assert "already running" in again.stderr

        status = run_cli("status", "--data-dir", data_dir)
        assert status.returncode == 0
        assert status.stdout.startswith(f"hive-bridge: RUNNING (data dir {data_dir})")
        assert "started by cli" in status.stdout

        report = json.loads(run_cli("status", "--json", "--data-dir", data_dir).stdout)
        assert report["running"] is True
        assert report["state"] == "RUNNING"
        assert report["data_dir"] == data_dir
        assert report["origin"] == "cli"
        assert f":{report['port']}/" in dsn
        assert psutil.Process(report["pid"]).name() == "hive-supervise"  # forked by the CLI
        assert node_pids_for(fresh_data_dir) == [report["node_pid"]]
        assert report["restarts"] == 0
        assert report["uptime_s"] >= 0
        assert report["rss_bytes"] > 10 * 1024 * 1024
        assert report["versions"]["pglite"] and report["versions"]["node"]
        assert report["stats"]["queries_served"] >= 1
        assert report["admin_port"] > 0

        assert run_cli("url", "--data-dir", data_dir).stdout.strip() == dsn
        sqlalchemy_url = run_cli("url", "--sqlalchemy", "--data-dir", data_dir).stdout.strip()
        assert sqlalchemy_url == dsn.replace("postgresql://", "postgresql+psycopg://")
        async_url = run_cli("url", "--async", "--data-dir", data_dir).stdout.strip()
        assert async_url == dsn.replace("postgresql://", "postgresql+asyncpg://").replace(
            "?sslmode=disable&gssencmode=disable", "?ssl=disable"
        )
    finally:
        stop = run_cli("stop", "--data-dir", data_dir)
    assert stop.returncode == 0
    assert "stopped" in stop.stderr
    assert pid_gone(report["pid"])
    assert pid_gone(report["node_pid"])
    assert run_cli("status", "--data-dir", data_dir).returncode == 3
    assert run_cli("stop", "--data-dir", data_dir).returncode == 0  # idempotent

    # a data dir keeps its address: the DSN saved from the first start works after the next one
    assert (fresh_data_dir.parent / "hive.db.bridge" / "port").read_text().strip() == str(
        report["port"]
    )
    restart = run_cli("start", "--data-dir", data_dir)
    try:
        assert restart.returncode == 0, restart.stderr
        assert restart.stdout.strip() == dsn
        assert sql(dsn, "SELECT 43") == 43
    finally:
        assert run_cli("stop", "--data-dir", data_dir).returncode == 0


def test_data_dir_defaults_to_hive_database_url(fresh_data_dir: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    env = {**os.environ, "HIVE_DATABASE_URL": f"pglite://{fresh_data_dir}"}
    start = run_cli("start", env=env, cwd=app)
    assert start.returncode == 0, start.stderr
    try:
        status = run_cli("status", env=env, cwd=app)
        assert f"data dir {fresh_data_dir}" in status.stdout
    finally:
        assert run_cli("stop", env=env, cwd=app).returncode == 0


def test_stale_state_file_is_cleaned(tmp_path: Path) -> None:
    run_dir = tmp_path / "db.bridge"
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = process_create_time(dead.pid)
    dead.wait()
    write_state(
        run_dir / "state.json",
        BridgeState(
            supervisor_pid=dead.pid,
            supervisor_create_time=create_time or 0.0,
            state="RUNNING",
            data_dir=str(tmp_path / "db"),
            host="127.0.0.1",
            port=1,
            origin="cli",
        ),
    )
    status = run_cli("status", "--data-dir", str(tmp_path / "db"))
    assert status.returncode == 3
    assert "not running" in status.stdout
    assert not (run_dir / "state.json").exists()


def test_foreground_prints_dsn_and_stops_on_signal(fresh_data_dir: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hive_bridge",
                "start",
                "--foreground",
                "--data-dir",
                str(fresh_data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            dsn = proc.stdout.readline().strip()
            assert dsn.startswith("postgresql://"), proc.stderr.read() if proc.stderr else ""
            assert sql(dsn, "SELECT 'fg'") == "fg"
            (node_pid,) = node_pids_for(fresh_data_dir)
            status = run_cli("status", "--data-dir", str(fresh_data_dir))
            assert status.returncode == 0
            assert f"supervisor pid {proc.pid} (started by cli)" in status.stdout
        finally:
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "stopped: hive-bridge (exit status 0)" in stderr
        assert "Traceback" not in stderr
        assert pid_gone(node_pid)


def test_foreground_in_memory(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hive_bridge", "start", "--foreground", "--data-dir", "memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        dsn = proc.stdout.readline().strip()
        assert sql(dsn, "SELECT current_database()") == "postgres"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    other = run_cli("status", "--data-dir", "memory")
    assert other.returncode == 1
    assert "in-memory server lives only inside the process" in other.stderr


def test_detached_start_failure_is_explained(tmp_path: Path) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_cli("start", "--data-dir", str(tmp_path / "db"), "--port", str(port))
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli("status", "--data-dir", str(tmp_path / "db")).returncode == 3


def test_config_error_exit_code(tmp_path: Path) -> None:
    env = {**os.environ, "HIVE_DATABASE_URL": "mysql://u:secret@h/db"}
    result = run_cli("status", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "HIVE_DATABASE_URL = 'mysql://u:***@h/db': unknown scheme 'mysql'" in result.stderr
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_all_ok(tmp_path: Path) -> None:
    result = run_cli("doctor", "--data-dir", str(tmp_path / "db"))
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    for check in (
        "python packages",
        "node",
        "bridge-js",
        "node_modules",
        "template cache",
        "data dir",
        "socket dir",
        "port",
    ):
        assert any(line.startswith(f"OK   {check}: ") for line in lines), (check, result.stdout)
    assert "FAIL" not in result.stdout


def test_doctor_warns_about_a_missing_template(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    env = {**os.environ, "HIVE_BRIDGE_CACHE_DIR": str(cache)}
    result = run_cli("doctor", "--data-dir", str(tmp_path / "db"), env=env)
    assert result.returncode == 0, result.stdout  # slower, not broken
    (line,) = [line for line in result.stdout.splitlines() if "template cache" in line]
    assert line.startswith(f"WARN template cache: not built yet at {cache}/templates/pglite-")
    assert "--prepare-template" in line


def test_doctor_checks_the_socket_dir(tmp_path: Path) -> None:
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o755)
    env = {**os.environ, "HIVE_BRIDGE_SOCKET_DIR": str(shared)}
    result = run_cli("doctor", "--data-dir", str(tmp_path / "db"), env=env)
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "socket dir" in line]
    assert line.startswith("FAIL socket dir: ")
    assert f"chmod 700 {shared}" in line
    off = run_cli(
        "doctor",
        "--data-dir",
        str(tmp_path / "db"),
        env={**os.environ, "HIVE_BRIDGE_SOCKET_DIR": "off"},
    )
    assert "SKIP socket dir: turned off" in off.stdout


@pytest.mark.parametrize(
    ("env", "failing"),
    [
        ({"HIVE_BRIDGE_NODE": "/nonexistent/node"}, "node"),
        ({"HIVE_BRIDGE_JS_DIR": "{tmp}/empty"}, "bridge-js"),
        ({"HIVE_BRIDGE_PORT": "{busy}"}, "port"),
    ],
)
def test_doctor_reports_each_failure_with_its_fix(
    tmp_path: Path, env: dict[str, str], failing: str
) -> None:
    import socket

    (tmp_path / "empty").mkdir()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        values = {k: v.format(tmp=tmp_path, busy=busy) for k, v in env.items()}
        result = run_cli("doctor", "--data-dir", str(tmp_path / "db"), env={**os.environ, **values})
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1, result.stdout
    assert failed[0].startswith(f"FAIL {failing}: ")
    assert "Fix: " in failed[0]


def test_no_leftover_supervisors(tmp_path: Path) -> None:
    """A start that failed leaves no supervisor behind (guards test_detached_start_failure)."""
    result = run_cli(
        "start",
        "--data-dir",
        str(tmp_path / "db"),
        env={**os.environ, "HIVE_BRIDGE_JS_DIR": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "bridge-js has no server.js" in result.stderr

    def supervisors() -> list[int]:
        return supervisor_pids(tmp_path / "db")

    wait_until(lambda: not supervisors(), timeout=30, what="the failed supervisor to exit")
