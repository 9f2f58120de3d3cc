"""What a clean database per test costs with each isolation the pytest plugin could use.

    .venv/bin/python scripts/fixture_cost.py [--runs 20]

Per test, measured around the same small test body (create a table, insert a row, read it back):

- schema: CREATE SCHEMA, the body on a connection whose search_path starts with it, DROP SCHEMA CASCADE
  (the plugin's default, ``--hive-bridge-isolation schema``);
- datadir: copy a data dir made once, start a server on it, the body, stop it, remove the copy
  (``--hive-bridge-isolation datadir``);
- rollback: BEGIN, the body, ROLLBACK on one connection (not offered by the plugin; see the README);
- none: the body alone, for reference.

Medians and 90th percentiles in milliseconds, with the load average: all of it is CPU bound.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hive_bridge import Bridge
from hive_bridge.policy import SupervisorOptions

OPTIONS = SupervisorOptions(start_timeout=300)


def body(conn: psycopg.Connection[Any], table: str = "notes") -> None:
    name = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, body text)").format(name))
    conn.execute(sql.SQL("INSERT INTO {} (body) VALUES ('hello')").format(name))
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone() == (1,)


WARMUP = 3  # rounds not counted: the first connections and statements of a server are slower


def timed(runs: int, modes: dict[str, Callable[[int], None]]) -> dict[str, list[float]]:
    """Run the modes interleaved, round after round, so a change of machine load hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for i in range(-WARMUP, runs):
        for name, once in modes.items():
            t0 = time.perf_counter()
            once(i + WARMUP)
            if i >= 0:
                samples[name].append((time.perf_counter() - t0) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--datadir-runs", type=int, default=5, help="datadir is slow: fewer runs")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="hive-fixture-cost-") as tmp:
        root = Path(tmp)
        with Bridge(root / "db", options=OPTIONS, attach=False) as bridge:
            admin = psycopg.connect(bridge.dsn, autocommit=True)

            def none(i: int) -> None:
                with psycopg.connect(bridge.dsn, autocommit=True) as conn:
                    body(conn, f"notes_{i}")  # left in place: the reference is the body alone

            def schema(i: int) -> None:
                name = f"hb_cost_{i}"
                admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
                dsn = bridge.dsn + f"&options=-c%20search_path%3D{name}"
                with psycopg.connect(dsn, autocommit=True) as conn:
                    body(conn)
                admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))

            def rollback(i: int) -> None:
                with psycopg.connect(bridge.dsn) as conn:  # psycopg opens a transaction
                    body(conn)
                    conn.rollback()

            results.update(
                timed(
                    args.runs,
                    {"none (the body alone)": none, "schema": schema, "rollback": rollback},
                )
            )
            admin.close()
        template = root / "db"  # stopped cleanly: a data dir like the plugin's template

        def datadir(i: int) -> None:
            copy = root / f"copy-{i}"
            shutil.copytree(template, copy, symlinks=True)
            with (
                Bridge(copy, options=OPTIONS, attach=False) as own,
                psycopg.connect(own.dsn, autocommit=True) as conn,
            ):
                body(conn)
            shutil.rmtree(copy)
            shutil.rmtree(Path(f"{copy}.bridge"), ignore_errors=True)

        results.update(timed(args.datadir_runs, {"datadir": datadir}))
    print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; ms per test (median / p90)")
    base = statistics.median(results["none (the body alone)"])
    for name, samples in results.items():
        med = statistics.median(samples)
        p90 = sorted(samples)[max(0, int(len(samples) * 0.9) - 1)]
        extra = "" if name.startswith("none") else f"  (+{med - base:.0f} ms over the body)"
        print(f"  {name:22} {med:8.1f} / {p90:8.1f}{extra}  n={len(samples)}")


if __name__ == "__main__":
    main()
