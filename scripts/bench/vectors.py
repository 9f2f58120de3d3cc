"""pgvector: COPY of ``vector(384)`` rows (text and binary format), and an HNSW build.

Text COPY makes the server parse ``[0.1,0.2,…]`` (pgvector's ``vector_in``, slow in WASM); binary
COPY sends the floats as they are stored. The HNSW build loads its rows with binary COPY first (not
timed), then times ``CREATE INDEX … USING hnsw`` with ``maintenance_work_mem = 256MB`` everywhere
(PGlite is 32-bit: at most 2 GB; the graph of 20k rows fits in 256 MB)."""

from __future__ import annotations

import random
import struct
import time
from typing import Any

from .common import Conn

DIM = 384


def _vectors(n: int, seed: int = 7) -> list[list[float]]:
    rnd = random.Random(seed)
    return [[rnd.uniform(-1, 1) for _ in range(DIM)] for _ in range(n)]


def _text(vecs: list[list[float]]) -> bytes:
    rows = (f"{i}\t[{','.join(f'{x:.6f}' for x in v)}]\n" for i, v in enumerate(vecs))
    return "".join(rows).encode()


def _binary(vecs: list[list[float]]) -> bytes:
    """PostgreSQL's binary COPY stream; pgvector's binary form is int16 dim, int16 0, float4s."""
    out = [b"PGCOPY\n\xff\r\n\x00", struct.pack("!ii", 0, 0)]
    vec_len = 4 + 4 * DIM
    fmt = f"!hiiih h{DIM}f".replace(" ", "")
    for i, v in enumerate(vecs):
        out.append(struct.pack(fmt, 2, 4, i, vec_len, DIM, 0, *v))
    out.append(struct.pack("!h", -1))
    return b"".join(out)


def _load(cur: Any, table: str, data: bytes, binary: bool) -> None:
    opts = " (FORMAT BINARY)" if binary else ""
    with cur.copy(f"COPY {table} (id, embedding) FROM STDIN{opts}") as cp:
        step = 1 << 20
        for i in range(0, len(data), step):
            cp.write(data[i : i + step])


def vector_copy(conn: Conn, rows: int, binary: bool) -> dict[str, Any]:
    import psycopg

    data = (_binary if binary else _text)(_vectors(rows))
    table = "bench_vec_bin" if binary else "bench_vec_text"
    with psycopg.connect(conn.conninfo(), autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"CREATE TABLE {table} (id int, embedding vector({DIM}))")
        t = time.perf_counter()
        _load(c.cursor(), table, data, binary)
        took = time.perf_counter() - t
        count = c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        c.execute(f"DROP TABLE {table}")
    if count != rows:
        raise RuntimeError(f"expected {rows} rows, found {count}")
    return {"rows": rows, "seconds": took, "rows_per_s": rows / took, "mb": len(data) / 2**20}


def hnsw_build(conn: Conn, rows: int, parallel: bool = True) -> dict[str, Any]:
    """``parallel=False``: ``max_parallel_maintenance_workers = 0`` (one process builds, as in PGlite,
    which has no parallel workers)."""
    import psycopg

    data = _binary(_vectors(rows, seed=11))
    with psycopg.connect(conn.conninfo(), autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute("DROP TABLE IF EXISTS bench_hnsw")
        c.execute(f"CREATE TABLE bench_hnsw (id int, embedding vector({DIM}))")
        _load(c.cursor(), "bench_hnsw", data, binary=True)
        c.execute("SET maintenance_work_mem = '256MB'")
        if not parallel:
            c.execute("SET max_parallel_maintenance_workers = 0")
        t = time.perf_counter()
        c.execute("CREATE INDEX ON bench_hnsw USING hnsw (embedding vector_l2_ops)")
        took = time.perf_counter() - t
        c.execute("DROP TABLE bench_hnsw")
    return {"rows": rows, "seconds": took}
