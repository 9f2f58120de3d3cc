"""pgvector: COPY of ``vector(384)`` rows (text and binary format), and an HNSW build.

Text COPY is what users run: psycopg's ``write_row`` with pgvector-python's text form (float4 values
printed as Python floats, ``[0.19411210715770721,…]``); PostgreSQL parses it with pgvector's
``vector_in``, slow in WASM, unless hive-bridge's front end converts it to binary COPY first
(``bridge-js/src/copyconvert.js``). Binary COPY sends the floats as they are stored. The HNSW build
loads its rows with binary COPY first (not timed), then times ``CREATE INDEX … USING hnsw`` with
``maintenance_work_mem = 256MB`` everywhere (PGlite is 32-bit: at most 2 GB; the graph of 20k rows
fits in 256 MB)."""

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


def _text_rows(vecs: list[list[float]]) -> list[tuple[int, str]]:
    """Rows as pgvector-python's ``Vector`` sends them in text format (float32 values, Python repr)."""
    f32 = struct.Struct("f")
    return [
        (i, "[" + ",".join(repr(f32.unpack(f32.pack(x))[0]) for x in v) + "]")
        for i, v in enumerate(vecs)
    ]


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

    vecs = _vectors(rows)
    data = _binary(vecs) if binary else b""
    text_rows = [] if binary else _text_rows(vecs)
    table = "bench_vec_bin" if binary else "bench_vec_text"
    with psycopg.connect(conn.conninfo(), autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"CREATE TABLE {table} (id int, embedding vector({DIM}))")
        t = time.perf_counter()
        if binary:
            _load(c.cursor(), table, data, binary)
        else:
            with c.cursor().copy(f"COPY {table} (id, embedding) FROM STDIN") as cp:
                for row in text_rows:
                    cp.write_row(row)
        took = time.perf_counter() - t
        count = c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        c.execute(f"DROP TABLE {table}")
    if count != rows:
        raise RuntimeError(f"expected {rows} rows, found {count}")
    size = len(data) if binary else sum(len(v) + 8 for _, v in text_rows)
    return {"rows": rows, "seconds": took, "rows_per_s": rows / took, "mb": size / 2**20}


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


def copy_convert_ab(rows: int = 1000, rounds: int = 3) -> dict[str, list[float]]:
    """Text COPY of ``rows`` vector(384) rows on two hive-bridge servers of the same build (Liftoff-only,
    as the supervisor runs it), one with ``--no-copy-convert``, alternated ``rounds`` times: rows/s."""
    import json
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from .common import JS_DIR, REG, stop_proc, wait_line

    work = Path(tempfile.mkdtemp(prefix="hb-copy-ab-"))
    servers: dict[str, tuple[subprocess.Popen[bytes], Conn]] = {}
    try:
        for name, flags in (("converted", []), ("text", ["--no-copy-convert"])):
            log_path = work / f"{name}.log"
            argv = ["node", "--liftoff-only", str(JS_DIR / "server.js"), "--no-lock", "--port=0"]
            argv += ["--data-dir", str(work / name), "--admin-port=-1", "--log-level=warn", *flags]
            with open(log_path, "ab") as out:
                p = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=JS_DIR
                )
            REG.procs.append(p)
            line = wait_line(log_path, '"event":"ready"', p, time.monotonic() + 120)
            servers[name] = (p, Conn("127.0.0.1", int(json.loads(line)["port"])))
        result: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, (_, conn) in servers.items():
                result[name].append(vector_copy(conn, rows, binary=False)["rows_per_s"])
        return result
    finally:
        for p, _ in servers.values():
            stop_proc(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # python -m scripts.bench.vectors [rows] [rounds]: the COPY conversion A/B alone
    import sys

    ab = copy_convert_ab(*(int(a) for a in sys.argv[1:3]))
    for name, rates in ab.items():
        print(
            f"{name}: median {sorted(rates)[len(rates) // 2]:,.0f} rows/s",
            [round(r) for r in rates],
        )
