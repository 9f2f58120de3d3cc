"""The restart policy and log rotation, without processes (the real thing: test_watchdog.py)."""

from __future__ import annotations

import os
from pathlib import Path

from hive_bridge.errors import BridgeStartError, PortInUseError
from hive_bridge.logs import rotate_log
from hive_bridge.policy import RestartPolicy, SupervisorOptions

OPTIONS = SupervisorOptions(startsecs=5.0, startretries=3, immediate_restarts=2, backoff_max=5.0)


def crash(code: str | None = None) -> BridgeStartError:
    return BridgeStartError(data_dir="/d", reason="it died", exit_code=70, code=code)


def test_a_server_that_ran_is_restarted_at_once_then_with_capped_backoff() -> None:
    policy = RestartPolicy(OPTIONS)
    policy.running()
    delays = [policy.exited(1.0, "terminated by SIGKILL; not expected") for _ in range(12)]
    assert delays[:2] == [0.0, 0.0]  # at once the first times
    assert delays[2:6] == [0.1, 0.2, 0.4, 0.8]  # then exponential while it keeps dying early
    assert max(delays) == 5.0 and delays[-1] == 5.0  # capped
    assert policy.restarts == 12
    assert policy.last_exit == "terminated by SIGKILL; not expected"
    # one that stayed up startsecs is restarted at once again
    assert policy.exited(60.0, "terminated by SIGKILL; not expected") == 0.0


def test_failed_restarts_of_a_server_that_ran_never_give_up() -> None:
    policy = RestartPolicy(OPTIONS)
    policy.running()
    decisions = [policy.start_failed(crash("open_failed"), port_recorded=True) for _ in range(50)]
    assert {action for action, _ in decisions} == {"retry"}
    assert decisions[-1][1] == 5.0
    assert policy.last_exit is not None and "it died" in policy.last_exit
    # an error no retry can fix (another PGlite version, bad arguments) still ends it
    assert policy.start_failed(crash("version_mismatch"), port_recorded=True)[0] == "fatal"


def test_a_server_that_never_ran_goes_fatal_after_startretries() -> None:
    policy = RestartPolicy(OPTIONS)
    actions = [policy.start_failed(crash(), port_recorded=False)[0] for _ in range(4)]
    assert actions == ["retry", "retry", "retry", "fatal"]
    assert RestartPolicy(OPTIONS).start_failed(crash("open_failed"), port_recorded=False) == (
        "fatal",
        0.0,
    )


def test_a_taken_recorded_port_means_a_new_port_not_fatal() -> None:
    taken = PortInUseError(data_dir="/d", host="127.0.0.1", port=5555)
    assert RestartPolicy(OPTIONS).start_failed(taken, port_recorded=True) == ("new_port", 0.0)
    assert RestartPolicy(OPTIONS).start_failed(taken, port_recorded=False)[0] == "fatal"


def test_log_rotation_keeps_generations_and_writers_go_on(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as Node holds it
    try:
        for generation in range(5):
            os.write(fd, f"gen{generation} ".encode() * 100)
            assert rotate_log(log, max_bytes=100, backups=3)
        os.write(fd, b"after")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after"  # appended at the new end, no hole of NUL bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "server.log",
        "server.log.1",
        "server.log.2",
        "server.log.3",
    ]
    assert (tmp_path / "server.log.1").read_text().startswith("gen4")
    assert (tmp_path / "server.log.3").read_text().startswith("gen2")
    assert not rotate_log(log, max_bytes=100)  # small enough: left alone
