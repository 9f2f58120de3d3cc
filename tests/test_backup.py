"""hive-bridge backup / restore: consistent snapshots of a live server, offline archives under the
lock, and restores that never overwrite anything and never let a foreign data dir in."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from helpers import run_cli

from hive_bridge import Bridge

StartBridge = Callable[..., Bridge]


def query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def backup_file(fresh_data_dir: Path, tmp_path: Path) -> Path:
    """An offline backup of a never-used data dir (a valid, stamped archive)."""
    path = tmp_path / "backups" / "fresh.tar.gz"
    path.parent.mkdir()
    result = run_cli("backup", str(path), "--offline", "--data-dir", str(fresh_data_dir))
    assert result.returncode == 0, result.stderr
    return path


def rewrite(archive: Path, target: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """A copy of ``archive`` with each regular member's content passed through ``change``
    (``None`` drops the member)."""
    with tarfile.open(archive) as src, tarfile.open(target, "w:gz", compresslevel=1) as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            if data is not None:
                new = change(info.name, data)
                if new is None:
                    continue
                info.size = len(new)
                dst.addfile(info, io.BytesIO(new))
            else:
                dst.addfile(info)
    return target


def test_online_backup_restores_to_the_moment_it_was_taken(
    fresh_data_dir: Path, start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = start_bridge(fresh_data_dir)
    query(bridge.dsn, "CREATE TABLE kept (id int PRIMARY KEY, note text)")
    query(bridge.dsn, "INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 1000) g")
    archive = tmp_path / "snap.tar.gz"

    result = run_cli("backup", str(archive), "--data-dir", str(fresh_data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(archive)
    assert "snapshot taken by the running server" in result.stderr
    query(bridge.dsn, "INSERT INTO kept VALUES (1001, 'after the backup')")

    names = members(archive)
    assert all(name == "." or name.startswith("./") for name in names)
    assert {"./PG_VERSION", "./hive-bridge.json"} <= set(names)
    assert "./postmaster.pid" not in names

    restored = tmp_path / "restored" / "db"
    result = run_cli("restore", str(archive), "--data-dir", str(restored))
    assert result.returncode == 0, result.stderr
    assert f"hive-bridge start --data-dir {restored}" in result.stderr
    assert not list(restored.parent.glob("db.tmp-*"))
    again = start_bridge(restored)
    assert query(again.dsn, "SELECT count(*), max(id) FROM kept") == [(1000, 1000)]


def test_backup_never_overwrites(
    fresh_data_dir: Path, start_bridge: StartBridge, tmp_path: Path
) -> None:
    start_bridge(fresh_data_dir)
    existing = tmp_path / "precious.tar.gz"
    existing.write_bytes(b"an older backup")
    result = run_cli("backup", str(existing), "--data-dir", str(fresh_data_dir))
    assert result.returncode == 1
    assert "the file already exists" in result.stderr
    assert "Nothing was overwritten or deleted" in result.stderr
    assert existing.read_bytes() == b"an older backup"

    nowhere = tmp_path / "missing-dir" / "b.tar.gz"
    result = run_cli("backup", str(nowhere), "--data-dir", str(fresh_data_dir))
    assert result.returncode == 1
    assert f"mkdir -p {nowhere.parent}" in result.stderr


def test_backup_of_a_stopped_data_dir(fresh_data_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "offline.tar.gz"
    result = run_cli("backup", str(archive), "--data-dir", str(fresh_data_dir))
    assert result.returncode == 3
    assert f"no server is running for data dir {fresh_data_dir}" in result.stderr
    assert f"cp -a {fresh_data_dir}" in result.stderr
    assert f"hive-bridge backup {archive} --offline --data-dir {fresh_data_dir}" in result.stderr
    assert not archive.exists()

    result = run_cli("backup", str(archive), "--offline", "--data-dir", str(fresh_data_dir))
    assert result.returncode == 0, result.stderr
    assert "offline, under the lock" in result.stderr
    assert "./PG_VERSION" in members(archive)


def test_offline_backup_refuses_a_data_dir_in_use(
    fresh_data_dir: Path, start_bridge: StartBridge, tmp_path: Path
) -> None:
    start_bridge(fresh_data_dir)
    archive = tmp_path / "b.tar.gz"
    result = run_cli("backup", str(archive), "--offline", "--data-dir", str(fresh_data_dir))
    assert result.returncode == 1
    assert "a server is using it" in result.stderr
    assert "drop --offline" in result.stderr
    assert not archive.exists()


def test_restore_never_overwrites(backup_file: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    result = run_cli("restore", str(backup_file), "--data-dir", str(occupied))
    assert result.returncode == 1
    assert "already exists and is not empty" in result.stderr
    assert "Nothing was overwritten or deleted" in result.stderr
    assert tree(occupied) == ["notes.txt"]
    assert (occupied / "notes.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("restore", str(backup_file), "--data-dir", str(empty))
    assert result.returncode == 0, result.stderr
    assert (empty / "PG_VERSION").is_file()


def test_restored_offline_backup_opens(
    backup_file: Path, tmp_path: Path, start_bridge: StartBridge
) -> None:
    target = tmp_path / "from-offline"
    assert run_cli("restore", str(backup_file), "--data-dir", str(target)).returncode == 0
    bridge = start_bridge(target)
    assert query(bridge.dsn, "SELECT 1") == [(1,)]


def test_restore_refuses_another_pglite_version(backup_file: Path, tmp_path: Path) -> None:
    def foreign(name: str, data: bytes) -> bytes:
        if name != "./hive-bridge.json":
            return data
        return json.dumps({**json.loads(data), "pglite_version": "0.4.0"}).encode()

    archive = rewrite(backup_file, tmp_path / "old.tar.gz", foreign)
    target = tmp_path / "new"
    result = run_cli("restore", str(archive), "--data-dir", str(target))
    assert result.returncode == 1
    assert "made by PGlite 0.4.0" in result.stderr
    assert "not compatible across minor versions" in result.stderr
    assert "PGlite 0.4.x" in result.stderr and "pg_dump" in result.stderr  # the upgrade path
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_restore_refuses_an_archive_without_a_stamp(backup_file: Path, tmp_path: Path) -> None:
    archive = rewrite(
        backup_file,
        tmp_path / "nostamp.tar.gz",
        lambda name, data: None if name == "./hive-bridge.json" else data,
    )
    result = run_cli("restore", str(archive), "--data-dir", str(tmp_path / "new"))
    assert result.returncode == 1
    assert "no hive-bridge.json stamp" in result.stderr
    assert not (tmp_path / "new").exists()


def test_restore_refuses_what_is_no_data_dir(tmp_path: Path) -> None:
    archive = tmp_path / "random.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("./notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    result = run_cli("restore", str(archive), "--data-dir", str(tmp_path / "new"))
    assert result.returncode == 1
    assert "holds no PostgreSQL data dir (no PG_VERSION" in result.stderr
    assert not (tmp_path / "new").exists()

    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(1000))
    result = run_cli("restore", str(garbage), "--data-dir", str(tmp_path / "new"))
    assert result.returncode == 1
    assert "cannot be extracted safely" in result.stderr
    assert "Traceback" not in result.stderr


def test_restore_refuses_an_unsafe_archive(backup_file: Path, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(backup_file) as src, tarfile.open(archive, "w:gz", compresslevel=1) as dst:
        for info in src.getmembers():
            dst.addfile(info, src.extractfile(info) if info.isfile() else None)
        evil = tarfile.TarInfo("../escaped.txt")
        evil.size = 4
        dst.addfile(evil, io.BytesIO(b"evil"))
    target = tmp_path / "sub" / "new"
    result = run_cli("restore", str(archive), "--data-dir", str(target))
    assert result.returncode == 1
    assert "cannot be extracted safely" in result.stderr
    assert not (tmp_path / "sub" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not target.exists()
