#!/usr/bin/env python3
"""Does the bridge's autovacuum keep an update-heavy table as small as PostgreSQL 15 does?

    python scripts/vacuum_check.py                 # 90 s per server
    python scripts/vacuum_check.py --seconds 30    # quick look
    python scripts/vacuum_check.py --no-postgres   # bridge only

The same paced loop runs on three servers, one after the other: the bridge (autovacuum on, its
defaults), the bridge with autovacuum off (``HIVE_BRIDGE_VACUUM_INTERVAL=0``: what PGlite did
before), and a local PostgreSQL 15 with its default autovacuum (``initdb``/``pg_ctl`` as the
``postgres`` user when run as root). The loop: a table of ``--rows`` rows with an index on the
updated column (so updates are not HOT-only), ``--rate`` autocommit UPDATEs per second of
``--batch`` random rows each, for ``--seconds``. Every 5 s, and at the end, it samples
``n_dead_tup`` (pg_stat_user_tables) and the table's size (``pg_total_relation_size``).

Reported per server: max and final n_dead_tup, vacuums (vacuum_count + autovacuum_count), final
table size, and the size ratio to PostgreSQL 15. Exit status 1 if the bridge's table ends more
than ``--max-ratio`` (default 1.3) times PostgreSQL 15's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hive_bridge import Bridge  # noqa: E402
from hive_bridge.config import load_bridge_settings  # noqa: E402

STATS = """
SELECT s.n_dead_tup, s.n_live_tup, coalesce(s.vacuum_count, 0) + coalesce(s.autovacuum_count, 0),
       pg_total_relation_size(s.relid)
  FROM pg_stat_user_tables s WHERE s.relname = 'vacuum_check'
"""


@dataclass
class Result:
    name: str
    updates: int = 0
    max_dead: int = 0
    final_dead: int = 0
    vacuums: int = 0
    size: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)


def sample(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int, int, int]:
    with contextlib.suppress(psycopg.Error):
        conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(STATS).fetchone()
    assert row is not None
    dead, live, vacuums, size = (int(v or 0) for v in row)  # type: ignore[call-overload]
    return dead, live, vacuums, size


def run_loop(name: str, dsn: str, args: argparse.Namespace) -> Result:
    res = Result(name)
    rng = random.Random(1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS vacuum_check")
        conn.execute(
            "CREATE TABLE vacuum_check (id int PRIMARY KEY, counter int NOT NULL, note text)"
        )
        conn.execute("CREATE INDEX vacuum_check_counter ON vacuum_check (counter)")
        conn.execute(
            "INSERT INTO vacuum_check SELECT g, 0, md5(g::text) FROM generate_series(1, %s) g",
            (args.rows,),
        )
        start = time.monotonic()
        next_sample = start
        interval = 1.0 / args.rate
        n = 0
        while True:
            now = time.monotonic()
            if now - start >= args.seconds:
                break
            ids = [rng.randint(1, args.rows) for _ in range(args.batch)]
            conn.execute(
                "UPDATE vacuum_check SET counter = counter + 1, note = md5(random()::text) "
                "WHERE id = ANY(%s)",
                (ids,),
            )
            res.updates += args.batch
            n += 1
            if now >= next_sample:
                dead, _, _, size = sample(conn)
                res.max_dead = max(res.max_dead, dead)
                res.samples.append((now - start, dead, size))
                next_sample = now + 5.0
            # pace: the same number of updates per second on every server
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        time.sleep(1.1)  # let statistics settle (they are published at most once a second)
        dead, _, vacuums, size = sample(conn)
        res.final_dead, res.vacuums, res.size = dead, vacuums, size
        res.max_dead = max(res.max_dead, dead)
    return res


@contextlib.contextmanager
def bridge_server(vacuum: bool) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="hive-vacuum-") as tmp:
        env = {} if vacuum else {"HIVE_BRIDGE_VACUUM_INTERVAL": "0"}
        settings = load_bridge_settings(env, dotenv=False)
        with Bridge(Path(tmp) / "db", settings=settings) as bridge:
            yield bridge.dsn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL 15 with default settings (autovacuum on), run as `postgres` when
    we are root (initdb refuses root)."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="hive-vacuum-pg-"))
    data = tmp / "pgdata"
    if as_user:
        shutil.chown(tmp, "postgres")
    port = _free_port()

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    try:
        run("initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-D", str(data))
        run(
            "pg_ctl", "-D", str(data), "-w", "-l", str(tmp / "log"), "-o",
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mb(n: int) -> str:
    return f"{n / 1024 / 1024:.2f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="UPDATE statements per second")
    parser.add_argument("--max-ratio", type=float, default=1.3)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    results: list[Result] = []
    print(
        f"loop: {args.rows} rows, {args.rate:g} UPDATEs/s of {args.batch} random rows, "
        f"{args.seconds:g} s per server",
        flush=True,
    )
    servers: list[tuple[str, contextlib.AbstractContextManager[str]]] = [
        ("hive-bridge (autovacuum on)", bridge_server(True)),
        ("hive-bridge (autovacuum off)", bridge_server(False)),
    ]
    if not args.no_postgres:
        servers.append(("PostgreSQL 15 (defaults)", postgres_server()))
    for name, server in servers:
        with server as dsn:
            res = run_loop(name, dsn, args)
        results.append(res)
        print(
            f"{name:30s} updates {res.updates:7d}  n_dead_tup max {res.max_dead:7d} "
            f"final {res.final_dead:7d}  vacuums {res.vacuums:3d}  size {mb(res.size)}",
            flush=True,
        )
    pg = next((r for r in results if r.name.startswith("PostgreSQL")), None)
    status = 0
    if pg is not None and pg.size:
        print()
        print(
            "| server | rows updated | n_dead_tup max | n_dead_tup at end | vacuums | size | vs PG 15 |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            ratio = r.size / pg.size
            print(
                f"| {r.name} | {r.updates:,} | {r.max_dead:,} | {r.final_dead:,} | {r.vacuums} "
                f"| {mb(r.size)} | {ratio:.2f}x |"
            )
        on = results[0]
        if on.size / pg.size > args.max_ratio:
            print(f"FAIL: the bridge's table is more than {args.max_ratio}x PostgreSQL 15's")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
