"""The loopback admin endpoint: /health, /stats, /metrics (bridge-js/README.md, "Admin endpoint")."""

from __future__ import annotations

import json
import re

import pytest
from wire_support import WireServer, async_wait_until


def test_health_is_ok(server: WireServer) -> None:
    status, headers, body = server.http_get("/health")
    assert status == 200
    assert headers.get("content-type", "").startswith("application/json")
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert doc["uptime_s"] >= 0


def test_unknown_admin_path_is_404(server: WireServer) -> None:
    status, _, _ = server.http_get("/nope")
    assert status == 404


@pytest.mark.asyncio
async def test_stats_count_connections_and_queries(server: WireServer) -> None:
    server.settled_connections()
    before = server.stats()
    for key in (
        "connections",
        "waiting",
        "queued_messages",
        "queries_served",
        "backend_restarts",
        "rss_bytes",
        "heap_used_bytes",
        "uptime_s",
        "pglite_version",
        "postgres_version",
        "data_dir",
        "pid",
    ):
        assert key in before, f"/stats lacks {key}: {before}"
    assert before["pid"] == server.pid
    assert before["data_dir"] == str(server.data_dir)
    assert before["postgres_version"].startswith("18")

    conns = [await server.asyncpg() for _ in range(3)]
    try:
        during = server.stats()
        assert during["connections"] == before["connections"] + 3
        for i, conn in enumerate(conns):
            for j in range(5):
                rows = await conn.fetch("SELECT $1::int + $2::int", i, j)
                assert rows[0][0] == i + j
        after = server.stats()
        # 15 statements ran to completion (plus asyncpg's own introspection, if any)
        assert after["queries_served"] >= before["queries_served"] + 15
        assert after["rss_bytes"] > 0
    finally:
        for conn in conns:
            await conn.close()
    await async_wait_until(
        lambda: server.stats()["connections"] == before["connections"],
        timeout=30,
        what="/stats connections to drop back after the clients closed",
    )


@pytest.mark.asyncio
async def test_metrics_is_prometheus_text(server: WireServer) -> None:
    conn = await server.asyncpg()
    try:
        await conn.execute("SELECT 1")
        status, headers, body = server.http_get("/metrics")
    finally:
        await conn.close()
    assert status == 200
    assert headers.get("content-type", "").startswith("text/plain")
    text = body.decode()
    samples = {}
    sample_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$")
    typed = set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("gauge", "counter", "summary", "histogram", "untyped"), line
            typed.add(name)
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = sample_re.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        samples[m.group(1)] = float(m.group(3))
    assert set(samples) <= typed, "every sample has a # TYPE line"
    assert samples["hive_bridge_up"] == 1
    assert samples["hive_bridge_connections"] >= 1  # our connection was open when it was scraped
    assert samples["hive_bridge_queries_total"] >= 1
    assert all(name.startswith("hive_bridge_") for name in samples)


@pytest.mark.asyncio
async def test_stats_count_statements_fetched_with_a_row_limit(server: WireServer) -> None:
    """asyncpg's fetchval/fetchrow run Execute with a row limit of 1: the backend answers
    PortalSuspended rather than CommandComplete, yet a statement was served all the same."""
    conn = await server.asyncpg()
    try:
        await conn.fetch("SELECT 1")  # asyncpg's connection setup is done
        before = server.stats()["queries_served"]
        for i in range(10):
            assert await conn.fetchval("SELECT $1::int * 3", i) == i * 3
            assert (await conn.fetchrow("SELECT $1::int AS v", i))["v"] == i
        after = server.stats()["queries_served"]
    finally:
        await conn.close()
    assert after >= before + 20, f"queries_served went from {before} to {after} over 20 statements"
