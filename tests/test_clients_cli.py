"""``hive-bridge clients`` and ``hive-bridge terminate PID`` against a running server (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from helpers import run_cli, wait_until

from hive_bridge import Bridge


def test_clients_lists_and_terminate_ends_one(shared_bridge: Bridge) -> None:
    data_dir = str(shared_bridge.data_dir)
    with (
        psycopg.connect(shared_bridge.dsn, application_name="cli-victim") as victim,
        psycopg.connect(shared_bridge.dsn, application_name="cli-other", autocommit=True) as other,
    ):
        victim.execute("SELECT 'hello from the victim'")  # now idle in transaction
        pid = victim.info.backend_pid

        listed = run_cli("clients", "--json", "--data-dir", data_dir)
        assert listed.returncode == 0, listed.stderr
        clients = {c["pid"]: c for c in json.loads(listed.stdout)}
        assert clients[pid]["application_name"] == "cli-victim"
        assert "hello from the victim" in clients[pid]["last_statement"]
        assert clients[other.info.backend_pid]["application_name"] == "cli-other"

        table = run_cli("clients", "--data-dir", data_dir)
        assert table.returncode == 0, table.stderr
        line = next(ln for ln in table.stdout.splitlines() if ln.startswith(str(pid)))
        assert "cli-victim" in line and "idle in transaction" in line

        ended = run_cli("terminate", str(pid), "--data-dir", data_dir)
        assert ended.returncode == 0, ended.stderr
        assert f"terminated client {pid}" in ended.stdout
        with pytest.raises(psycopg.errors.AdminShutdown):
            victim.execute("SELECT 1")
        assert other.execute("SELECT 1").fetchone() == (1,)

        wait_until(
            lambda: str(pid) not in run_cli("clients", "--data-dir", data_dir).stdout,
            timeout=60,  # each look is a CLI start: seconds on a loaded machine
            what="the terminated client to leave the list",
        )
        again = run_cli("terminate", str(pid), "--data-dir", data_dir)
        assert again.returncode == 1
        assert f"no client with pid {pid} is connected" in again.stderr
        assert "hive-bridge clients" in again.stderr  # the fix names the command
        assert "Traceback" not in again.stderr


def test_clients_of_a_stopped_server_exit_3(tmp_path: Path) -> None:
    result = run_cli("clients", "--data-dir", str(tmp_path / "nothing.db"))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
