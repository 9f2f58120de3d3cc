"""A new data dir is a copy of the cached template, made while PGlite's worker starts (import and
WASM compile overlap the copy): the database is complete before PGlite looks at it, and a start that
fails meanwhile never leaves a half-made copy behind."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from hive_bridge import Bridge, PortInUseError

StartBridge = Callable[..., Bridge]


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.parent.iterdir() if ".tmp-" in p.name)


def test_a_new_data_dir_is_a_complete_database(
    tmp_path: Path, start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIVE_LOG_LEVEL", "DEBUG")  # the server logs the copy at debug
    data_dir = tmp_path / "new.db"
    bridge = start_bridge(data_dir)
    with psycopg.connect(bridge.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall() == [
            ("postgres",),
            ("template0",),
            ("template1",),
        ]
    server_log = (tmp_path / "new.db.bridge" / "server.log").read_text()
    assert "created from template" in server_log
    assert (data_dir / "PG_VERSION").read_text().strip() == "18"
    assert _leftovers(data_dir) == []


def test_a_failed_start_waits_for_the_copy(tmp_path: Path, start_bridge: StartBridge) -> None:
    # the port check fails while the template is being copied: the server exits only after the copy
    # is finished and renamed into place (a complete, unused database), never with a .tmp- dir left
    data_dir = tmp_path / "new.db"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(PortInUseError):
            start_bridge(data_dir, port=squatter.getsockname()[1])
    assert _leftovers(data_dir) == []
    assert not data_dir.exists() or (data_dir / "PG_VERSION").exists()
