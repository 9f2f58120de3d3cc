"""Where the bridge keeps its run files: the run dir next to the data dir.

A data dir ``data/automagik_hive.db`` gets the run dir ``data/automagik_hive.db.bridge/`` (next to
the real path of the data dir) holding ``lock``, ``state.json``, ``server.log``, ``supervisor.log``
and ``password`` (mode 0600). An in-memory database gets a private temporary run dir.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["RunPaths", "ensure_password", "memory_run_paths", "run_paths_for"]

RUN_DIR_SUFFIX = ".bridge"


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
        for directory in (real.parent, target):
            _make_dir(directory, data_dir=real)
    return paths


def memory_run_paths() -> RunPaths:
    """A private temporary run dir for an in-memory database (removed when the bridge stops)."""
    return RunPaths(data_dir=None, run_dir=Path(tempfile.mkdtemp(prefix="hive-bridge-memory-")))


def _make_dir(directory: Path, *, data_dir: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
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
