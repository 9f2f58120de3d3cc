"""The exclusive lock of a data dir: ``flock(LOCK_EX | LOCK_NB)`` on ``<run_dir>/lock``.

Two processes opening one PGlite data dir silently lose committed rows, so the supervisor takes this
lock before the first start and keeps it for its whole life, across Node restarts. The fd is passed
to Node (``--lock-fd``): a flock belongs to the open file description, so the lock stays held while
either process lives.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import DataDirLockedError

__all__ = ["DataDirLock", "read_lock_owner"]


class DataDirLock:
    """A held lock. ``fd`` is what Node inherits; :meth:`release` closes it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"lock {self.path} was released")
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def acquire(cls, path: Path, *, data_dir: str) -> DataDirLock:
        """Take the lock or raise :class:`DataDirLockedError` naming the owner pid."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLockedError(
                data_dir=data_dir, lock_path=str(path), owner_pid=read_lock_owner(path)
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Close our fd (idempotent). A child that inherited it keeps the lock until it exits.

        Deliberately no ``LOCK_UN``: that would unlock the shared open file description, and with
        it a Node server that might still be running on the data dir.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)

    def forget(self) -> None:
        """Close our copy of the fd in a forked child (the parent keeps the lock)."""
        self.release()

    def __repr__(self) -> str:
        return f"DataDirLock({str(self.path)!r}, fd={self._fd})"


def read_lock_owner(path: Path) -> int | None:
    """The pid the last holder wrote into the lock file, if any."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock right now (probe without keeping it)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a probe lock we may have taken
    return False
