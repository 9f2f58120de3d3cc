"""Supervision with real processes: busy is not hung, a server that ran is always brought back.

- A statement that keeps the backend busy for 3x the health thresholds completes, nobody restarts
  Node, and meanwhile ``status`` and ``/stats`` say what runs.
- A SIGSTOPped Node (its event loop dead) is restarted (tests/test_lifecycle.py has that one).
- Ten SIGKILLs of Node under one supervisor: back every time, every acknowledged commit present.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from helpers import FAST, REPO, run_cli, wait_until

from hive_bridge import Bridge, State
from hive_bridge.config import load_bridge_settings

sys.path.insert(0, str(REPO / "scripts"))
import torture

pytestmark = [pytest.mark.bridge, pytest.mark.timeout(300)]


def test_a_busy_backend_is_never_restarted(fresh_data_dir: Path) -> None:
    """Small thresholds through the HIVE_BRIDGE_* settings; a statement 3x as long as them."""
    settings = load_bridge_settings(
        {
            "HIVE_BRIDGE_HEALTH_INTERVAL": "0.5",
            "HIVE_BRIDGE_HEALTH_TIMEOUT": "1",
            "HIVE_BRIDGE_HEALTH_FAILURES": "2",
        },
        dotenv=False,
    )
    bridge = Bridge(fresh_data_dir, settings=settings)
    options = bridge.options
    assert (options.health_interval, options.health_timeout, options.health_failures) == (
        0.5,
        1.0,
        2,
    )
    # what a hang would need to be noticed: every check unanswered, each after its full timeout
    threshold = options.health_failures * (options.health_interval + options.health_timeout)
    # at least 3x that; long enough for the CLI to look while it runs on a loaded machine
    seconds = max(round(3 * threshold, 1), 20.0)
    with bridge:
        pid = bridge.node_pid
        result: list[object] = []
        statement = f"SELECT pg_sleep({seconds}), 'done' AS busy_for_a_while"

        def run() -> None:
            with psycopg.connect(bridge.dsn, application_name="long-job") as conn:
                result.extend(conn.execute(statement).fetchall())

        worker = threading.Thread(target=run)
        worker.start()
        try:
            # meanwhile /stats (through Bridge.status) and the CLI say what the backend does
            def running() -> dict[str, object] | None:
                stats = bridge.status().get("stats") or {}
                activity = stats.get("activity") or {}
                return activity if activity.get("backend") == "running" else None

            activity = wait_until(running, timeout=60, what="/stats to report a running backend")
            holder = activity["holder"]
            assert isinstance(holder, dict) and holder["application_name"] == "long-job"
            cli = run_cli("status", "--data-dir", str(fresh_data_dir))
            assert cli.returncode == 0, cli.stderr
            assert "backend: running a statement" in cli.stdout, cli.stdout
            assert "long-job" in cli.stdout
            doc = json.loads(run_cli("status", "--json", "--data-dir", str(fresh_data_dir)).stdout)
            assert doc["restarts"] == 0
        finally:
            worker.join(120)
        assert result == [("", "done")]
        assert bridge.node_pid == pid
        status = bridge.status()
        assert status["restarts"] == 0
        assert status["last_exit"] is None
        # the watchdog really looked while the statement ran (it is not simply switched off)
        assert bridge.supervisor is not None
        assert bridge.supervisor.activity() is not None


def test_node_killed_ten_times_comes_back_every_time(fresh_data_dir: Path) -> None:
    """One supervisor, the default restart policy: no FATAL after any number of crashes of a server
    that ran; writers keep writing across the restarts and lose nothing acknowledged."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    lines: list[str] = [f"seed {seed}"]
    run = torture.Torture(fresh_data_dir, seed=seed, options=FAST, out=lines.append)
    options = replace(FAST, startsecs=5.0)  # every kill below is "soon after start": backoff grows
    with Bridge(fresh_data_dir, options=options) as bridge:
        run.setup(bridge.dsn)
        writers = torture.Writers(bridge.dsn, bridge.asyncpg_dsn, [0, 1], seed)
        try:
            writers.wait_writing(minimum=5, timeout=60)
            for n in range(1, 11):
                old = bridge.node_pid
                assert old is not None
                before = writers.acked()
                os.kill(old, signal.SIGKILL)

                def back(old: int = old) -> bool:
                    pid = bridge.node_pid
                    return bridge.state == State.RUNNING.value and pid not in (None, old)

                wait_until(back, timeout=120, what=f"a RUNNING server after kill {n}")
                # 1-2 s after the kill at the earliest, and only once the writers got through again
                writers.wait_more(before, minimum=3, timeout=60)
                threading.Event().wait(rng.uniform(0.0, 0.5))
                assert bridge.state != State.FATAL.value
        finally:
            logs = writers.finish()
        status = bridge.status()
        for wlog in logs:
            run.ledger.add(wlog)
        verdict = torture.verify(bridge.dsn, run.ledger)
    report = "\n".join(lines)
    assert verdict.missing == [], report
    assert verdict.ok, verdict.summary()
    assert verdict.acked > 50
    assert [w.crash for w in logs] == [None, None]
    assert status["restarts"] == 10
    assert status["last_exit"] == "terminated by SIGKILL; not expected"
