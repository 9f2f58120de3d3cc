"""pgvector, loaded by default (--extensions vector): a KNN query over the wire."""

from __future__ import annotations

import pytest
from wire_support import WireServer

POINTS = {
    1: "[0,0,0]",
    2: "[1,0,0]",
    3: "[0,2,0]",
    4: "[5,5,5]",
    5: "[0.5,0.5,0]",
    6: "[-3,0,0]",
}


@pytest.mark.asyncio
async def test_vector_knn(server: WireServer, unique) -> None:
    table = unique("items")
    conn = await server.asyncpg()
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, embedding vector(3))")
        await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2::vector)", list(POINTS.items()))
        rows = await conn.fetch(
            f"SELECT id FROM {table} ORDER BY embedding <-> '[0.9,0.1,0]' LIMIT 3"
        )
        assert [r["id"] for r in rows] == [2, 5, 1]
        # parameterised query vector, cosine distance, and an index
        await conn.execute(f"CREATE INDEX ON {table} USING hnsw (embedding vector_l2_ops)")
        rows = await conn.fetch(
            f"SELECT id, embedding <-> $1::vector AS d FROM {table}"
            " ORDER BY embedding <-> $1::vector LIMIT 3",
            "[0,1.9,0]",
        )
        assert [r["id"] for r in rows] == [3, 5, 1]
        assert rows[0]["d"] == pytest.approx(0.1, abs=1e-6)
        text = await conn.fetchval(f"SELECT embedding::text FROM {table} WHERE id = 5")
        assert text == "[0.5,0.5,0]"
        with pytest.raises(Exception, match="expected 3 dimensions"):
            await conn.execute(f"INSERT INTO {table} VALUES (9, '[1,2]')")
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


def test_vector_with_psycopg(server: WireServer, unique) -> None:
    table = unique("vitems")
    with server.psycopg(autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"CREATE TABLE {table} (id int, embedding vector(3))")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s::vector)", list(POINTS.items()))
        rows = conn.execute(
            f"SELECT id FROM {table} ORDER BY embedding <=> %s::vector LIMIT 3", ("[10,0.1,0]",)
        ).fetchall()
        # cosine: the points along +x first ([0,0,0] has no direction and sorts last)
        assert [r[0] for r in rows][:2] == [2, 5]
        conn.execute(f"DROP TABLE {table}")
