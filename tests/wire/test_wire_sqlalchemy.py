"""SQLAlchemy 2 pools on the wire front end: concurrent ORM sessions, then a prompt dispose().

dispose() closes every pooled connection with Terminate; a front end that does not close the socket
on Terminate makes it hang.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Integer, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from wire_support import WireServer, async_wait_until, wait_until

WORKERS = 8
ITEMS = 25


def _model(table: str):
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        worker: Mapped[int] = mapped_column(Integer, index=True)
        name: Mapped[str] = mapped_column(String(50))

    return Base, Item


def test_sync_engine_concurrent_sessions_and_dispose(server: WireServer, unique) -> None:
    Base, Item = _model(unique("sa_items"))
    baseline = server.settled_connections()
    engine = create_engine(
        server.sqlalchemy_url("psycopg"), pool_size=5, max_overflow=0, pool_timeout=30
    )
    try:
        Base.metadata.create_all(engine)

        def work(w: int) -> list[str]:
            for i in range(ITEMS):
                with Session(engine) as session, session.begin():
                    session.add(Item(worker=w, name=f"w{w}-{i}"))
                with Session(engine) as session:
                    n = session.scalar(
                        select(func.count()).select_from(Item).where(Item.worker == w)
                    )
                    assert n == i + 1, (w, i, n)
            with Session(engine) as session:
                return list(
                    session.scalars(select(Item.name).where(Item.worker == w).order_by(Item.id))
                )

        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(work, range(WORKERS), timeout=60))
        for w, names in enumerate(results):
            assert names == [f"w{w}-{i}" for i in range(ITEMS)]
        assert engine.pool.checkedout() == 0
        assert server.stats()["connections"] - baseline == 5, "the pool keeps pool_size connections"
        Base.metadata.drop_all(engine)
    finally:
        t0 = time.monotonic()
        engine.dispose()
        elapsed = time.monotonic() - t0
    # stock pglite-server hangs here for good; 20 s is a limit load cannot reach
    assert elapsed < 20, f"engine.dispose() took {elapsed:.2f} s"
    wait_until(
        lambda: server.stats()["connections"] == baseline,
        timeout=30,
        what="the server to see the pooled connections closed",
    )


@pytest.mark.asyncio
async def test_async_engine_concurrent_sessions_and_dispose(server: WireServer, unique) -> None:
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio extension needs greenlet")
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    Base, Item = _model(unique("sa_async_items"))
    baseline = server.settled_connections()
    engine = create_async_engine(
        server.sqlalchemy_url("asyncpg"), connect_args={"ssl": False}, pool_size=5, max_overflow=0
    )
    make_session = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

        async def work(w: int) -> list[str]:
            for i in range(ITEMS):
                async with make_session() as session, session.begin():
                    session.add(Item(worker=w, name=f"w{w}-{i}"))
                async with make_session() as session:
                    n = await session.scalar(
                        select(func.count()).select_from(Item).where(Item.worker == w)
                    )
                    assert n == i + 1, (w, i, n)
            async with make_session() as session:
                rows = await session.scalars(
                    select(Item.name).where(Item.worker == w).order_by(Item.id)
                )
                return list(rows)

        results = await asyncio.wait_for(
            asyncio.gather(*(work(w) for w in range(WORKERS))), timeout=60
        )
        for w, names in enumerate(results):
            assert names == [f"w{w}-{i}" for i in range(ITEMS)]
        assert server.stats()["connections"] - baseline == 5
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    finally:
        t0 = time.monotonic()
        await asyncio.wait_for(engine.dispose(), timeout=10)
        elapsed = time.monotonic() - t0
    assert elapsed < 20, f"AsyncEngine.dispose() took {elapsed:.2f} s"  # stock: hangs for good
    await async_wait_until(
        lambda: server.stats()["connections"] == baseline,
        timeout=30,
        what="the server to see the pooled connections closed",
    )
