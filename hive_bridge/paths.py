"""Where the bridge keeps its run files: the run dir next to the data dir, and the socket dir.

A data dir ``data/automagik_hive.db`` gets the run dir ``data/automagik_hive.db.bridge/`` (next to
the real path of the data dir, mode 0700 when we create it) holding ``lock``, ``state.json``,
``server.log``, ``supervisor.log`` (each with up to 3 rotated generations ``.1``-``.3``), ``password``
(mode 0600), ``port`` (the data dir's stable TCP port), ``users/`` (one lease per process using a
shared server) and ``users.lock``. An in-memory database gets a private temporary run dir.

The Unix socket lives in ``<run dir>/sock/`` (0700) when the socket path fits the platform's limit
with room to spare, else in ``$XDG_RUNTIME_DIR/hive-bridge/<key>/`` or ``/tmp/hive-bridge-<uid>/<key>/``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataDirLockedError
from .lock import DataDirLock

__all__ = [
    "MAX_DEFAULT_SOCKET_PATH",
    "RunPaths",
    "discard_unused_run_dir",
    "ensure_password",
    "ensure_private_dir",
    "ensure_socket_dir",
    "memory_run_paths",
    "run_paths_for",
    "socket_dir_for",
    "socket_path_length",
]

RUN_DIR_SUFFIX = ".bridge"
#: the longest socket file name the server creates in the socket dir (libpq's naming)
SOCKET_NAME = ".s.PGSQL.65535"
#: a default socket dir is only used if DIR/.s.PGSQL.65535 stays within this many bytes
MAX_DEFAULT_SOCKET_PATH = 100
#: what the platform (and bridge-js) accepts at most for an explicitly configured socket dir
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class RunPaths:
    """The files of one bridge instance."""

    data_dir: Path | None
    run_dir: Path

    @property
    def lock(self) -> Path:
        return self.run_dir / "lock"

    @property
    def state(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def server_log(self) -> Path:
        return self.run_dir / "server.log"

    @property
    def supervisor_log(self) -> Path:
        return self.run_dir / "supervisor.log"

    @property
    def password(self) -> Path:
        return self.run_dir / "password"

    @property
    def users_dir(self) -> Path:
        return self.run_dir / "users"

    @property
    def users_lock(self) -> Path:
        return self.run_dir / "users.lock"

    @property
    def port_file(self) -> Path:
        """The data dir's TCP port, recorded at its first start and reused by every later one."""
        return self.run_dir / "port"


def resolve_data_dir(data_dir: Path | str) -> Path:
    """The absolute, symlink-free path of a data dir (it need not exist yet)."""
    return Path(os.path.realpath(os.path.expanduser(data_dir)))


def run_paths_for(
    data_dir: Path | str, *, run_dir: Path | None = None, create: bool = True
) -> RunPaths:
    """The run paths of ``data_dir`` (``<realpath>.bridge``, or ``run_dir`` if given).

    With ``create`` the data dir's parent and the run dir are created; if that is impossible a
    :class:`ConfigError` names the directory and why.
    """
    real = resolve_data_dir(data_dir)
    if real == Path("/"):
        raise ConfigError(
            setting="data dir",
            value=str(data_dir),
            problem="the filesystem root cannot be a data dir",
            example="HIVE_DATABASE_URL=pglite://./data/automagik_hive.db",
        )
    target = (
        Path(os.path.realpath(run_dir)) if run_dir else real.with_name(real.name + RUN_DIR_SUFFIX)
    )
    paths = RunPaths(data_dir=real, run_dir=target)
    if create:
        _make_dir(real.parent, data_dir=real)
        _make_dir(target, data_dir=real, mode=0o700)
    return paths


#: what a failed first start may leave in a run dir that is worth nothing without a data dir
_DISPOSABLE_FILES = frozenset({"lock", "users.lock", "password", "port", "state.json"})
_DISPOSABLE_DIRS = frozenset({"users", "sock"})


def discard_unused_run_dir(paths: RunPaths) -> bool:
    """After a failed *first* start: remove the run dir if nothing in it is worth keeping.

    Kept when the data dir exists and is not empty (its password must stay), when there is a log
    (the error message points at it) or anything else, and when another process holds the lock.
    Returns whether it was removed.
    """
    data_dir = paths.data_dir
    try:
        if data_dir is not None and data_dir.is_dir() and any(data_dir.iterdir()):
            return False
        entries = list(paths.run_dir.iterdir())
    except OSError:
        return False
    for entry in entries:
        if entry.name in _DISPOSABLE_FILES and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name in _DISPOSABLE_DIRS and entry.is_dir() and not any(entry.iterdir()):
            continue
        return False
    try:
        lock = DataDirLock.acquire(paths.lock, data_dir=str(data_dir))
    except (DataDirLockedError, OSError):
        return False  # someone else is starting it right now
    try:
        for entry in entries:
            if entry.is_dir():
                entry.rmdir()
            else:
                entry.unlink(missing_ok=True)
        if data_dir is not None and data_dir.is_dir():
            data_dir.rmdir()  # empty: a failed start created it
        paths.run_dir.rmdir()
    except OSError:
        return False
    finally:
        lock.release()
    return True


def memory_run_paths() -> RunPaths:
    """A private temporary run dir for an in-memory database (removed when the bridge stops)."""
    return RunPaths(data_dir=None, run_dir=Path(tempfile.mkdtemp(prefix="hive-bridge-memory-")))


def _make_dir(directory: Path, *, data_dir: Path, mode: int = 0o777) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as exc:
        raise ConfigError(
            setting="data dir",
            value=str(data_dir),
            problem=f"cannot create directory {directory} ({exc.strerror or exc})",
            example="HIVE_DATABASE_URL=pglite://./data/automagik_hive.db",
            fix=(
                f"create it yourself (mkdir -p {shlex.quote(str(directory))}) or point "
                f"HIVE_DATABASE_URL / --data-dir at a writable place"
            ),
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            setting="data dir",
            value=str(data_dir),
            problem=f"directory {directory} is not writable by this user (uid {os.getuid()})",
            example="HIVE_DATABASE_URL=pglite://./data/automagik_hive.db",
            fix=(
                f"make it writable (chmod u+w {shlex.quote(str(directory))}) or point "
                f"HIVE_DATABASE_URL / --data-dir at a writable place"
            ),
        )


def ensure_password(path: Path) -> str:
    """Read the bridge password, creating it (``secrets.token_urlsafe(24)``, mode 0600) if missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
        password = path.read_text(encoding="ascii").strip()
        if password:
            return password
        path.unlink()
        return ensure_password(path)
    password = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(password + "\n")
    return password


def read_password(path: Path) -> str | None:
    """The stored password, or ``None`` if there is none yet."""
    try:
        return path.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------------ socket dir


def socket_path_length(directory: Path) -> int:
    """Bytes of the longest socket path the server may create in ``directory``."""
    return len(os.fsencode(directory / SOCKET_NAME))


def _fits(directory: Path) -> bool:
    return socket_path_length(directory) <= MAX_DEFAULT_SOCKET_PATH


def socket_dir_for(paths: RunPaths, configured: Path | None = None) -> Path:
    """The Unix-socket directory of a server: ``configured`` (``HIVE_BRIDGE_SOCKET_DIR``) if set,
    else ``<run dir>/sock`` if short enough, else a per-data-dir dir under ``$XDG_RUNTIME_DIR`` or
    ``/tmp/hive-bridge-<uid>``. Nothing is created here."""
    if configured is not None:
        if socket_path_length(configured) > MAX_SOCKET_PATH:
            raise ConfigError(
                setting="HIVE_BRIDGE_SOCKET_DIR",
                value=str(configured),
                problem=(
                    f"too long for a Unix socket: {configured / SOCKET_NAME} would be "
                    f"{socket_path_length(configured)} bytes, the limit is {MAX_SOCKET_PATH}"
                ),
                example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                fix="choose a shorter directory, or unset it to let hive-bridge pick one",
            )
        return configured
    preferred = paths.run_dir / "sock"
    if _fits(preferred):
        return preferred
    key = hashlib.sha256(str(paths.data_dir or paths.run_dir).encode()).hexdigest()[:12]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        candidate = Path(runtime) / "hive-bridge" / key
        if _fits(candidate):
            return candidate
    # deliberately /tmp and not $TMPDIR: the point is a short path
    return Path(f"/tmp/hive-bridge-{os.getuid()}") / key  # noqa: S108


def ensure_socket_dir(paths: RunPaths, configured: Path | None) -> Path:
    """:func:`socket_dir_for`, created with mode 0700 and checked to be this user's only."""
    directory = socket_dir_for(paths, configured)
    ours = configured is None
    return ensure_private_dir(
        directory,
        setting="HIVE_BRIDGE_SOCKET_DIR",
        ours=ours,
        private_parent=ours and directory.parent != paths.run_dir,
    )


def ensure_private_dir(
    directory: Path, *, setting: str, ours: bool, private_parent: bool = False
) -> Path:
    """Create ``directory`` (and missing parents) with mode 0700 and check it is this user's only.

    ``ours``: hive-bridge chose the place, so a directory of ours with a looser mode is tightened;
    a directory the user configured is never chmod-ed, a wrong mode is a :class:`ConfigError`
    naming the command. ``private_parent``: the parent (``/tmp/hive-bridge-<uid>``) is checked too,
    since whoever controls it controls what is inside.
    """
    for path in ([directory.parent] if private_parent else []) + [directory]:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = path.lstat()
        except OSError as exc:
            raise ConfigError(
                setting=setting,
                value=str(directory),
                problem=f"cannot create the socket directory {path} ({exc.strerror or exc})",
                example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                fix="choose a writable place with HIVE_BRIDGE_SOCKET_DIR, or turn the socket off "
                "with HIVE_BRIDGE_SOCKET_DIR=off",
            ) from exc
        q = shlex.quote(str(path))
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(
                setting=setting,
                value=str(directory),
                problem=(
                    f"{path} is not a directory owned by this user (uid {os.getuid()}); anyone "
                    f"who controls it could intercept database connections"
                ),
                example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                fix=f"remove it (rm -r {q}) or choose another place with HIVE_BRIDGE_SOCKET_DIR",
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            if not ours:
                raise ConfigError(
                    setting=setting,
                    value=str(directory),
                    problem=(
                        f"{path} has mode {stat.S_IMODE(info.st_mode):o}; the socket directory "
                        f"must be private (0700)"
                    ),
                    example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                    fix=f"chmod 700 {q}",
                )
            path.chmod(0o700)
    return directory
