"""pgbench: ``-i`` loads pgbench_accounts with COPY FROM STDIN; then 8 clients on 2 threads for 10 s,
in simple and in prepared mode (pgbench prepares with PQprepare, synchronously, from a thread that
also drives connections holding the backend inside a transaction), with no failed transaction.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from wire_support import WireServer

pytestmark = pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")

DURATION_S = 10


@dataclass
class Initialised:
    server: WireServer
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def pgbench_db(server_factory) -> Iterator[Initialised]:
    """A server of its own (pgbench's tables are fixed names), initialised with ``pgbench -i -s 1``."""
    server = server_factory.start()
    result = subprocess.run(
        ["pgbench", "-i", "-s", "1"],
        env=server.libpq_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    yield Initialised(server, result)
    server.stop()


def _number(pattern: str, text: str) -> int:
    m = re.search(pattern, text, re.MULTILINE)
    assert m, f"no match for {pattern!r} in pgbench output:\n{text}"
    return int(m.group(1))


@pytest.mark.timeout(120)
def test_pgbench_initialise(pgbench_db: Initialised) -> None:
    res = pgbench_db.result
    assert res.returncode == 0, f"pgbench -i failed:\n{res.stdout}\n{res.stderr}"
    assert "done in" in res.stderr
    # client-side generation: the 100000 accounts came in through COPY FROM STDIN
    assert "client-side generate" in res.stderr
    with pgbench_db.server.psycopg(autocommit=True) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_branches),"
            " (SELECT count(*) FROM pgbench_tellers), (SELECT sum(abalance) FROM pgbench_accounts)"
        ).fetchone()
    assert counts == (100000, 1, 10, 0)


@pytest.mark.timeout(DURATION_S + 60)
@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_run(pgbench_db: Initialised, mode: str) -> None:
    assert pgbench_db.result.returncode == 0, f"pgbench -i failed:\n{pgbench_db.result.stderr}"
    server = pgbench_db.server
    res = subprocess.run(
        ["pgbench", "-c", "8", "-j", "2", "-T", str(DURATION_S), "-M", mode, "-n"],
        env=server.libpq_env(),
        capture_output=True,
        text=True,
        timeout=DURATION_S + 45,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"pgbench -M {mode} exited {res.returncode}:\n{out}"
    assert f"query mode: {mode}" in out
    assert _number(r"^number of clients: (\d+)", out) == 8
    processed = _number(r"^number of transactions actually processed: (\d+)", out)
    failed = _number(r"^number of failed transactions: (\d+)", out)
    assert failed == 0, out
    assert processed > 100, out
    with server.psycopg(autocommit=True) as conn:
        # every transaction adds one history row; balances moved consistently
        history, accounts, tellers, branches = conn.execute(
            "SELECT (SELECT count(*) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts),"
            " (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)"
        ).fetchone()
        conn.execute("TRUNCATE pgbench_history")
    assert history == processed
    assert accounts == tellers == branches
