"""Crash safety, the short version of ``scripts/torture.py`` (``make torture`` runs the long one).

Two writer processes (psycopg and asyncpg, autocommit INSERTs and multi-statement transactions)
write while Node is SIGKILLed and the supervisor restarts it: no acknowledged commit may be
missing, no transaction half-applied, no transaction present whose COMMIT was never sent. And a
SIGTERM that lands inside a 200k-row transaction leaves all of it or none of it.
"""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from helpers import FAST, REPO

from hive_bridge import Bridge

sys.path.insert(0, str(REPO / "scripts"))
import torture

pytestmark = [pytest.mark.bridge, pytest.mark.timeout(120)]

#: these tests crash the server on purpose, more often than a crash loop would
CRASH_OK = replace(FAST, startretries=20)


def test_no_acknowledged_commit_is_lost_when_node_is_killed(fresh_data_dir: Path) -> None:
    seed = random.randrange(1 << 30)
    lines: list[str] = [f"seed {seed}"]
    run = torture.Torture(fresh_data_dir, seed=seed, options=CRASH_OK, out=lines.append)
    run.setup()
    for n in range(1, 4):
        run.node_kill_cycle(n, 3)
    report = "\n".join(lines)

    assert run.res.failures == [], report
    verdict = run.res.last_verdict
    assert verdict is not None
    assert verdict.missing == [], report
    assert verdict.acked > 100, report  # the writers really wrote, before and after each kill
    assert run.res.cycles == 3
    # every start and every supervisor restart opened the data dir
    assert (run.res.opens_ok, run.res.opens_failed) == (1 + 3 * 2, 0), report


def test_sigterm_during_a_large_transaction_is_all_or_nothing(fresh_data_dir: Path) -> None:
    lines: list[str] = []
    run = torture.Torture(fresh_data_dir, seed=1, options=CRASH_OK, out=lines.append)
    with Bridge(fresh_data_dir, options=CRASH_OK) as bridge:
        run.setup(bridge.dsn)
        outcomes = {
            shape: run.big_transaction("node", shape, bridge) for shape in torture.BIG_SHAPES
        }
    report = "\n".join(lines)

    # each check inside: 0 or 200k rows, 200k when acknowledged, 0 when COMMIT never arrived
    assert run.res.failures == [], report
    assert run.res.last_verdict is not None
    assert run.res.last_verdict.missing == [], report
    # all rows written, COMMIT not sent when SIGTERM came: the client must not think it committed
    assert outcomes["held open"] == torture.ABORTED, report
    assert run.ledger.big[0] == torture.ABORTED


def test_the_verifier_catches_loss_half_applied_and_phantom_rows(fresh_data_dir: Path) -> None:
    """The checks above are only worth something if they fail on damage: damage a database on
    purpose and see every kind reported."""
    run = torture.Torture(fresh_data_dir, seed=2, options=FAST, out=lambda _: None)
    with Bridge(fresh_data_dir, options=FAST) as bridge:
        run.setup(bridge.dsn)
        writers = torture.Writers(bridge.dsn, bridge.asyncpg_dsn, [0, 1], seed=2)
        try:
            writers.wait_writing(minimum=50)
        finally:
            logs = writers.finish()
        for wlog in logs:
            run.ledger.add(wlog)
        assert torture.judge_errors(logs, None, None) == []
        assert torture.verify(bridge.dsn, run.ledger).ok

        auto = next(k for k, (o, _) in run.ledger.auto.items() if o == torture.ACKED)
        txn = next(k for k, t in run.ledger.txn.items() if t[0] == torture.ACKED)
        with psycopg.connect(bridge.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM t_auto WHERE writer = %s AND seq = %s", auto)
            conn.execute("DELETE FROM t_txn WHERE writer = %s AND seq = %s AND part = 1", txn)
            conn.execute("UPDATE t_accounts SET balance = balance + 7 WHERE id = 3")
            conn.execute("INSERT INTO t_auto VALUES (99, 1, 1, '99-1-0|')")
            conn.execute(
                "UPDATE t_auto SET payload = 'x' WHERE seq = (SELECT max(seq) FROM t_auto)"
            )
        verdict = torture.verify(bridge.dsn, run.ledger)

    assert f"auto{auto}" in verdict.missing
    problems = "\n".join(verdict.problems)
    assert f"txn{txn} is half-applied" in problems
    assert "account balances" in problems
    assert "auto(99, 1) is present but no writer tried to write it" in problems
    assert "corrupted payload" in problems
