"""User leases: one file per process, live while that very process lives, forked children too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hive_bridge.leases import UserLease, live_users, parse_lease_name, users_mutex
from hive_bridge.statefile import process_create_time


def test_register_and_release(tmp_path: Path) -> None:
    users = tmp_path / "users"
    lease = UserLease(users)
    path = lease.acquire()
    assert lease.acquire() == path  # idempotent
    assert parse_lease_name(path.name) == (os.getpid(), process_create_time(os.getpid()))
    assert [u.pid for u in live_users(users)] == [os.getpid()]
    lease.release()
    lease.release()
    assert live_users(users) == []
    assert os.listdir(users) == []


def test_stale_leases_are_removed(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    created = process_create_time(dead.pid)
    dead.wait()
    (users / f"{dead.pid}-{created!r}").write_text("")
    me = os.getpid()
    (users / f"{me}-{(process_create_time(me) or 0) - 100!r}").write_text("")  # a reused pid
    (users / "not-a-lease.tmp").write_text("")
    assert live_users(users, clean=False) == []
    assert len(os.listdir(users)) == 3
    assert live_users(users) == []
    assert os.listdir(users) == ["not-a-lease.tmp"]


FORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from hive_bridge.leases import UserLease, live_users
    users = Path(sys.argv[1])
    lease = UserLease(users)
    lease.acquire()
    child = os.fork()
    if child == 0:
        pids = sorted(u.pid for u in live_users(users))
        os.write(1, f"child {os.getpid()} sees {pids}\\n".encode())
        lease.release()  # removes the child's own lease only
        os._exit(0)
    os.waitpid(child, 0)
    print("parent", os.getpid(), "sees", sorted(u.pid for u in live_users(users)), flush=True)
    """
)


def test_a_forked_child_registers_itself(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORKER, str(tmp_path / "users")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    child_line, parent_line = result.stdout.splitlines()
    _, child, _, child_sees = child_line.split(" ", 3)
    parent = parent_line.split()[1]
    assert child_sees == str(sorted([int(parent), int(child)]))
    assert parent_line.endswith(f"sees [{parent}]")  # the child's release left the parent's lease


def test_users_mutex_is_exclusive(tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / "users.lock"
    with users_mutex(lock):
        fd = os.open(lock, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                held = False
        finally:
            os.close(fd)
    assert held
    with users_mutex(lock):  # and free again afterwards
        pass
