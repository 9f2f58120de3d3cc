"""Run dir layout and the password file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hive_bridge.errors import ConfigError
from hive_bridge.paths import ensure_password, memory_run_paths, read_password, run_paths_for


def test_run_dir_sits_next_to_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = run_paths_for(Path("data/automagik_hive.db"))
    assert paths.data_dir == tmp_path / "data" / "automagik_hive.db"
    assert paths.run_dir == tmp_path / "data" / "automagik_hive.db.bridge"
    assert paths.run_dir.is_dir()  # created, with the data dir's parent
    assert not paths.data_dir.exists()  # Node creates the data dir itself
    assert paths.lock.name == "lock"
    assert paths.state.name == "state.json"
    assert paths.server_log.name == "server.log"
    assert paths.password.name == "password"


def test_run_dir_follows_the_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    paths = run_paths_for(tmp_path / "link" / "db")
    assert paths.run_dir == real / "db.bridge"


def test_run_dir_override(tmp_path: Path) -> None:
    paths = run_paths_for(tmp_path / "db", run_dir=tmp_path / "run")
    assert paths.run_dir == tmp_path / "run"
    assert paths.run_dir.is_dir()


def test_uncreatable_parent_is_a_clear_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        run_paths_for(blocker / "sub" / "db")
    message = str(info.value)
    assert f"cannot create directory {blocker / 'sub'}" in message
    assert "mkdir -p" in message and "HIVE_DATABASE_URL" in message


def test_root_is_no_data_dir() -> None:
    with pytest.raises(ConfigError, match="filesystem root"):
        run_paths_for("/", create=False)


def test_memory_run_dir_is_private_and_temporary() -> None:
    paths = memory_run_paths()
    try:
        assert paths.data_dir is None
        assert paths.run_dir.is_dir()
        assert stat.S_IMODE(paths.run_dir.stat().st_mode) == 0o700
    finally:
        paths.run_dir.rmdir()


def test_password_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "password"
    assert read_password(path) is None
    first = ensure_password(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_password(path) == first
    assert read_password(path) == first


def test_password_file_too_open_or_empty_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("kept\n")
    path.chmod(0o644)
    assert ensure_password(path) == "kept"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    assert len(ensure_password(path)) >= 32
