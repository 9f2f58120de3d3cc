"""Backups (``.tar.gz`` of a data dir) and restores that never overwrite anything.

- Online: the running server takes a consistent snapshot itself (``POST /backup`` on its admin
  endpoint: CHECKPOINT, then the archive, between client turns).
- Offline (``--offline``): the data dir is archived here, under the data-dir lock, so no server can
  open it meanwhile.
- Restore: into a data dir that does not exist yet (or is empty); extracted with tarfile's ``data``
  filter into ``NEW.tmp-<pid>``, checked (``PG_VERSION``, the ``hive-bridge.json`` stamp's PGlite
  minor version against the installed one), then renamed into place.

Archive members are relative (``./PG_VERSION``, ``./base/…``, ``./hive-bridge.json``), the same for
both kinds of backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from .admin import post_backup
from .errors import BackupError, DataDirLockedError, RestoreVersionError
from .lock import DataDirLock
from .paths import RunPaths, read_password
from .statefile import BridgeState

__all__ = [
    "BackupResult",
    "RestoreResult",
    "backup_offline",
    "backup_online",
    "check_backup_target",
    "restore",
    "verify_data_dir",
]

STAMP = "hive-bridge.json"
#: what a crash may leave in a data dir and a backup must not carry
_LEFTOVERS = frozenset({"./postmaster.pid"})


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    ms: float
    pglite_version: str | None
    online: bool


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    files: int
    pglite_version: str


def _minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


def check_backup_target(target: Path, data_dir: Path) -> Path:
    """The absolute backup path, refusing one that exists, has no directory, or is inside the data dir."""
    path = Path(os.path.abspath(target))
    q = shlex.quote(str(path))
    if path.exists() or path.is_symlink():
        raise BackupError(
            action="backup",
            path=str(path),
            problem="the file already exists",
            fix=f"choose a new file name, or move the old backup away first (mv {q} {q}.old)",
        )
    if not path.parent.is_dir():
        raise BackupError(
            action="backup",
            path=str(path),
            problem=f"its directory {path.parent} does not exist",
            fix=f"mkdir -p {shlex.quote(str(path.parent))}",
        )
    real_parent = Path(os.path.realpath(path.parent))
    if real_parent == data_dir or data_dir in real_parent.parents:
        raise BackupError(
            action="backup",
            path=str(path),
            problem=f"it is inside the data dir {data_dir}",
            fix="write the backup outside the data dir",
        )
    return path


def backup_online(
    paths: RunPaths, state: BridgeState, target: Path, *, timeout: float = 600.0
) -> BackupResult:
    """Ask the running server for a consistent snapshot written to ``target`` (not existing yet)."""
    assert paths.data_dir is not None
    path = check_backup_target(target, paths.data_dir)
    if not state.admin_port:
        raise BackupError(
            action="backup",
            path=str(path),
            problem=f"the server (pid {state.node_pid}) has no admin endpoint to ask",
            fix="restart it with hive-bridge, which always enables the admin endpoint",
        )
    try:
        status, body = post_backup(
            state.admin_port, str(path), read_password(paths.password), timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise BackupError(
            action="backup",
            path=str(path),
            problem=f"the server's admin endpoint 127.0.0.1:{state.admin_port} did not answer "
            f"({type(exc).__name__}: {exc})",
            fix=f"check the server with: hive-bridge status --data-dir {shlex.quote(str(paths.data_dir))}"
            " (a large database may need a longer --timeout)",
        ) from exc
    if status == 401:
        raise BackupError(
            action="backup",
            path=str(path),
            problem=f"the server refused the password in {paths.password} (HTTP 401)",
            fix="the password file was changed after the server started; restart the server "
            f"(hive-bridge stop/start --data-dir {shlex.quote(str(paths.data_dir))})",
        )
    if status != 200:
        raise BackupError(
            action="backup",
            path=str(path),
            problem=f"the server could not take the snapshot (HTTP {status}): "
            f"{body.get('error', body)}",
            fix=f"see its log {paths.server_log}; free disk space or choose another place",
        )
    return BackupResult(
        path=Path(str(body.get("path", path))),
        bytes=int(body.get("bytes") or 0),
        ms=float(body.get("ms") or 0),
        pglite_version=body.get("pglite_version"),
        online=True,
    )


def backup_offline(paths: RunPaths, target: Path) -> BackupResult:
    """Archive a data dir no server is using, holding its lock meanwhile."""
    data_dir = paths.data_dir
    assert data_dir is not None
    path = check_backup_target(target, data_dir)
    if not (data_dir / "PG_VERSION").is_file():
        raise BackupError(
            action="backup",
            path=str(data_dir),
            problem="it is not a data dir (no PG_VERSION)",
            fix="pass the --data-dir of an existing database",
        )
    try:
        lock = DataDirLock.acquire(paths.lock, data_dir=str(data_dir))
    except DataDirLockedError as exc:
        raise BackupError(
            action="backup",
            path=str(data_dir),
            problem=f"a server is using it (process {exc.owner_pid}), so it cannot be archived "
            "from outside",
            fix=f"drop --offline: the running server then takes a consistent snapshot itself "
            f"(hive-bridge backup {shlex.quote(str(path))} --data-dir "
            f"{shlex.quote(str(data_dir))})",
        ) from exc
    started = time.monotonic()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:  # gzip's default; 9 is 5x slower
            tar.add(
                str(data_dir),
                arcname=".",
                filter=lambda info: None if info.name in _LEFTOVERS else info,
            )
        os.link(tmp, path)  # fails instead of overwriting a file that appeared meanwhile
    except FileExistsError as exc:
        raise BackupError(
            action="backup",
            path=str(path),
            problem="the file appeared while the backup was written",
            fix="choose a new file name",
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        lock.release()
    return BackupResult(
        path=path,
        bytes=path.stat().st_size,
        ms=(time.monotonic() - started) * 1000,
        pglite_version=_stamp_version(data_dir),
        online=False,
    )


def _stamp_version(directory: Path) -> str | None:
    try:
        value = json.loads((directory / STAMP).read_text(encoding="utf-8")).get("pglite_version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def verify_data_dir(directory: Path, *, source: Path, installed_pglite: str) -> str:
    """Check that ``directory`` (extracted from ``source``) is a data dir this PGlite can open;
    return the PGlite version it was made by."""

    def refuse(problem: str, fix: str) -> BackupError:
        return BackupError(action="restore", path=str(source), problem=problem, fix=fix)

    made_by = "pass a file written by hive-bridge backup"
    try:
        major = (directory / "PG_VERSION").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise refuse(
            "it holds no PostgreSQL data dir (no PG_VERSION at its top)", made_by
        ) from None
    if not major.isdigit():
        raise refuse(f"its PG_VERSION is not a version number ({major[:20]!r})", made_by)
    try:
        stamp = json.loads((directory / STAMP).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise refuse(
            f"it has no {STAMP} stamp, so the PGlite version that wrote it is unknown and a "
            "foreign version could be damaged by opening it",
            made_by,
        ) from None
    except (OSError, ValueError) as exc:
        raise refuse(f"its {STAMP} stamp cannot be read ({exc})", made_by) from exc
    version = stamp.get("pglite_version") if isinstance(stamp, dict) else None
    if not version:
        raise refuse(f"its {STAMP} stamp names no pglite_version", made_by)
    if _minor(str(version)) != _minor(installed_pglite):
        raise RestoreVersionError(
            path=str(source), backup_version=str(version), installed_version=installed_pglite
        )
    postgres = str(stamp.get("postgres_version") or "")
    if postgres and postgres.split(".")[0] != major:
        raise refuse(
            f"its stamp says PostgreSQL {postgres} but its PG_VERSION says {major}", made_by
        )
    return str(version)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def restore(backup: Path, paths: RunPaths, *, installed_pglite: str) -> RestoreResult:
    """Restore ``backup`` into ``paths.data_dir``, which must not exist or be an empty directory."""
    data_dir = paths.data_dir
    assert data_dir is not None
    source = Path(os.path.abspath(backup))
    if not source.is_file():
        raise BackupError(
            action="restore",
            path=str(source),
            problem="there is no such file",
            fix="pass the path of a file written by hive-bridge backup",
        )
    new = shlex.quote(str(data_dir) + ".restored")
    occupied = BackupError(
        action="restore",
        path=str(data_dir),
        problem="the target data dir already exists and is not empty (a restore never "
        "overwrites anything)",
        fix=f"restore into a new path: hive-bridge restore {shlex.quote(str(source))} "
        f"--data-dir {new}",
    )
    if (data_dir.exists() or data_dir.is_symlink()) and not _is_empty_dir(data_dir):
        raise occupied
    try:
        lock = DataDirLock.acquire(paths.lock, data_dir=str(data_dir))
    except DataDirLockedError as exc:
        raise BackupError(
            action="restore",
            path=str(data_dir),
            problem=f"a server is running for it (process {exc.owner_pid})",
            fix=f"restore into a new path: hive-bridge restore {shlex.quote(str(source))} "
            f"--data-dir {new}",
        ) from exc
    tmp = data_dir.with_name(f"{data_dir.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, from a restore of this pid that was killed
        tmp.mkdir(mode=0o700)
        try:
            with tarfile.open(source, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise BackupError(
                action="restore",
                path=str(source),
                problem=f"it cannot be extracted safely ({type(exc).__name__}: {exc})",
                fix="pass an intact file written by hive-bridge backup",
            ) from exc
        version = verify_data_dir(tmp, source=source, installed_pglite=installed_pglite)
        files = sum(len(names) for _, _, names in os.walk(tmp))
        if (data_dir.exists() or data_dir.is_symlink()) and not _is_empty_dir(data_dir):
            raise occupied  # someone filled it meanwhile
        os.rename(tmp, data_dir)  # atomic; replaces an empty directory only
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()
    return RestoreResult(data_dir=data_dir, files=files, pglite_version=version)
