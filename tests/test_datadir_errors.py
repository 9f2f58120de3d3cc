"""Errors that keep data: a data dir the server cannot open is named, with the cause and the safe
next step, and nothing in it is changed; a taken port names the process that holds it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import FAST, MARKER, node_pids_for, run_cli

from hive_bridge import Bridge, ConfigError, DataDirError, PortInUseError

StartBridge = Callable[..., Bridge]


def fingerprint(path: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``path`` (and ``path`` itself) with its mode and content hash."""
    entries = {}
    for entry in [path, *sorted(path.rglob("*"))]:
        info = entry.lstat()
        digest = hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else ""
        entries[str(entry.relative_to(path))] = (info.st_mode, digest)
    return entries


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "shared supervisor"])
def test_data_dir_of_another_pglite_version_is_refused_untouched(
    fresh_data_dir: Path, shared: bool
) -> None:
    stamp = fresh_data_dir / "hive-bridge.json"
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "pglite_version": "0.4.0"}))
    before = fingerprint(fresh_data_dir)

    with pytest.raises(DataDirError) as info:
        Bridge(fresh_data_dir, shared=shared, options=FAST).start()

    error = info.value
    assert error.code == "version_mismatch"
    assert error.data_dir == str(fresh_data_dir)
    message = str(error)
    assert message.startswith(f"hive-bridge: cannot open data dir {fresh_data_dir}: ")
    assert "created by PGlite 0.4.0" in message  # the cause, as Node stated it
    assert f"Nothing in {fresh_data_dir} was changed or deleted." in message
    assert "pg_dump" in message and "new data dir" in message  # the upgrade path
    assert fingerprint(fresh_data_dir) == before
    assert node_pids_for(fresh_data_dir) == []


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    path.write_text("not a database\n")
    with pytest.raises(DataDirError) as info:
        Bridge(path, options=FAST).start()
    assert info.value.code == "data_dir_invalid"
    assert f"data dir {path} exists but is not a directory" in str(info.value)
    assert "Fix: " in str(info.value)
    assert path.read_text() == "not a database\n"


def test_data_dir_with_an_extension_the_server_lacks(
    fresh_data_dir: Path, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fresh_data_dir)
    with psycopg.connect(bridge.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    bridge.stop()
    with pytest.raises(DataDirError) as info:
        Bridge(fresh_data_dir, extensions=(), options=FAST).start()
    assert info.value.code == "extension_missing"
    assert "--extensions vector" in str(info.value)
    assert node_pids_for(fresh_data_dir) == []


def test_a_missing_parent_is_created(tmp_path: Path, start_bridge: StartBridge) -> None:
    data_dir = tmp_path / "does" / "not" / "exist" / "app.db"
    bridge = start_bridge(data_dir)
    assert (data_dir / "PG_VERSION").is_file()
    assert bridge.dsn


# ------------------------------------------------------------- unwritable, as a normal user


@pytest.fixture
def readonly_dir() -> Iterator[Path]:
    """A directory an unprivileged user cannot write to (outside the 0700 pytest tmp dirs)."""
    base = Path(tempfile.mkdtemp(prefix="hive-bridge-ro-"))
    base.chmod(0o755)
    readonly = base / "readonly"
    readonly.mkdir(mode=0o555)
    readonly.chmod(0o555)
    yield readonly
    readonly.chmod(0o755)
    shutil.rmtree(base)


def run_unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m hive_bridge ARGS`` as a user that file permissions apply to (root is dropped
    to nobody with setpriv)."""
    argv = [sys.executable, "-m", "hive_bridge", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is not available to drop privileges")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {k: v for k, v in os.environ.items() if k.startswith(("PATH", MARKER))}
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=env, cwd="/", check=False
    )
    # the checkout may sit where that user cannot read it (e.g. under a root-only 0700 temp dir):
    # ``python -m`` then says "No module named hive_bridge"
    cannot = ("ModuleNotFoundError", "No module named hive_bridge", "Permission denied: '/")
    if any(sign in result.stderr for sign in cannot):
        pytest.skip(f"the unprivileged user cannot run this Python: {result.stderr[-300:]}")
    return result


def test_unwritable_parent_is_a_clear_error(readonly_dir: Path) -> None:
    result = run_unprivileged("start", "--data-dir", str(readonly_dir / "app.db"))
    assert result.returncode == 1
    assert f"directory {readonly_dir} is not writable by this user" in result.stderr
    assert f"chmod u+w {readonly_dir}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(readonly_dir.iterdir()) == []


def test_parent_that_cannot_be_created_is_a_clear_error(readonly_dir: Path) -> None:
    result = run_unprivileged("start", "--data-dir", str(readonly_dir / "sub" / "app.db"))
    assert result.returncode == 1
    assert f"cannot create directory {readonly_dir / 'sub'} (Permission denied)" in result.stderr
    assert f"mkdir -p {readonly_dir / 'sub'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_in_memory_server_needs_no_writable_place(start_bridge: StartBridge) -> None:
    bridge = start_bridge(None)
    assert bridge.dsn


def test_no_data_dir_path_is_guessed() -> None:
    with pytest.raises(ConfigError, match="filesystem root"):
        Bridge("/", options=FAST).start()


# ---------------------------------------------------------------------------------- ports

SQUATTER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def squatter() -> Iterator[tuple[int, int]]:
    """Another process listening on a port: ``(pid, port)``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SQUATTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield proc.pid, port
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "shared supervisor"])
def test_port_in_use_names_the_process_that_holds_it(
    fresh_data_dir: Path, squatter: tuple[int, int], shared: bool
) -> None:
    pid, port = squatter
    with pytest.raises(PortInUseError) as info:
        Bridge(fresh_data_dir, port=port, shared=shared, options=FAST).start()
    error = info.value
    assert (error.port, error.owner_pid) == (port, pid)
    assert error.owner_name is not None and error.owner_name.startswith("python")
    message = str(error)
    assert f"port 127.0.0.1:{port} is already in use by process {pid} (python" in message
    assert f"kill {pid}" in message and "HIVE_BRIDGE_PORT=0" in message
    assert node_pids_for(fresh_data_dir) == []


def test_port_in_use_from_the_cli(fresh_data_dir: Path, squatter: tuple[int, int]) -> None:
    pid, port = squatter
    result = run_cli("start", "--data-dir", str(fresh_data_dir), "--port", str(port))
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} is already in use by process {pid}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_left_to_the_os_just_works(
    fresh_data_dir: Path, squatter: tuple[int, int], start_bridge: StartBridge
) -> None:
    _, taken = squatter
    bridge = start_bridge(fresh_data_dir, port=0)
    assert bridge.port != taken
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=5):
        pass
