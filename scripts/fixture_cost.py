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


def body(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes (body) VALUES ('hello')")
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def timed(runs: int, once: Callable[[int], None]) -> list[float]:
    samples = []
    for i in range(runs):
        t0 = time.perf_counter()
        once(i)
        samples.append((time.perf_counter() - t0) * 1000)
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
                    body(conn)
                    conn.execute("DROP TABLE notes")  # not timed apart: the reference is the body

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

            results["none (the body alone)"] = timed(args.runs, none)
            results["schema"] = timed(args.runs, schema)
            results["rollback"] = timed(args.runs, rollback)
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

        results["datadir"] = timed(args.datadir_runs, datadir)
    print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; ms per test (median / p90)")
    base = statistics.median(results["none (the body alone)"])
    for name, samples in results.items():
        med = statistics.median(samples)
        p90 = sorted(samples)[max(0, int(len(samples) * 0.9) - 1)]
        extra = "" if name.startswith("none") else f"  (+{med - base:.0f} ms over the body)"
        print(f"  {name:22} {med:8.1f} / {p90:8.1f}{extra}  n={len(samples)}")


if __name__ == "__main__":
    main()
