"""Who uses a shared server: one lease file per process in ``<run dir>/users/``.

A process that uses a server run by a detached supervisor (the app's auto-started one) registers as
a *user* by creating ``users/<pid>-<create time>``. Nothing needs refreshing: a lease is live while
a process with that pid *and* that psutil create time exists, so the lease of a SIGKILLed process (or
one whose pid was reused) is recognised as stale and removed by whoever lists the users. The
supervisor stops an on-demand server when no live lease is left.

``users.lock`` (a blocking ``flock``) makes "register, then look at the state file" and the
supervisor's "no users: announce STOPPING" mutually exclusive: either the supervisor sees the new
lease and keeps running, or the newcomer sees STOPPING and starts a new server after it is gone.

A forked child (gunicorn workers, multiprocessing) registers itself too, so the server stays while
any of them lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .statefile import process_create_time, process_matches

__all__ = [
    "Lease",
    "UserLease",
    "drop_inherited_leases",
    "live_users",
    "parse_lease_name",
    "users_mutex",
]

log = logging.getLogger("hive_bridge.leases")


@dataclass(frozen=True)
class Lease:
    """One registered user."""

    pid: int
    create_time: float
    path: Path

    @property
    def live(self) -> bool:
        return process_matches(self.pid, self.create_time)


def lease_name(pid: int, create_time: float) -> str:
    return f"{pid}-{create_time!r}"


def parse_lease_name(name: str) -> tuple[int, float] | None:
    """``(pid, create_time)`` of a lease file name, or ``None`` if it is not one."""
    pid, sep, created = name.partition("-")
    if not sep or not pid.isdigit():
        return None
    try:
        return int(pid), float(created)
    except ValueError:
        return None


def live_users(users_dir: Path, *, clean: bool = True) -> list[Lease]:
    """The live leases in ``users_dir``; stale ones are removed when ``clean``."""
    try:
        names = os.listdir(users_dir)
    except FileNotFoundError:
        return []
    live = []
    for name in sorted(names):
        parsed = parse_lease_name(name)
        if parsed is None:
            continue  # a temp file or something foreign: not a user
        lease = Lease(parsed[0], parsed[1], users_dir / name)
        if lease.live:
            live.append(lease)
        elif clean:
            with contextlib.suppress(FileNotFoundError):
                lease.path.unlink()
                log.info("removed the stale user lease of pid %d (that process is gone)", lease.pid)
    return live


@contextlib.contextmanager
def users_mutex(lock_path: Path) -> Iterator[None]:
    """Hold ``users.lock`` (blocking, exclusive) for a short critical section."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class UserLease:
    """This process's registration as a user of the server of one run dir (idempotent)."""

    def __init__(self, users_dir: Path) -> None:
        self.users_dir = users_dir
        self._path: Path | None = None
        self._pid: int | None = None
        _ACTIVE.add(self)

    @property
    def path(self) -> Path | None:
        return self._path if self._pid == os.getpid() else None

    def acquire(self) -> Path:
        """Create this process's lease file if it does not exist yet; return its path."""
        pid = os.getpid()
        if self._pid == pid and self._path is not None and self._path.exists():
            return self._path
        create_time = process_create_time(pid)
        if create_time is None:  # pragma: no cover - our own process always has one
            raise RuntimeError("psutil cannot see the current process")
        self.users_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.users_dir / lease_name(pid, create_time)
        with open(path, "w", encoding="ascii") as fh:
            fh.write(f"{pid}\n")
        self._path, self._pid = path, pid
        return path

    def release(self) -> None:
        """Remove this process's lease (a forked child never removes its parent's)."""
        path, pid = self._path, self._pid
        self._path = self._pid = None
        if path is not None and pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _after_fork(self) -> None:
        if self._path is None:
            return
        self._path = self._pid = None
        try:
            self.acquire()
        except OSError as exc:  # never break a fork over a lease
            log.warning(
                "a forked process could not register as a user in %s: %s", self.users_dir, exc
            )

    def __repr__(self) -> str:
        return f"UserLease({str(self.users_dir)!r}, path={self.path})"


_ACTIVE: weakref.WeakSet[UserLease] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lease in list(_ACTIVE):
        lease._after_fork()


def drop_inherited_leases() -> None:
    """In a process forked to become a detached supervisor: it is no user of its own server, so
    remove the leases the fork hook registered for it and register none in its own forks."""
    for lease in list(_ACTIVE):
        lease.release()
        _ACTIVE.discard(lease)


os.register_at_fork(after_in_child=_after_fork_in_child)
