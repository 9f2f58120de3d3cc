"""The built-in autovacuum (bridge-js/src/maintenance.js): PGlite runs single-user, so without it an
update-heavy table only accumulates dead tuples (scripts/vacuum_check.py compares with PG 15)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from helpers import wait_until

from hive_bridge import Bridge
from hive_bridge.config import load_bridge_settings

pytestmark = [pytest.mark.bridge, pytest.mark.timeout(300)]

ROWS = 1000
BATCH = 100


def dead_tuples(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'churn'"
    ).fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


def test_dead_tuples_stay_bounded_under_an_update_loop(fresh_data_dir: Path) -> None:
    settings = load_bridge_settings({"HIVE_BRIDGE_VACUUM_INTERVAL": "0.5"}, dotenv=False)
    with (
        Bridge(fresh_data_dir, settings=settings) as bridge,
        psycopg.connect(bridge.dsn, autocommit=True) as conn,
    ):
        conn.execute("CREATE TABLE churn (id int PRIMARY KEY, counter int NOT NULL, note text)")
        conn.execute("CREATE INDEX churn_counter ON churn (counter)")  # no HOT-only updates
        conn.execute(f"INSERT INTO churn SELECT g, 0, 'x' FROM generate_series(1, {ROWS}) g")

        def vacuums() -> int:
            stats = bridge.status().get("stats") or {}
            return int((stats.get("maintenance") or {}).get("vacuums") or 0)

        # update until the autovacuum has run three times and 30 versions of every row were made
        updated = 0
        n = 0
        seen = 0
        while seen < 3 or updated < 30 * ROWS:
            lo = (n * BATCH) % ROWS
            conn.execute(
                "UPDATE churn SET counter = counter + 1 WHERE id > %s AND id <= %s",
                (lo, lo + BATCH),
            )
            updated += BATCH
            n += 1
            if n % 20 == 0:
                seen = vacuums()
            assert updated < 2000 * ROWS, "the autovacuum never ran"
        # without VACUUM every update leaves a dead tuple: n_dead_tup would be `updated` (30000+)
        assert dead_tuples(conn) < updated / 2
        row = conn.execute(
            "SELECT vacuum_count, last_vacuum IS NOT NULL, last_analyze IS NOT NULL "
            "FROM pg_stat_user_tables WHERE relname = 'churn'"
        ).fetchone()
        assert row is not None and row[0] >= 3 and row[1] and row[2]
        # and once the updates stop, the next look cleans up what is left
        wait_until(
            lambda: dead_tuples(conn) <= 50 + 0.2 * ROWS,
            timeout=60,
            what="the autovacuum to clean up after the loop",
        )
        status = bridge.status()
        assert status["stats"]["maintenance"]["last_vacuum"]["table"] == "public.churn"
