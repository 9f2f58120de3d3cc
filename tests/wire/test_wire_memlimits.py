"""Memory settings that 64-bit PostgreSQL accepts work on 32-bit PGlite: lowered, with a WARNING."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from wire_support import WireServer


@pytest.mark.parametrize(
    "sql",
    [
        "SET maintenance_work_mem = '2GB'",
        "set maintenance_work_mem to '4096MB';",
        "SET SESSION work_mem = 3000000",
    ],
)
def test_too_large_memory_setting_is_lowered_with_a_warning(server: WireServer, sql: str) -> None:
    notices: list[str] = []
    with server.psycopg(autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
        conn.execute(sql)  # psycopg: extended protocol
        name = "work_mem" if " work_mem" in sql.replace("SESSION ", " ") else "maintenance_work_mem"
        assert conn.execute(f"SHOW {name}").fetchone() == ("1GB",)
        conn.execute(f"RESET {name}")
        # simple protocol too (a multi-statement string is not touched: PGlite's own error)
        conn.pgconn.exec_(sql.encode())
        assert conn.execute(f"SHOW {name}").fetchone() == ("1GB",)
    assert len(notices) == 2, notices
    assert all(n.startswith("WARNING:") and "using 1GB" in n for n in notices), notices


def test_values_within_the_limit_are_untouched(server: WireServer) -> None:
    with server.psycopg(autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        assert conn.execute("SHOW maintenance_work_mem").fetchone() == ("512MB",)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SET maintenance_work_mem = 'lots'")


def test_startup_option_and_hnsw_build(server: WireServer, unique: Callable[[str], str]) -> None:
    """Agno's HNSW helper sets 2GB before CREATE INDEX; the build then works."""
    table = unique("emb")
    with server.psycopg(autocommit=True, options="-c maintenance_work_mem=2GB") as conn:
        assert conn.execute("SHOW maintenance_work_mem").fetchone() == ("1GB",)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"CREATE TABLE {table} (id int, e vector(3))")
        conn.execute(
            f"INSERT INTO {table} SELECT i, ARRAY[i, i % 7, i % 3]::real[]::vector "
            "FROM generate_series(1, 300) i"
        )
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute(f"CREATE INDEX ON {table} USING hnsw (e vector_l2_ops)")
        row = conn.execute(f"SELECT id FROM {table} ORDER BY e <-> '[5,5,2]' LIMIT 1").fetchone()
        assert row == (5,)
