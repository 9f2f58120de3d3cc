#!/usr/bin/env python3
"""Crash-safety torture for hive-bridge: kill the server while two clients write, then check that no
acknowledged commit was lost.

    python scripts/torture.py              # 20 cycles and the special scenarios, about 3-4 minutes
    python scripts/torture.py --cycles 3   # quicker
    make torture

What it does, all on one data dir (a fresh temp dir unless --data-dir is given):

1. ``--cycles`` times: start a server through the supervisor (``Bridge(...).start()``), let two
   writer processes (one psycopg, one asyncpg, each its own connection) write in a loop - autocommit
   INSERTs and small multi-statement transactions (2-5 INSERTs plus a transfer between two accounts)
   - SIGKILL the Node process at a random moment, let the supervisor restart it on the same port,
   let the writers reconnect and write on, stop them, verify, stop the server.
2. SIGKILL the Python supervisor itself mid-write: the detached one ``hive-bridge start`` runs,
   once alone (Node notices and exits by itself) and once together with Node, and the one
   applications share (``Bridge(shared=True)``, as ``create_engine`` starts it); start again,
   verify.
3. SIGTERM during a large transaction (200k rows in one transaction, as one statement or as four),
   sent to Node or to the supervisor at moments spread over the transaction: all or nothing.
4. ``hive-bridge backup`` once, restored into a new data dir, verified - if the CLI has it.
5. Open the data dir one last time and verify everything.

A writer counts a commit as acknowledged only after the commit call returned. Verification, after
every cycle and over everything written so far:
- every acknowledged row and transaction is present (missing: the number that must be 0);
- a transaction whose COMMIT was never sent is absent, one whose COMMIT was in flight when the
  server died is all there or not at all; no row exists that no writer tried to write;
- every transaction has exactly its rows, and the account balances equal the initial balances
  plus the transfers of the transactions that are present (no half-applied transaction);
- every payload is intact, and index scans and sequential scans count the same rows.
Exit status 0 when all of that held and the data dir opened every time, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from workers import spawn_worker  # noqa: E402

from hive_bridge import Bridge, BridgeStartError, SupervisorOptions  # noqa: E402

ACCOUNTS = 10
INITIAL_BALANCE = 1_000_000
BIG_ROWS = 200_000

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS t_auto (
    writer int NOT NULL, seq bigint NOT NULL, reps int NOT NULL, payload text NOT NULL,
    PRIMARY KEY (writer, seq));
CREATE TABLE IF NOT EXISTS t_txn (
    writer int NOT NULL, seq bigint NOT NULL, part int NOT NULL, nparts int NOT NULL,
    src int NOT NULL, dst int NOT NULL, amount int NOT NULL, reps int NOT NULL, payload text NOT NULL,
    PRIMARY KEY (writer, seq, part));
CREATE TABLE IF NOT EXISTS t_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO t_accounts SELECT g, {INITIAL_BALANCE} FROM generate_series(0, {ACCOUNTS - 1}) g
    ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS t_big (batch int NOT NULL, i int NOT NULL, pad text NOT NULL);
CREATE INDEX IF NOT EXISTS t_big_batch ON t_big (batch);
"""

INSERT_AUTO = "INSERT INTO t_auto (writer, seq, reps, payload) VALUES ({})"
INSERT_TXN = (
    "INSERT INTO t_txn (writer, seq, part, nparts, src, dst, amount, reps, payload) VALUES ({})"
)
DEBIT = "UPDATE t_accounts SET balance = balance - {} WHERE id = {}"
CREDIT = "UPDATE t_accounts SET balance = balance + {} WHERE id = {}"

ACKED, UNCERTAIN, ABORTED = "acked", "uncertain", "aborted"

log = logging.getLogger("torture")


def payload(writer: int, seq: int, part: int, reps: int) -> str:
    """What a row's payload must be; the verifier rebuilds it in SQL."""
    return f"{writer}-{seq}-{part}|" * reps


def placeholders(n: int, style: str) -> str:
    return ", ".join(("%s" if style == "psycopg" else f"${i + 1}") for i in range(n))


# ============================================================================== writers


@dataclass
class Op:
    """One unit of work a writer tries: an autocommit INSERT or a transaction."""

    kind: str  # "auto" | "txn"
    seq: int
    reps: int
    nparts: int = 0
    src: int = 0
    dst: int = 0
    amount: int = 0


def next_op(rng: random.Random, seq: int, txn_share: float) -> Op:
    reps = rng.choice((1, 2, 8, 40, 200))  # 8 bytes .. a few KB per row
    if rng.random() >= txn_share:
        return Op("auto", seq, reps)
    src, dst = rng.sample(range(ACCOUNTS), 2)
    return Op("txn", seq, reps, rng.randint(2, 5), src, dst, rng.randint(1, 1000))


@dataclass
class WriterLog:
    """What one writer did: the outcome of every op, and every error with its time."""

    writer: int
    driver: str
    outcomes: dict[str, list[list[Any]]] = field(
        default_factory=lambda: {ACKED: [], UNCERTAIN: [], ABORTED: []}
    )
    errors: list[dict[str, Any]] = field(default_factory=list)
    crash: str | None = None

    def record(self, op: Op, outcome: str) -> None:
        self.outcomes[outcome].append(
            [op.kind, op.seq, op.nparts, op.src, op.dst, op.amount, time.time()]
        )

    def error(self, exc: BaseException, during: str) -> None:
        self.errors.append(
            {
                "t": time.time(),
                "type": type(exc).__name__,
                "sqlstate": getattr(exc, "sqlstate", None),
                "message": str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "",
                "during": during,
            }
        )


def writer_child() -> int:
    """``torture.py --writer``: one writer process. Reads its settings as one JSON line on stdin,
    writes until stdin closes (the parent's stop, or its death), reports ``A <acked>`` lines while
    it runs (at most every 20 ms) and its :class:`WriterLog` as one ``R <json>`` line at the end."""
    cfg = json.loads(sys.stdin.readline())
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    acked = 0
    last = 0.0

    def on_ack() -> None:
        nonlocal acked, last
        acked += 1
        now = time.monotonic()
        if now - last >= 0.02:
            last = now
            print(f"A {acked}", flush=True)

    wlog = WriterLog(cfg["writer"], cfg["driver"])
    rng = random.Random(cfg["seed"])
    try:
        if cfg["driver"] == "psycopg":
            _psycopg_writer(cfg["dsn"], wlog, rng, cfg["txn_share"], stop, on_ack)
        else:
            asyncio.run(
                _asyncpg_writer(cfg["asyncpg_dsn"], wlog, rng, cfg["txn_share"], stop, on_ack)
            )
    except BaseException:
        wlog.crash = traceback.format_exc()
    print(f"A {acked}", flush=True)
    print("R " + json.dumps(wlog.__dict__), flush=True)
    return 0


def _psycopg_writer(
    dsn: str,
    wlog: WriterLog,
    rng: random.Random,
    txn_share: float,
    stop: threading.Event,
    on_ack: Callable[[], None],
) -> None:
    conn: psycopg.Connection[Any] | None = None
    seq = 0
    w = wlog.writer
    while not stop.is_set():
        if conn is None:
            try:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
            except psycopg.Error as exc:
                wlog.error(exc, "connect")
                time.sleep(0.03)
                continue
        seq += 1
        op = next_op(rng, seq, txn_share)
        commit_sent = False
        try:
            if op.kind == "auto":
                commit_sent = True  # an autocommit statement commits as it runs
                conn.execute(
                    INSERT_AUTO.format(placeholders(4, "psycopg")),
                    (w, seq, op.reps, payload(w, seq, 0, op.reps)),
                )
            else:
                conn.execute("BEGIN")
                for part in range(op.nparts):
                    conn.execute(
                        INSERT_TXN.format(placeholders(9, "psycopg")),
                        (
                            w,
                            seq,
                            part,
                            op.nparts,
                            op.src,
                            op.dst,
                            op.amount,
                            op.reps,
                            payload(w, seq, part, op.reps),
                        ),
                    )
                conn.execute(DEBIT.format("%s", "%s"), (op.amount, op.src))
                conn.execute(CREDIT.format("%s", "%s"), (op.amount, op.dst))
                commit_sent = True
                conn.execute("COMMIT")
        except psycopg.Error as exc:
            wlog.error(exc, op.kind)
            wlog.record(op, UNCERTAIN if commit_sent else ABORTED)
            with contextlib.suppress(Exception):
                conn.close()
            conn = None
            continue
        wlog.record(op, ACKED)
        on_ack()
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


async def _asyncpg_writer(
    dsn: str,
    wlog: WriterLog,
    rng: random.Random,
    txn_share: float,
    stop: threading.Event,
    on_ack: Callable[[], None],
) -> None:
    import asyncpg  # only the asyncpg writer process needs it

    conn: Any = None
    seq = 0
    w = wlog.writer
    while not stop.is_set():
        if conn is None:
            try:
                conn = await asyncpg.connect(dsn, timeout=3)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                wlog.error(exc, "connect")
                await asyncio.sleep(0.03)
                continue
        seq += 1
        op = next_op(rng, seq, txn_share)
        commit_sent = False
        try:
            if op.kind == "auto":
                commit_sent = True
                await conn.execute(
                    INSERT_AUTO.format(placeholders(4, "asyncpg")),
                    w,
                    seq,
                    op.reps,
                    payload(w, seq, 0, op.reps),
                )
            else:
                async with conn.transaction():
                    rows = [
                        (
                            w,
                            seq,
                            part,
                            op.nparts,
                            op.src,
                            op.dst,
                            op.amount,
                            op.reps,
                            payload(w, seq, part, op.reps),
                        )
                        for part in range(op.nparts)
                    ]
                    if seq % 2:
                        await conn.executemany(INSERT_TXN.format(placeholders(9, "asyncpg")), rows)
                    else:
                        for row in rows:
                            await conn.execute(INSERT_TXN.format(placeholders(9, "asyncpg")), *row)
                    await conn.execute(DEBIT.format("$1", "$2"), op.amount, op.src)
                    await conn.execute(CREDIT.format("$1", "$2"), op.amount, op.dst)
                    commit_sent = True  # leaving the block sends COMMIT
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            wlog.error(exc, op.kind)
            wlog.record(op, UNCERTAIN if commit_sent else ABORTED)
            with contextlib.suppress(Exception):
                conn.terminate()
            conn = None
            continue
        wlog.record(op, ACKED)
        on_ack()
    if conn is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 3)


class Writers:
    """Writer processes (``torture.py --writer``), alternately psycopg and asyncpg, one connection
    each, writing to one DSN until :meth:`finish`."""

    def __init__(
        self, dsn: str, asyncpg_dsn: str, ids: list[int], seed: int, txn_share: float = 0.4
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.counts = [0] * len(ids)
        self.reports: list[str | None] = [None] * len(ids)
        self.readers: list[threading.Thread] = []
        for i, writer in enumerate(ids):
            cfg = {
                "dsn": dsn,
                "asyncpg_dsn": asyncpg_dsn,
                "writer": writer,
                "driver": "psycopg" if i % 2 == 0 else "asyncpg",
                "seed": seed * 1000 + writer,
                "txn_share": txn_share,
            }
            proc = spawn_worker(__file__, "--writer", cfg)
            reader = threading.Thread(target=self._read, args=(i, proc), daemon=True)
            reader.start()
            self.procs.append(proc)
            self.readers.append(reader)

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("A "):
                self.counts[i] = int(line[2:])
            elif line.startswith("R "):
                self.reports[i] = line[2:]

    def acked(self) -> list[int]:
        return list(self.counts)

    def wait_writing(self, minimum: int = 5, timeout: float = 30.0) -> None:
        """Until every writer has had ``minimum`` commits acknowledged."""
        deadline = time.monotonic() + timeout
        while min(self.acked()) < minimum:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"writers did not start writing within {timeout}s: {self.acked()}"
                )
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a writer process died before it started writing")
            time.sleep(0.02)

    def wait_more(self, than: list[int], minimum: int = 5, timeout: float = 30.0) -> None:
        """Until every writer has ``minimum`` more acknowledged commits than in ``than``."""
        deadline = time.monotonic() + timeout
        while any(now - before < minimum for now, before in zip(self.acked(), than, strict=True)):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"writers did not write again within {timeout}s (acked {self.acked()}, "
                    f"before {than})"
                )
            time.sleep(0.02)

    def finish(self, timeout: float = 30.0) -> list[WriterLog]:
        """Stop the writers (close their stdin) and collect what each of them did."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        deadline = time.monotonic() + timeout
        for proc, reader in zip(self.procs, self.readers, strict=True):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(5)
        logs = [WriterLog(**json.loads(r)) for r in self.reports if r is not None]
        if len(logs) != len(self.procs):
            raise RuntimeError(f"only {len(logs)} of {len(self.procs)} writers reported back")
        return logs


# ============================================================================== the ledger


@dataclass
class Ledger:
    """Every op any writer tried, with its outcome; the source of truth for verification."""

    #: (writer, seq) -> (outcome, time.time() when the outcome was known)
    auto: dict[tuple[int, int], tuple[str, float]] = field(default_factory=dict)
    #: (writer, seq) -> (outcome, nparts, src, dst, amount, time)
    txn: dict[tuple[int, int], tuple[str, int, int, int, int, float]] = field(default_factory=dict)
    big: dict[int, str] = field(default_factory=dict)  # batch -> outcome

    def add(self, wlog: WriterLog) -> None:
        for outcome, ops in wlog.outcomes.items():
            for kind, seq, nparts, src, dst, amount, t in ops:
                key = (wlog.writer, seq)
                if kind == "auto":
                    self.auto[key] = (outcome, t)
                else:
                    self.txn[key] = (outcome, nparts, src, dst, amount, t)

    def count(self, outcome: str) -> int:
        return (
            sum(1 for a in self.auto.values() if a[0] == outcome)
            + sum(1 for t in self.txn.values() if t[0] == outcome)
            + sum(1 for o in self.big.values() if o == outcome)
        )


@dataclass
class Verdict:
    acked: int = 0
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    uncertain_present: int = 0
    uncertain_absent: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problems

    def summary(self) -> str:
        if self.ok:
            return "verify OK"
        bits = []
        if self.missing:
            bits.append(f"MISSING {len(self.missing)}: {', '.join(self.missing[:5])}")
        bits += self.problems[:5]
        return "verify FAILED: " + "; ".join(bits)


def verify(dsn: str, ledger: Ledger, acked_before: float | None = None) -> Verdict:
    """Check everything in the ledger against the database (see the module docstring).

    ``acked_before`` (a time.time() value) is for a snapshot such as a backup: only what was
    acknowledged before it must be there; what was acknowledged later may or may not be.
    """
    v = Verdict(acked=ledger.count(ACKED))

    def required(outcome: str, t: float) -> bool:
        return outcome == ACKED and (acked_before is None or t < acked_before)

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        # autocommit rows
        present_auto: dict[tuple[int, int], bool] = {}
        for writer, seq, ok in conn.execute(
            "SELECT writer, seq, payload = repeat(writer || '-' || seq || '-0|', reps) FROM t_auto"
        ):
            present_auto[(writer, seq)] = ok
        for key, (outcome, t) in ledger.auto.items():
            here = key in present_auto
            if required(outcome, t) and not here:
                v.missing.append(f"auto{key}")
            elif outcome == ABORTED and here:
                v.problems.append(f"auto{key} is present but its INSERT failed before it was sent")
            elif outcome == UNCERTAIN:
                v.uncertain_present += here
                v.uncertain_absent += not here
        for key, ok in present_auto.items():
            if key not in ledger.auto:
                v.problems.append(f"auto{key} is present but no writer tried to write it")
            elif not ok:
                v.problems.append(f"auto{key} has a corrupted payload")

        # transactions: each one complete or absent, and the balances follow from them
        groups = {}
        for row in conn.execute(
            "SELECT writer, seq, count(*), min(nparts), max(nparts), min(src), max(src), "
            "min(dst), max(dst), min(amount), max(amount), "
            "bool_and(payload = repeat(writer || '-' || seq || '-' || part || '|', reps)) "
            "FROM t_txn GROUP BY writer, seq"
        ):
            groups[(row[0], row[1])] = row[2:]
        expected = [INITIAL_BALANCE] * ACCOUNTS
        for key, (n, nmin, nmax, smin, smax, dmin, dmax, amin, amax, ok) in groups.items():
            entry = ledger.txn.get(key)
            if entry is None:
                v.problems.append(f"txn{key} is present but no writer tried to write it")
                continue
            outcome, nparts, src, dst, amount, _t = entry
            if outcome == ABORTED:
                v.problems.append(f"txn{key} is present but its COMMIT was never sent")
            if (n, nmin, nmax, smin, smax, dmin, dmax, amin, amax) != (
                nparts,
                nparts,
                nparts,
                src,
                src,
                dst,
                dst,
                amount,
                amount,
            ):
                v.problems.append(f"txn{key} is half-applied: {n} of {nparts} rows")
            if not ok:
                v.problems.append(f"txn{key} has a corrupted payload")
            expected[src] -= amount
            expected[dst] += amount
        for key, (outcome, *_rest, t) in ledger.txn.items():
            here = key in groups
            if required(outcome, t) and not here:
                v.missing.append(f"txn{key}")
            elif outcome == UNCERTAIN:
                v.uncertain_present += here
                v.uncertain_absent += not here
        balances = [b for (b,) in conn.execute("SELECT balance FROM t_accounts ORDER BY id")]
        if balances != expected:
            v.problems.append(
                f"account balances {balances} differ from the transactions present {expected} "
                "(a half-applied transaction)"
            )

        # large transactions: all or nothing
        counts = dict(conn.execute("SELECT batch, count(*) FROM t_big GROUP BY batch").fetchall())
        for batch, outcome in ledger.big.items():
            n = counts.get(batch, 0)
            if n not in (0, BIG_ROWS):
                v.problems.append(f"big batch {batch} is half-applied: {n} of {BIG_ROWS} rows")
            elif outcome == ACKED and n == 0:
                v.missing.append(f"big{batch}")
            elif outcome == ABORTED and n:
                v.problems.append(f"big batch {batch} is present but its COMMIT was never sent")
            elif outcome == UNCERTAIN:
                v.uncertain_present += n == BIG_ROWS
                v.uncertain_absent += n == 0
        for batch in counts:
            if batch not in ledger.big:
                v.problems.append(f"big batch {batch} is present but was never written")

        # indexes and heap agree
        for table in ("t_auto", "t_txn", "t_big"):
            with conn.transaction():
                conn.execute("SET LOCAL enable_seqscan = off")
                by_index = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                conn.execute("SET LOCAL enable_indexonlyscan = off")
                conn.execute("SET LOCAL enable_bitmapscan = off")
                by_heap = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            if by_index != by_heap:
                v.problems.append(
                    f"{table}: an index scan counts {by_index} rows, the heap {by_heap}"
                )
    return v


def judge_errors(
    logs: list[WriterLog], t_kill: float | None, t_ready: float | None, grace: float = 1.5
) -> list[str]:
    """Writer errors are expected only between the kill and shortly after the server is back
    (``t_kill`` None: nothing was killed, so no error is expected)."""
    bad = []
    for wlog in logs:
        if wlog.crash:
            bad.append(f"writer {wlog.writer} ({wlog.driver}) crashed:\n{wlog.crash}")
        for err in wlog.errors:
            if t_kill is None or t_ready is None:
                when = "with no kill"
            elif not (t_kill - 0.05 <= err["t"] <= t_ready + grace):
                when = "before the kill" if err["t"] < t_kill else "after the server was back"
            else:
                continue
            bad.append(
                f"writer {wlog.writer} ({wlog.driver}) got {err['type']} "
                f"[{err['sqlstate']}] {when} during {err['during']}: {err['message']}"
            )
    return bad


# ============================================================================== servers


def query_one(dsn: str, sql: str, timeout: float = 5) -> Any:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout))) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def wait_sql(dsn: str, timeout: float = 60.0, not_pid: Callable[[], bool] | None = None) -> float:
    """Poll ``SELECT 1`` on fresh connections until it answers; returns time.time() of success."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not_pid is None or not_pid():
            try:
                query_one(dsn, "SELECT 1", timeout=1)
                return time.time()
            except psycopg.Error as exc:
                last = exc
        time.sleep(0.02)
    raise RuntimeError(f"the server did not answer SELECT 1 within {timeout}s (last: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``hive-bridge ARGS`` (as ``python -m hive_bridge``, the same program)."""
    return subprocess.run(
        [sys.executable, "-m", "hive_bridge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )


def cli_has(command: str) -> bool:
    out = cli("--help", timeout=30).stdout
    return any(line.split()[:1] == [command] for line in out.splitlines())


def without_gssencmode(dsn: str) -> str:
    """asyncpg sends unknown DSN parameters to the server as settings; it knows no gssencmode."""
    parts = urllib.parse.urlsplit(dsn)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "gssencmode"]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@dataclass
class CliServer:
    """A server run by a detached ``hive-bridge start`` supervisor."""

    data_dir: Path
    port: int
    dsn: str = ""
    asyncpg_dsn: str = ""

    def start(self) -> None:
        done = cli("start", "--data-dir", str(self.data_dir), "--port", str(self.port))
        if done.returncode != 0:
            raise BridgeStartError(
                data_dir=str(self.data_dir),
                reason=f"`hive-bridge start` exited {done.returncode}: {done.stderr.strip()}",
            )
        self.dsn = done.stdout.strip().splitlines()[-1]
        self.asyncpg_dsn = without_gssencmode(self.dsn)

    def status(self) -> dict[str, Any]:
        done = cli("status", "--json", "--data-dir", str(self.data_dir), timeout=30)
        return dict(json.loads(done.stdout)) if done.stdout.strip() else {}

    def stop(self) -> None:
        cli("stop", "--data-dir", str(self.data_dir), timeout=60)


@dataclass
class SharedServer:
    """A server run by the detached supervisor applications share (``Bridge(shared=True)``, what
    ``create_engine`` uses): each :meth:`start` is one more application use of it."""

    data_dir: Path
    port: int
    log_level: str = "INFO"
    dsn: str = ""
    asyncpg_dsn: str = ""
    bridges: list[Bridge] = field(default_factory=list)

    def start(self) -> None:
        bridge = Bridge(self.data_dir, shared=True, port=self.port, log_level=self.log_level)
        self.bridges.append(bridge.start())
        self.dsn, self.asyncpg_dsn = bridge.dsn, bridge.asyncpg_dsn

    def status(self) -> dict[str, Any]:
        return self.bridges[-1].status()

    def stop(self) -> None:
        """End every use; the supervisor then stops by itself: wait until it has."""
        pid = self.bridges[-1].status().get("supervisor_pid") if self.bridges else None
        for bridge in self.bridges:
            bridge.stop()
        if pid:
            wait_gone(int(pid), 30)


def wait_gone(pid: int, timeout: float) -> float:
    """Wait for process ``pid`` to end; return how long it took."""
    t0 = time.monotonic()
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"process {pid} still lives after {timeout}s")
            time.sleep(0.02)
    return time.monotonic() - t0


# ============================================================================== the run


@dataclass
class Results:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    restarts_node_kill: list[float] = field(default_factory=list)
    restarts_other: dict[str, list[float]] = field(default_factory=dict)
    opens_ok: int = 0
    opens_failed: int = 0
    cycles: int = 0
    specials: list[str] = field(default_factory=list)
    backup: str = "not run"
    uncertain_present: int = 0
    uncertain_absent: int = 0
    last_verdict: Verdict | None = None


class Torture:
    def __init__(
        self,
        data_dir: Path,
        *,
        seed: int,
        options: SupervisorOptions | None = None,
        out: Callable[[str], None] = print,
        log_level: str = "INFO",
    ) -> None:
        self.data_dir = data_dir
        self.rng = random.Random(seed)
        self.seed = seed
        self.options = options or SupervisorOptions()
        self.ledger = Ledger()
        self.res = Results()
        self.out = out
        self.next_writer = 0
        self.next_batch = 0
        self.log_level = log_level
        self._cli: CliServer | None = None

    # ------------------------------------------------------------------ helpers

    def say(self, line: str) -> None:
        self.res.lines.append(line)
        self.out(line)

    def fail(self, what: str) -> None:
        self.res.failures.append(what)
        self.say(f"  FAIL: {what}")

    def writer_ids(self) -> list[int]:
        ids = [self.next_writer, self.next_writer + 1]
        self.next_writer += 2
        return ids

    def open_bridge(self) -> Bridge:
        try:
            bridge = Bridge(self.data_dir, options=self.options, log_level=self.log_level).start()
        except BridgeStartError as exc:
            self.res.opens_failed += 1
            raise RuntimeError(f"the data dir did not open: {exc}") from exc
        self.res.opens_ok += 1
        return bridge

    def open_cli(self, port: int) -> CliServer:
        server = CliServer(self.data_dir, port)
        self._cli = server
        try:
            server.start()
        except BridgeStartError as exc:
            self.res.opens_failed += 1
            raise RuntimeError(f"the data dir did not open: {exc}") from exc
        self.res.opens_ok += 1
        return server

    def check(self, dsn: str, label: str) -> Verdict:
        verdict = verify(dsn, self.ledger)
        self.res.last_verdict = verdict
        if not verdict.ok:
            self.fail(f"{label}: {verdict.summary()}")
        return verdict

    def setup(self, dsn: str | None = None) -> None:
        """Create the tables (on a new server for the data dir unless ``dsn`` is given)."""
        if dsn is not None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SCHEMA)
            return
        with self.open_bridge() as bridge, psycopg.connect(bridge.dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)

    # ------------------------------------------------------------------ scenarios

    def node_kill_cycle(self, n: int, total: int) -> None:
        """Start, write from two clients, SIGKILL Node, supervisor restarts it, write on, verify."""
        t0 = time.monotonic()
        t0_wall = time.time()
        bridge = self.open_bridge()
        try:
            writers = Writers(bridge.dsn, bridge.asyncpg_dsn, self.writer_ids(), self.seed + n)
            try:
                writers.wait_writing()
                time.sleep(self.rng.uniform(0.2, 2.5))
                old = bridge.node_pid
                assert old is not None
                before = writers.acked()
                t_kill = time.time()
                os.kill(old, signal.SIGKILL)
                t_ready = wait_sql(bridge.dsn, not_pid=lambda: bridge.node_pid not in (None, old))
                self.res.opens_ok += 1  # the supervisor reopened the data dir
                restart = t_ready - t_kill
                self.res.restarts_node_kill.append(restart)
                writers.wait_more(writers.acked())
                time.sleep(self.rng.uniform(0.1, 0.5))
            finally:
                logs = writers.finish()
            for wlog in logs:
                self.ledger.add(wlog)
            for problem in judge_errors(logs, t_kill, t_ready):
                self.fail(f"cycle {n}: {problem}")
            verdict = self.check(bridge.dsn, f"cycle {n}")
            restarts = bridge.status().get("restarts")
        finally:
            bridge.stop()
        self.res.cycles += 1
        acked_now = sum(len(w.outcomes[ACKED]) for w in logs)
        unc = sum(len(w.outcomes[UNCERTAIN]) for w in logs)
        self.say(
            f"cycle {n:2d}/{total} node SIGKILL at +{t_kill - t0_wall:4.1f}s (pid {old}, "
            f"{sum(before)} acked before)  restart {restart:4.2f}s  supervisor restarts={restarts}  "
            f"acked {acked_now:5d} (+{unc} in flight)  total acked {verdict.acked:6d}  "
            f"missing {len(verdict.missing)}  {verdict.summary()}  [{time.monotonic() - t0:4.1f}s]"
        )

    def supervisor_kill(self, harsh: bool, shared: bool = False) -> None:
        """SIGKILL the detached Python supervisor mid-write (with ``harsh``, Node too): the one
        ``hive-bridge start`` runs, or with ``shared`` the one applications share; start again."""
        label = "supervisor+node SIGKILL" if harsh else "supervisor SIGKILL"
        label += " (shared, as create_engine starts it)" if shared else " (hive-bridge start)"
        t0 = time.monotonic()
        port = free_port()
        server: CliServer | SharedServer
        if shared:
            server = SharedServer(self.data_dir, port, log_level=self.log_level)
            try:
                server.start()
            except BridgeStartError as exc:
                self.res.opens_failed += 1
                raise RuntimeError(f"the data dir did not open: {exc}") from exc
            self.res.opens_ok += 1
        else:
            server = self.open_cli(port)
        node_exit = 0.0
        try:
            st = server.status()
            sup_pid, node_pid = int(st["supervisor_pid"]), int(st["node_pid"])
            writers = Writers(server.dsn, server.asyncpg_dsn, self.writer_ids(), self.seed + 777)
            try:
                writers.wait_writing()
                time.sleep(self.rng.uniform(0.3, 2.0))
                t_kill = time.time()
                os.kill(sup_pid, signal.SIGKILL)
                if harsh:
                    os.kill(node_pid, signal.SIGKILL)
                node_exit = wait_gone(node_pid, 30)
                # the application (or the user) starts it again: same port, same password, so
                # the writers reconnect by themselves
                server.start()
                self.res.opens_ok += 1
                t_ready = wait_sql(server.dsn)
                self.res.restarts_other.setdefault(label, []).append(t_ready - t_kill)
                writers.wait_more(writers.acked())
                time.sleep(0.3)
            finally:
                logs = writers.finish()
            for wlog in logs:
                self.ledger.add(wlog)
            for problem in judge_errors(logs, t_kill, t_ready, grace=2.0):
                self.fail(f"{label}: {problem}")
            verdict = self.check(server.dsn, label)
        finally:
            server.stop()
        acked_now = sum(len(w.outcomes[ACKED]) for w in logs)
        line = (
            f"special  {label}: supervisor pid {sup_pid} killed"
            + (
                f", node pid {node_pid} killed"
                if harsh
                else f", node exited by itself in {node_exit:.2f}s"
            )
            + f"; started again in {t_ready - t_kill:4.2f}s  acked {acked_now}  "
            f"total acked {verdict.acked}  missing {len(verdict.missing)}  {verdict.summary()}  "
            f"[{time.monotonic() - t0:4.1f}s]"
        )
        self.res.specials.append(line)
        self.say(line)

    def big_transaction(self, target: str, shape: str, bridge: Bridge | None = None) -> str:
        """A 200k-row transaction and a SIGTERM to ``target`` (``node`` or ``supervisor``).

        ``shape`` says where the signal lands:
        - ``held open``: all 200k rows inserted in four statements, COMMIT not yet sent (it is sent
          only after the server died, so it never arrives): must be absent;
        - ``mid-statement``: while one 200k-row INSERT runs inside BEGIN: must be absent;
        - ``autocommit``: while one autocommit 200k-row INSERT runs: all or nothing;
        - ``commit in flight``: just as COMMIT is sent after four INSERTs: all or nothing.
        ``node`` targets a supervised ``Bridge`` (``bridge`` if given, else a new one) and waits for
        the supervisor to restart Node; ``supervisor`` targets a detached ``hive-bridge start``
        supervisor and starts it again. Returns the outcome the client saw.
        """
        batch = self.next_batch
        self.next_batch += 1
        t0 = time.monotonic()
        own_bridge = False
        server: CliServer | None = None
        if target == "node":
            if bridge is None:
                bridge = self.open_bridge()
                own_bridge = True
            dsn = bridge.dsn
            node_pid = bridge.node_pid
            pid = node_pid
        else:
            server = self.open_cli(free_port())
            dsn = server.dsn
            st = server.status()
            pid = int(st["supervisor_pid"])
            node_pid = int(st["node_pid"])
        assert pid is not None
        assert node_pid is not None
        state: dict[str, Any] = {"outcome": ABORTED, "error": None}
        armed = threading.Event()  # the moment to send the signal has come
        go_on = threading.Event()  # "held open": the server is gone, now try to COMMIT
        insert = "INSERT INTO t_big SELECT %s, g, repeat('x', 50) FROM generate_series(%s, %s) g"

        def run() -> None:
            commit_sent = False
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                    if shape == "autocommit":
                        commit_sent = True
                        armed.set()
                        conn.execute(insert, (batch, 1, BIG_ROWS))
                    elif shape == "mid-statement":
                        conn.execute("BEGIN")
                        armed.set()
                        conn.execute(insert, (batch, 1, BIG_ROWS))
                        commit_sent = True
                        conn.execute("COMMIT")
                    else:
                        conn.execute("BEGIN")
                        step = BIG_ROWS // 4
                        for k in range(4):
                            conn.execute(insert, (batch, k * step + 1, (k + 1) * step))
                        armed.set()
                        if shape == "held open":
                            go_on.wait(60)
                        else:
                            commit_sent = True
                        conn.execute("COMMIT")
                state["outcome"] = ACKED
            except psycopg.Error as exc:
                state["outcome"] = UNCERTAIN if commit_sent else ABORTED
                state["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:100]}"

        client = threading.Thread(target=run, daemon=True)
        client.start()
        n: Any = None
        verdict = Verdict()
        try:
            if not armed.wait(60):
                raise RuntimeError(f"the 200k-row client did not get going: {state}")
            if shape in ("mid-statement", "autocommit"):
                time.sleep(0.1)  # the statement is running (it takes ~0.5-1 s)
            t_term = time.time()
            os.kill(pid, signal.SIGTERM)
            node_exit = wait_gone(node_pid, 30)
            go_on.set()
            client.join(60)
            if client.is_alive():
                self.fail(f"big transaction {batch}: the client hung after SIGTERM")
            self.ledger.big[batch] = str(state["outcome"])
            if target == "node":
                assert bridge is not None
                bridge_ = bridge
                t_ready = wait_sql(dsn, not_pid=lambda: bridge_.node_pid not in (None, node_pid))
                label = "node SIGTERM"
            else:
                assert server is not None
                wait_gone(pid, 30)
                server.start()
                t_ready = wait_sql(server.dsn)
                label = "supervisor SIGTERM"
            self.res.opens_ok += 1
            self.res.restarts_other.setdefault(label, []).append(t_ready - t_term)
            n = query_one(dsn, f"SELECT count(*) FROM t_big WHERE batch = {batch}")
            verdict = self.check(dsn, f"big transaction {batch}")
        finally:
            if own_bridge and bridge is not None:
                bridge.stop()
            if server is not None:
                server.stop()
        whole = "all-or-nothing OK" if n in (0, BIG_ROWS) else "HALF-APPLIED"
        line = (
            f"special  SIGTERM to {target} during a 200k-row transaction ({shape}): client saw "
            f"{state['outcome']}"
            + (f" ({state['error']})" if state["error"] else "")
            + f"; node exited in {node_exit:.2f}s; {n} rows after restart, {whole}  "
            f"{verdict.summary()}  [{time.monotonic() - t0:4.1f}s]"
        )
        self.res.specials.append(line)
        self.say(line)
        return str(state["outcome"])

    def backup_restore(self, workdir: Path) -> None:
        """``hive-bridge backup`` while two clients write, ``restore`` into a new data dir, verify.

        The backup must hold everything acknowledged before it began, nothing half-applied, and
        balances that match its transactions; the source keeps everything. Skipped if the CLI has
        no backup command.
        """
        if not cli_has("backup"):
            self.res.backup = "skipped: `hive-bridge --help` lists no backup command"
            self.say(f"special  backup/restore {self.res.backup}")
            return
        t0 = time.monotonic()
        archive = workdir / "torture-backup.tar.gz"
        restored = workdir / "restored.db"
        bridge = self.open_bridge()
        try:
            writers = Writers(bridge.dsn, bridge.asyncpg_dsn, self.writer_ids(), self.seed + 999)
            try:
                writers.wait_writing()
                time.sleep(0.5)
                t_backup = time.time()
                done = cli("backup", "--data-dir", str(self.data_dir), str(archive))
                took = time.time() - t_backup
                writers.wait_more(writers.acked())
            finally:
                logs = writers.finish()
            for wlog in logs:
                self.ledger.add(wlog)
            for problem in judge_errors(logs, None, None):
                self.fail(f"backup: {problem}")
            # the longest time no writer got a commit through while the backup ran
            acks = sorted(op[6] for w in logs for op in w.outcomes[ACKED])
            window = [t for t in acks if t_backup - 0.5 <= t <= t_backup + took + 0.5]
            pause = max((b - a for a, b in itertools.pairwise(window)), default=took)
            self.check(bridge.dsn, "source after backup")
        finally:
            bridge.stop()
        if done.returncode != 0:
            self.fail(f"hive-bridge backup exited {done.returncode}: {done.stderr.strip()[:500]}")
            self.res.backup = "FAILED (backup)"
            return
        if not cli_has("restore"):
            self.res.backup = "backup made; no restore command to test it with"
            self.say(f"special  backup/restore: {self.res.backup}")
            return
        done = cli("restore", "--data-dir", str(restored), str(archive))
        if done.returncode != 0:
            self.fail(f"hive-bridge restore exited {done.returncode}: {done.stderr.strip()[:500]}")
            self.res.backup = "FAILED (restore)"
            return
        try:
            copy = Bridge(restored, options=self.options, log_level=self.log_level).start()
        except BridgeStartError as exc:
            self.fail(f"the restored data dir did not open: {exc}")
            self.res.backup = "FAILED (restored copy does not open)"
            return
        try:
            verdict = verify(copy.dsn, self.ledger, acked_before=t_backup)
        finally:
            copy.stop()
        if verdict.ok:
            self.res.backup = (
                f"OK: {archive.stat().st_size} bytes in {took:.2f}s while 2 clients wrote (their "
                f"longest pause {pause:.2f}s); the restored copy has every commit acknowledged "
                f"before the backup began, nothing half-applied"
            )
        else:
            self.fail(f"restored backup: {verdict.summary()}")
            self.res.backup = "FAILED (restored copy)"
        self.say(f"special  backup/restore: {self.res.backup}  [{time.monotonic() - t0:4.1f}s]")

    def final_check(self) -> None:
        with self.open_bridge() as bridge:
            verdict = self.check(bridge.dsn, "final")
        self.res.uncertain_present = verdict.uncertain_present
        self.res.uncertain_absent = verdict.uncertain_absent
        self.say(f"final    data dir opened again: {verdict.summary()}")

    def cleanup(self) -> None:
        if self._cli is not None:
            with contextlib.suppress(Exception):
                self._cli.stop()


#: where a SIGTERM lands in a 200k-row transaction (see Torture.big_transaction)
BIG_SHAPES = ("held open", "mid-statement", "autocommit", "commit in flight")


def median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}s" if xs else "-"


def report(t: Torture, elapsed: float) -> list[str]:
    r = t.res
    led = t.ledger
    v = r.last_verdict
    missing = len(v.missing) if v else "?"
    auto_acked = sum(1 for a in led.auto.values() if a[0] == ACKED)
    txn_acked = sum(1 for x in led.txn.values() if x[0] == ACKED)
    big_acked = sum(1 for o in led.big.values() if o == ACKED)
    lines = [
        "",
        "== torture report ==",
        f"seed {t.seed}, {elapsed:.0f}s, data dir {t.data_dir}",
        f"cycles (node SIGKILL, supervisor restarts it): {r.cycles}",
        f"special scenarios: {len(r.specials)}",
        f"acknowledged commits: {led.count(ACKED)} (autocommit inserts {auto_acked}, "
        f"transactions {txn_acked}, 200k-row transactions {big_acked})",
        f"in flight at a kill (may or may not be there): {led.count(UNCERTAIN)} "
        f"(found {r.uncertain_present}, absent {r.uncertain_absent}); "
        f"failed before COMMIT (must be absent): {led.count(ABORTED)}",
        f"missing acknowledged commits: {missing}  (target 0)",
        f"restart after node SIGKILL: median {median(r.restarts_node_kill)}, "
        f"max {max(r.restarts_node_kill):.2f}s (n={len(r.restarts_node_kill)})"
        if r.restarts_node_kill
        else "restart after node SIGKILL: -",
    ]
    for label, xs in r.restarts_other.items():
        lines.append(f"back after {label}: median {median(xs)}, max {max(xs):.2f}s (n={len(xs)})")
    lines += [
        f"data dir opens OK: {r.opens_ok}/{r.opens_ok + r.opens_failed}",
        f"backup/restore: {r.backup}",
        f"failures: {len(r.failures)}",
        *(f"  - {f}" for f in r.failures[:20]),
        "RESULT: " + ("PASS" if not r.failures else "FAIL"),
    ]
    return lines


def main() -> int:
    if sys.argv[1:] == ["--writer"]:
        return writer_child()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cycles", type=int, default=20, help="node SIGKILL cycles (default 20)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data dir to torture (default: a new one in a temp dir, removed on PASS)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir also on PASS")
    ap.add_argument(
        "--no-specials",
        action="store_true",
        help="only the node SIGKILL cycles (no supervisor kill, SIGTERM, backup)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="show supervisor log lines")
    ap.add_argument(
        "--max-seconds", type=int, default=900, help="give up (and fail) after this long"
    )
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    workdir = Path(tempfile.mkdtemp(prefix="hive-torture-"))
    data_dir = (args.data_dir or workdir / "torture.db").absolute()
    data_dir.parent.mkdir(parents=True, exist_ok=True)

    # the supervisor's own log lines go to a file (they would drown the per-cycle lines)
    handler: logging.Handler = logging.FileHandler(workdir / "supervisor.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    hb_log = logging.getLogger("hive_bridge")
    hb_log.addHandler(handler)
    if args.verbose:
        hb_log.addHandler(logging.StreamHandler(sys.stdout))

    t = Torture(data_dir, seed=seed, out=lambda s: print(s, flush=True))
    print(f"torture: seed {seed}, data dir {data_dir}, logs in {workdir}", flush=True)
    started = time.monotonic()
    interrupted = False

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"the run took longer than --max-seconds {args.max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    try:
        t.setup()
        for n in range(1, args.cycles + 1):
            t.node_kill_cycle(n, args.cycles)
        if not args.no_specials:
            t.supervisor_kill(harsh=False)
            t.supervisor_kill(harsh=True)
            t.supervisor_kill(harsh=False, shared=True)
            for target in ("node", "supervisor"):
                for shape in BIG_SHAPES:
                    t.big_transaction(target, shape)
            t.backup_restore(workdir)
        t.final_check()
    except KeyboardInterrupt:
        interrupted = True
        t.fail("interrupted")
    except Exception:
        t.fail(f"the run stopped on an error:\n{traceback.format_exc()}")
    finally:
        signal.alarm(0)
        t.cleanup()
    for line in report(t, time.monotonic() - started):
        print(line, flush=True)
    failed = bool(t.res.failures) or interrupted
    if failed or args.keep or args.data_dir:
        print(f"kept: {workdir} (data dir {data_dir}; server log in {data_dir}.bridge/server.log)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
