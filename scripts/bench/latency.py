"""SELECT 1 round trips on one connection: psycopg (simple protocol) and asyncpg (prepared)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .common import Conn


def stats(samples: list[float]) -> dict[str, Any]:
    s = sorted(samples)
    n = len(s)
    return {"n": n, "p50_us": s[n // 2] * 1e6, "p99_us": s[min(n - 1, int(n * 0.99))] * 1e6}


def latency_psycopg(conn: Conn, n: int, warmup: int) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(conn.conninfo(), autocommit=True) as c:
        cur = c.cursor()
        samples = []
        for i in range(warmup + n):
            t = time.perf_counter()
            cur.execute("SELECT 1")
            cur.fetchone()
            if i >= warmup:
                samples.append(time.perf_counter() - t)
    return stats(samples)


def latency_asyncpg(conn: Conn, n: int, warmup: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        import asyncpg

        c = await asyncpg.connect(
            host=conn.host,
            port=conn.port,
            user=conn.user,
            password=conn.password,
            database=conn.dbname,
            ssl=False,
        )
        try:
            samples = []
            for i in range(warmup + n):
                t = time.perf_counter()
                await c.fetchval("SELECT 1")
                if i >= warmup:
                    samples.append(time.perf_counter() - t)
            return stats(samples)
        finally:
            c.terminate()  # the stock server never answers Terminate: close() would hang

    return asyncio.run(go())
