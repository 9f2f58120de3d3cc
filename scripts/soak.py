#!/usr/bin/env python3
"""Soak test for hive-bridge: 50 connections from 5 processes for a few minutes, then a report.

    python scripts/soak.py                 # 3 minutes
    python scripts/soak.py --seconds 30    # quick look
    make soak                              # SOAK_ARGS="--seconds 600" for longer

A bridge is started through the Python API (``Bridge(...).start()``) on a new data dir. Five worker
processes - three asyncpg, two psycopg (async), each with ten connections and default driver
settings, so both drivers use server-side prepared statements - run a mixed workload until the
deadline: point and range reads, autocommit INSERTs and UPDATEs, multi-statement transactions (some
rolled back on purpose), COPY FROM STDIN, NOTIFY, and a trim that keeps the tables from growing
without bound. One connection per process only LISTENs and counts what it receives.

Reported: throughput, errors by type (target 0), latency p50/p99 per operation, notifications
(every NOTIFY sent after a listener's LISTEN must reach it exactly once), the server's RSS (psutil on
the Node pid; one process, so its worker thread is included) at start, 25/50/75 % and end, its
thread count, restarts, and connections left after the clients closed.

Exit status 1 if there was any error, a lost or duplicated notification, a restart, a connection
left behind, or RSS grew from 25 % to 100 % of the run by more than --rss-growth-pct percent AND
more than --rss-growth-mb MB (defaults 20 % and 64 MB: after warm-up a steady workload on
bounded tables should not keep growing the heap).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from workers import spawn_worker  # noqa: E402

from hive_bridge import Bridge  # noqa: E402

SCHEMA = """
CREATE TABLE IF NOT EXISTS soak_items (
    id bigserial PRIMARY KEY, proc int NOT NULL, conn int NOT NULL, n int NOT NULL,
    body text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS soak_items_owner ON soak_items (proc, conn, id);
CREATE TABLE IF NOT EXISTS soak_counters (id int PRIMARY KEY, v bigint NOT NULL);
INSERT INTO soak_counters SELECT g, 0 FROM generate_series(0, 99) g ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS soak_copy (
    proc int NOT NULL, conn int NOT NULL, batch int NOT NULL, i int NOT NULL, note text NOT NULL);
CREATE INDEX IF NOT EXISTS soak_copy_owner ON soak_copy (proc, conn, batch);
INSERT INTO soak_items (proc, conn, n, body)
    SELECT -1, -1, g, repeat('seed', 10) FROM generate_series(1, 5000) g;
"""

CHANNEL = "soak_chan"

#: operation -> weight in the mix
MIX = {
    "read_point": 30,
    "read_range": 8,
    "insert": 20,
    "update": 10,
    "transaction": 14,
    "rollback": 3,
    "copy": 4,
    "notify": 8,
    "trim": 3,
}
KEEP_PER_CONN = 1000  # trim keeps this many newest rows per connection
COPY_ROWS = 100


# ============================================================================== workers


@dataclass
class WorkerReport:
    proc: int
    driver: str
    ops: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # ms
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    sent: list[list[Any]] = field(default_factory=list)  # [payload, t_start]
    listen_at: float | None = None
    received: list[str] = field(default_factory=list)
    crash: str | None = None


class Worker:
    """One process: ``conns`` connections of one driver, one of them only listening."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.report = WorkerReport(cfg["proc"], cfg["driver"])
        self.ops: Counter[str] = Counter()
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()
        self.deadline = cfg["deadline"]

    def error(self, exc: BaseException, op: str) -> None:
        key = f"{type(exc).__name__}[{getattr(exc, 'sqlstate', None) or '-'}]"
        self.errors[key] += 1
        if len(self.report.error_samples) < 10:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            self.report.error_samples.append(f"{op}: {key} {first}")

    def running(self) -> bool:
        return not self.stop.is_set() and time.time() < self.deadline

    async def run(self) -> None:
        driver = self.cfg["driver"]
        listener = self.asyncpg_listener() if driver == "asyncpg" else self.psycopg_listener()
        tasks = [asyncio.create_task(listener)]
        for conn in range(1, self.cfg["conns"]):
            job = self.asyncpg_client(conn) if driver == "asyncpg" else self.psycopg_client(conn)
            tasks.append(asyncio.create_task(job))
        tasks.append(asyncio.create_task(self.progress()))
        await asyncio.gather(*tasks)

    async def progress(self) -> None:
        while self.running():
            await asyncio.sleep(1.0)
            print(f"P {sum(self.ops.values())} {sum(self.errors.values())}", flush=True)

    # -------------------------------------------------------------- the operations, per driver

    def pick(self, rng: random.Random) -> str:
        return rng.choices(list(MIX), weights=list(MIX.values()))[0]

    async def asyncpg_client(self, conn_no: int) -> None:
        import asyncpg

        rng = random.Random(self.cfg["seed"] * 100 + conn_no)
        p = self.cfg["proc"]
        conn = await asyncpg.connect(self.cfg["asyncpg_dsn"], timeout=30)
        point = await conn.prepare("SELECT id, n, body FROM soak_items WHERE id = $1")
        seq = batch = 0
        try:
            while self.running():
                op = self.pick(rng)
                t = time.perf_counter()
                try:
                    if op == "read_point":
                        maxid = await conn.fetchval("SELECT max(id) FROM soak_items")
                        await point.fetchrow(rng.randint(1, maxid or 1))
                    elif op == "read_range":
                        await conn.fetch(
                            "SELECT count(*), sum(n), max(updated_at) FROM soak_items "
                            "WHERE proc = $1 AND conn = $2",
                            p,
                            conn_no,
                        )
                    elif op == "insert":
                        seq += 1
                        await conn.execute(
                            "INSERT INTO soak_items (proc, conn, n, body) VALUES ($1, $2, $3, $4)",
                            p,
                            conn_no,
                            seq,
                            "b" * rng.randint(10, 2000),
                        )
                    elif op == "update":
                        await conn.execute(
                            "UPDATE soak_counters SET v = v + 1 WHERE id = $1", rng.randrange(100)
                        )
                    elif op in ("transaction", "rollback"):
                        tx = conn.transaction()
                        await tx.start()
                        try:
                            for _ in range(3):
                                seq += 1
                                await conn.execute(
                                    "INSERT INTO soak_items (proc, conn, n, body) "
                                    "VALUES ($1, $2, $3, $4)",
                                    p,
                                    conn_no,
                                    seq,
                                    "t" * rng.randint(10, 500),
                                )
                            await conn.execute(
                                "UPDATE soak_counters SET v = v + 1 WHERE id = $1",
                                rng.randrange(100),
                            )
                            await conn.fetchval(
                                "SELECT count(*) FROM soak_items WHERE proc = $1 AND conn = $2",
                                p,
                                conn_no,
                            )
                        except BaseException:
                            await tx.rollback()
                            raise
                        if op == "rollback":
                            await tx.rollback()
                        else:
                            await tx.commit()
                    elif op == "copy":
                        batch += 1
                        await conn.copy_records_to_table(
                            "soak_copy",
                            records=[(p, conn_no, batch, i, f"n{i}") for i in range(COPY_ROWS)],
                            columns=["proc", "conn", "batch", "i", "note"],
                        )
                    elif op == "notify":
                        payload = f"{p}:{conn_no}:{seq}:{rng.random():.6f}"
                        sent_at = time.time()
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                        self.report.sent.append([payload, sent_at])
                    elif op == "trim":
                        await conn.execute(
                            "DELETE FROM soak_items WHERE proc = $1 AND conn = $2 AND id < "
                            "(SELECT min(id) FROM (SELECT id FROM soak_items WHERE proc = $1 "
                            "AND conn = $2 ORDER BY id DESC LIMIT $3) newest)",
                            p,
                            conn_no,
                            KEEP_PER_CONN,
                        )
                        await conn.execute(
                            "DELETE FROM soak_copy WHERE proc = $1 AND conn = $2 AND batch < $3",
                            p,
                            conn_no,
                            batch - 5,
                        )
                except (
                    TimeoutError,
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                ) as exc:
                    self.error(exc, op)
                    if conn.is_closed():
                        conn = await asyncpg.connect(self.cfg["asyncpg_dsn"], timeout=30)
                        point = await conn.prepare(
                            "SELECT id, n, body FROM soak_items WHERE id = $1"
                        )
                    continue
                self.ops[op] += 1
                self.lat[op].append((time.perf_counter() - t) * 1000)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)

    async def psycopg_client(self, conn_no: int) -> None:
        import psycopg

        rng = random.Random(self.cfg["seed"] * 100 + conn_no)
        p = self.cfg["proc"]
        conn = await psycopg.AsyncConnection.connect(
            self.cfg["dsn"], autocommit=True, connect_timeout=30
        )
        seq = batch = 0
        try:
            while self.running():
                op = self.pick(rng)
                t = time.perf_counter()
                try:
                    if op == "read_point":
                        cur = await conn.execute("SELECT max(id) FROM soak_items")
                        row = await cur.fetchone()
                        maxid = row[0] if row and row[0] else 1
                        cur = await conn.execute(
                            "SELECT id, n, body FROM soak_items WHERE id = %s",
                            (rng.randint(1, maxid),),
                        )
                        await cur.fetchall()
                    elif op == "read_range":
                        cur = await conn.execute(
                            "SELECT count(*), sum(n), max(updated_at) FROM soak_items "
                            "WHERE proc = %s AND conn = %s",
                            (p, conn_no),
                        )
                        await cur.fetchall()
                    elif op == "insert":
                        seq += 1
                        await conn.execute(
                            "INSERT INTO soak_items (proc, conn, n, body) VALUES (%s, %s, %s, %s)",
                            (p, conn_no, seq, "b" * rng.randint(10, 2000)),
                        )
                    elif op == "update":
                        await conn.execute(
                            "UPDATE soak_counters SET v = v + 1 WHERE id = %s",
                            (rng.randrange(100),),
                        )
                    elif op in ("transaction", "rollback"):
                        try:
                            async with conn.transaction(force_rollback=op == "rollback"):
                                for _ in range(3):
                                    seq += 1
                                    await conn.execute(
                                        "INSERT INTO soak_items (proc, conn, n, body) "
                                        "VALUES (%s, %s, %s, %s)",
                                        (p, conn_no, seq, "t" * rng.randint(10, 500)),
                                    )
                                await conn.execute(
                                    "UPDATE soak_counters SET v = v + 1 WHERE id = %s",
                                    (rng.randrange(100),),
                                )
                                cur = await conn.execute(
                                    "SELECT count(*) FROM soak_items WHERE proc = %s AND conn = %s",
                                    (p, conn_no),
                                )
                                await cur.fetchone()
                        except psycopg.Rollback:
                            pass
                    elif op == "copy":
                        batch += 1
                        async with (
                            conn.cursor() as cur,
                            cur.copy(
                                "COPY soak_copy (proc, conn, batch, i, note) FROM STDIN"
                            ) as copy,
                        ):
                            for i in range(COPY_ROWS):
                                await copy.write_row((p, conn_no, batch, i, f"n{i}"))
                    elif op == "notify":
                        payload = f"{p}:{conn_no}:{seq}:{rng.random():.6f}"
                        sent_at = time.time()
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                        self.report.sent.append([payload, sent_at])
                    elif op == "trim":
                        await conn.execute(
                            "DELETE FROM soak_items WHERE proc = %(p)s AND conn = %(c)s AND id < "
                            "(SELECT min(id) FROM (SELECT id FROM soak_items WHERE proc = %(p)s "
                            "AND conn = %(c)s ORDER BY id DESC LIMIT %(k)s) newest)",
                            {"p": p, "c": conn_no, "k": KEEP_PER_CONN},
                        )
                        await conn.execute(
                            "DELETE FROM soak_copy WHERE proc = %s AND conn = %s AND batch < %s",
                            (p, conn_no, batch - 5),
                        )
                except psycopg.Error as exc:
                    self.error(exc, op)
                    if conn.broken or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.cfg["dsn"], autocommit=True, connect_timeout=30
                        )
                    continue
                self.ops[op] += 1
                self.lat[op].append((time.perf_counter() - t) * 1000)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)

    # -------------------------------------------------------------- listeners

    async def asyncpg_listener(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.cfg["asyncpg_dsn"], timeout=30)
        try:
            await conn.add_listener(
                CHANNEL, lambda _c, _pid, _ch, payload: self.report.received.append(payload)
            )
            self.report.listen_at = time.time()
            await self.drain()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.error(exc, "listen")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)

    async def psycopg_listener(self) -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            self.cfg["dsn"], autocommit=True, connect_timeout=30
        )
        try:
            conn.add_notify_handler(lambda n: self.report.received.append(n.payload))
            await conn.execute(f"LISTEN {CHANNEL}")
            self.report.listen_at = time.time()
            # psycopg delivers notifications while it reads from the socket: poll with a cheap
            # query, as an application waiting on notifies() would read
            while time.time() < self.deadline + self.cfg["drain"]:
                await asyncio.sleep(0.2)
                await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self.error(exc, "listen")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)

    async def drain(self) -> None:
        while time.time() < self.deadline + self.cfg["drain"]:
            await asyncio.sleep(0.2)

    def finish(self) -> WorkerReport:
        self.report.ops = dict(self.ops)
        self.report.latencies = {k: [round(x, 3) for x in v] for k, v in self.lat.items()}
        self.report.errors = dict(self.errors)
        return self.report


def worker_main() -> int:
    """``soak.py --worker``: settings as one JSON line on stdin; stops at the deadline or when
    stdin closes; prints ``P <ops> <errors>`` every second and ``R <json report>`` at the end."""
    cfg = json.loads(sys.stdin.readline())
    worker = Worker(cfg)

    def watch_stdin() -> None:
        sys.stdin.read()
        worker.stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        asyncio.run(worker.run())
    except BaseException:
        worker.report.crash = traceback.format_exc()
    print("R " + json.dumps(worker.finish().__dict__), flush=True)
    return 0


# ============================================================================== the run


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class Sampler(threading.Thread):
    """RSS and thread count of the Node server every second, the data dir's size every 5 s."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(daemon=True)
        self.bridge = bridge
        self.samples: list[tuple[float, int, int, int | None]] = []  # (t, rss, threads, pid)
        self.disk: list[tuple[float, int]] = []  # (t, bytes)
        self.halt = threading.Event()

    def sample(self) -> None:
        pid = self.bridge.node_pid
        if pid is None:
            return
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            with proc.oneshot():
                self.samples.append((time.time(), proc.memory_info().rss, proc.num_threads(), pid))

    def sample_disk(self) -> None:
        if self.bridge.data_dir is not None:
            self.disk.append((time.time(), du(self.bridge.data_dir)))

    def run(self) -> None:
        n = 0
        while not self.halt.wait(1.0):
            self.sample()
            n += 1
            if n % 5 == 0:
                self.sample_disk()

    def at(self, t: float) -> tuple[float, int, int, int | None]:
        return min(self.samples, key=lambda s: abs(s[0] - t))

    def disk_at(self, t: float) -> int:
        return min(self.disk, key=lambda s: abs(s[0] - t))[1]


def main() -> int:
    if sys.argv[1:] == ["--worker"]:
        return worker_main()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=180, help="length of the run (default 180)")
    ap.add_argument("--procs", type=int, default=5, help="worker processes (default 5)")
    ap.add_argument("--conns", type=int, default=10, help="connections per process (default 10)")
    ap.add_argument("--rss-growth-pct", type=float, default=20.0)
    ap.add_argument("--rss-growth-mb", type=float, default=64.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    workdir = Path(tempfile.mkdtemp(prefix="hive-soak-"))
    handler = logging.FileHandler(workdir / "supervisor.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("hive_bridge").addHandler(handler)

    failures: list[str] = []
    out = print
    bridge = Bridge(workdir / "soak.db").start()
    procs: list[subprocess.Popen[str]] = []
    try:
        import psycopg

        with psycopg.connect(bridge.dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        sampler = Sampler(bridge)
        sampler.sample()
        sampler.sample_disk()
        rss_start = sampler.samples[-1]
        out(
            f"soak: {args.seconds:.0f}s, {args.procs} processes x {args.conns} connections, "
            f"seed {seed}, node pid {bridge.node_pid}, RSS {mb(rss_start[1])}, data dir "
            f"{workdir / 'soak.db'}"
        )
        drain = 3.0
        t_start = time.time() + 3.0  # connections are made before this; the clock starts here
        deadline = t_start + args.seconds
        progress: dict[int, tuple[int, int]] = {}
        reports: dict[int, str] = {}

        def read(i: int, proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("P "):
                    a, b = line[2:].split()
                    progress[i] = (int(a), int(b))
                elif line.startswith("R "):
                    reports[i] = line[2:]

        readers = []
        for i in range(args.procs):
            driver = "asyncpg" if i % 2 == 0 else "psycopg"
            cfg = {
                "proc": i,
                "driver": driver,
                "conns": args.conns,
                "dsn": bridge.dsn,
                "asyncpg_dsn": bridge.asyncpg_dsn,
                "deadline": deadline,
                "drain": drain,
                "seed": seed + i,
            }
            proc = spawn_worker(__file__, "--worker", cfg)
            procs.append(proc)
            reader = threading.Thread(target=read, args=(i, proc), daemon=True)
            reader.start()
            readers.append(reader)

        sampler.start()
        last_ops, last_t = 0, time.time()
        next_line = t_start + 15
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
            now = time.time()
            if now >= next_line and now < deadline:
                ops = sum(a for a, _ in progress.values())
                errs = sum(b for _, b in progress.values())
                rss = sampler.samples[-1][1] if sampler.samples else 0
                out(
                    f"  +{now - t_start:5.0f}s  {ops:8d} ops  {(ops - last_ops) / (now - last_t):7.0f}"
                    f" ops/s  errors {errs}  node RSS {mb(rss)}"
                )
                last_ops, last_t = ops, now
                next_line += 15
            if now > deadline + drain + 60:
                failures.append("workers did not finish within 60 s of the deadline")
                break
        for reader in readers:
            reader.join(10)
        sampler.halt.set()
        sampler.join()
        sampler.sample()
        sampler.sample_disk()
        stats = bridge.status()
        with psycopg.connect(bridge.dsn, autocommit=True) as conn:
            row = conn.execute(
                # the bridge's autovacuum runs VACUUM (ANALYZE) as jobs: it counts as vacuum_count
                "SELECT sum(n_live_tup), sum(n_dead_tup), sum(vacuum_count + autovacuum_count), "
                "pg_database_size(current_database()) FROM pg_stat_user_tables"
            ).fetchone()
            assert row is not None
            live, dead, autovacuums, db_size = row
        # the server notices closed sockets at once; the supervisor's health check may hold one
        # connection for a moment
        t_wait = time.monotonic() + 5
        while True:
            after = bridge.status()
            left = (after.get("stats") or {}).get("connections")
            if not left or time.monotonic() > t_wait:
                break
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        bridge.stop()

    # ---------------------------------------------------------------- the report
    got = [WorkerReport(**json.loads(reports[i])) for i in sorted(reports)]
    if len(got) != args.procs:
        failures.append(f"only {len(got)} of {args.procs} workers reported")
    for r in got:
        if r.crash:
            failures.append(f"worker {r.proc} ({r.driver}) crashed:\n{r.crash}")
    ops: Counter[str] = Counter()
    lat: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    samples: list[str] = []
    for r in got:
        ops.update(r.ops)
        for k, v in r.latencies.items():
            lat[k].extend(v)
        errors.update(r.errors)
        samples += [f"worker {r.proc} ({r.driver}) {s}" for s in r.error_samples]
    total = sum(ops.values())
    all_lat = [x for v in lat.values() for x in v]

    # notifications: every NOTIFY that started after a listener's LISTEN returned reaches it once
    sent = [(payload, t) for r in got for payload, t in r.sent]
    expected = delivered = lost = dups = 0
    for r in got:
        if r.listen_at is None:
            failures.append(f"worker {r.proc}'s listener never listened")
            continue
        seen = Counter(r.received)
        dups += sum(c - 1 for c in seen.values() if c > 1)
        for payload, t in sent:
            if t > r.listen_at:
                expected += 1
                if payload in seen:
                    delivered += 1
                else:
                    lost += 1

    # RSS
    smp = sampler.samples
    quarter = sampler.at(t_start + 0.25 * args.seconds)
    half = sampler.at(t_start + 0.5 * args.seconds)
    three = sampler.at(t_start + 0.75 * args.seconds)
    end = sampler.at(deadline)
    peak = max(s[1] for s in smp)
    growth = end[1] - quarter[1]
    growth_pct = 100.0 * growth / quarter[1]
    rss_bad = growth_pct > args.rss_growth_pct and growth / 2**20 > args.rss_growth_mb
    pids = {s[3] for s in smp}

    lines = [
        "",
        "== soak report ==",
        f"duration {args.seconds:.0f}s, {args.procs} processes x {args.conns} connections "
        f"({sum(1 for r in got if r.driver == 'asyncpg')} asyncpg, "
        f"{sum(1 for r in got if r.driver == 'psycopg')} psycopg; one listener each), seed {seed}",
        f"operations: {total} ({total / args.seconds:.0f}/s); latency p50 {pct(all_lat, 0.5):.2f} ms, "
        f"p99 {pct(all_lat, 0.99):.2f} ms, max {max(all_lat, default=float('nan')):.0f} ms",
    ]
    for op in MIX:
        xs = lat.get(op, [])
        lines.append(
            f"  {op:12s} {ops.get(op, 0):8d}  p50 {pct(xs, 0.5):7.2f} ms  p99 {pct(xs, 0.99):7.2f} ms"
        )
    lines.append(f"errors: {sum(errors.values())}  (target 0)")
    lines += [f"  {k}: {v}" for k, v in errors.most_common()]
    lines += [f"    e.g. {s}" for s in samples[:10]]
    lines.append(
        f"notifications: {len(sent)} sent, {expected} deliveries expected, {delivered} delivered, "
        f"{lost} lost, {dups} duplicated"
    )
    lines.append(
        f"node RSS: start {mb(rss_start[1])}, 25% {mb(quarter[1])}, 50% {mb(half[1])}, "
        f"75% {mb(three[1])}, end {mb(end[1])}, peak {mb(peak)}; threads {rss_start[2]} -> {end[2]}"
    )
    lines.append(
        f"RSS 25% -> 100%: {growth / 2**20:+.0f} MB ({growth_pct:+.1f}%); bound: fail only if more "
        f"than +{args.rss_growth_pct:.0f}% and +{args.rss_growth_mb:.0f} MB -> "
        + ("EXCEEDED" if rss_bad else "OK")
    )
    lines.append(
        f"data dir: start {mb(sampler.disk[0][1])}, 25% {mb(sampler.disk_at(quarter[0]))}, "
        f"end {mb(sampler.disk[-1][1])}; database {mb(db_size)}, {live} live and {dead} dead "
        f"tuples, {autovacuums} table vacuums (built-in autovacuum)"
    )
    restarts = stats.get("restarts", 0)
    conns_left = (after.get("stats") or {}).get("connections")
    lines.append(
        f"server: restarts {restarts}, node pids {sorted(p for p in pids if p)}, "
        f"connections after the clients closed: {conns_left}"
    )
    if sum(errors.values()):
        failures.append(f"{sum(errors.values())} errors")
    if lost or dups:
        failures.append(f"notifications: {lost} lost, {dups} duplicated")
    if rss_bad:
        failures.append(f"RSS grew {growth / 2**20:.0f} MB ({growth_pct:.1f}%) from 25% to the end")
    if restarts or len(pids) > 1:
        failures.append(f"the server restarted during the soak ({restarts})")
    if conns_left:
        failures.append(
            f"{conns_left} connections still open on the server after the clients closed"
        )
    if total == 0:
        failures.append("no operation completed")
    lines += [f"FAIL: {f}" for f in failures]
    lines.append("RESULT: " + ("PASS" if not failures else "FAIL"))
    for line in lines:
        out(line)
    if failures or args.keep:
        out(f"kept: {workdir} (server log {workdir / 'soak.db.bridge' / 'server.log'})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
