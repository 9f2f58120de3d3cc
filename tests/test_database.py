"""The database through every client: SQLAlchemy sync/async (via the HIVE_* app API), psycopg,
asyncpg, psql; pgvector. Most tests share one session server (unique table names)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from helpers import SHARED_SERVER_DIRS
from sqlalchemy import ForeignKey, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import hive_bridge
from hive_bridge import Bridge

# ------------------------------------------------------------------ the app API (HIVE_* env)


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "orm_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(back_populates="author", cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "orm_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("orm_author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


@pytest.fixture(scope="module")
def app_env(template_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An application directory with HIVE_* pointing at a pglite data dir of its own."""
    app = tmp_path_factory.mktemp("app")
    SHARED_SERVER_DIRS.append(str(app / "data" / "automagik_hive.db"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(app)
        mp.setenv("HIVE_DATABASE_BACKEND", "pglite")
        mp.setenv("HIVE_DATABASE_URL", "pglite://./data/automagik_hive.db")
        yield app
        hive_bridge.stop_auto_bridges()


def test_sqlalchemy_orm_round_trip_sync(app_env: Path) -> None:
    engine = hive_bridge.create_engine()
    assert engine.url.drivername == "postgresql+psycopg"
    # over the Unix socket, which needs no password (TCP does: connecting proves which one)
    assert engine.url.password is None and str(engine.url.query["host"]).startswith("/")
    assert engine.pool.size() == 5  # type: ignore[attr-defined]
    # the data dir is where HIVE_DATABASE_URL says, with its run dir next to it
    assert (app_env / "data" / "automagik_hive.db" / "PG_VERSION").is_file()
    assert (app_env / "data" / "automagik_hive.db.bridge" / "state.json").is_file()
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Author(name="Ursula", books=[Book(title="Lathe"), Book(title="Dispossessed")]))
        session.commit()
    with Session(engine) as session:
        author = session.scalars(select(Author).where(Author.name == "Ursula")).one()
        assert sorted(b.title for b in author.books) == ["Dispossessed", "Lathe"]
        assert session.scalar(select(func.count()).select_from(Book)) == 2
    started = time.monotonic()
    engine.dispose()
    assert time.monotonic() - started < 20  # it returns (stock pglite-server: hangs for good)


def test_sqlalchemy_orm_round_trip_async(app_env: Path) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async def main() -> None:
        engine = hive_bridge.create_async_engine()
        assert engine.url.drivername == "postgresql+asyncpg"
        assert engine.url.password is None and str(engine.url.query["host"]).startswith("/")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session:
            session.add(Author(name="Octavia", books=[Book(title="Kindred")]))
            await session.commit()
        async with AsyncSession(engine) as session:
            titles = (
                await session.scalars(
                    select(Book.title).join(Author).where(Author.name == "Octavia")
                )
            ).all()
            assert titles == ["Kindred"]
        # many short transactions on a pool: prepared statements of pooled connections must
        # not collide on the server
        for i in range(30):
            async with engine.begin() as conn:
                await conn.execute(text("SELECT CAST(:i AS int)"), {"i": i})
        started = time.monotonic()
        await engine.dispose()
        assert time.monotonic() - started < 20  # it returns (stock: hangs for good)

    asyncio.run(main())


def test_both_engines_share_one_server(app_env: Path) -> None:
    first = hive_bridge.database_url()
    second = hive_bridge.database_url(async_=True)
    bridge = hive_bridge.auto_bridge()
    assert bridge.socket_dir is not None
    assert (
        first
        == f"postgresql+psycopg://postgres@/postgres?host={bridge.socket_dir}&port={bridge.port}"
    )
    assert (
        second
        == f"postgresql+asyncpg://postgres@/postgres?host={bridge.socket_dir}&port={bridge.port}"
    )
    assert bridge.origin == "auto"


# ---------------------------------------------------------------------- direct clients


def test_psycopg_parameters_and_transactions(shared_dsn: str, unique: Callable[[str], str]) -> None:
    table = unique("psy")
    with psycopg.connect(shared_dsn) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score float8)")
        conn.commit()
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (1, "ada", 1.5))
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (2, "bob", None))
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (3, "cy", 0.0))
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (1, "dup", 0.0))
        rows = conn.execute(f"SELECT id, name, score FROM {table} ORDER BY id").fetchall()
        assert rows == [(1, "ada", 1.5), (2, "bob", None)]
        # enough executions of one statement for psycopg to prepare it server-side
        for i in range(10):
            assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)


def test_asyncpg_parameters_and_transactions(
    shared_bridge: Bridge, unique: Callable[[str], str]
) -> None:
    table = unique("apg")

    async def main() -> None:
        conn = await asyncpg.connect(shared_bridge.asyncpg_dsn)
        try:
            await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, tags text[])")
            async with conn.transaction():
                await conn.executemany(
                    f"INSERT INTO {table} VALUES ($1, $2)", [(1, ["a", "b"]), (2, [])]
                )
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 3, None)
                    await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 1, None)
            rows = await conn.fetch(
                f"SELECT id, tags FROM {table} WHERE id = ANY($1) ORDER BY id", [1, 2, 3]
            )
            assert [(r["id"], r["tags"]) for r in rows] == [(1, ["a", "b"]), (2, [])]
        finally:
            await asyncio.wait_for(conn.close(), 2)

    asyncio.run(main())


def test_psql(shared_dsn: str, unique: Callable[[str], str]) -> None:
    table = unique("psql")
    result = subprocess.run(
        [
            "psql",
            shared_dsn,
            "-v",
            "ON_ERROR_STOP=1",
            "-X",
            "-A",
            "-t",
            "-c",
            f"CREATE TABLE {table} (n int)",
            "-c",
            f"INSERT INTO {table} SELECT generate_series(1, 100)",
            "-c",
            f"SELECT sum(n) FROM {table}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "5050"


def test_pgvector_knn(shared_dsn: str, unique: Callable[[str], str]) -> None:
    table = unique("items")
    with psycopg.connect(shared_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, embedding vector(3))")
        points = {1: "[0,0,0]", 2: "[1,1,1]", 3: "[5,5,5]", 4: "[1,1,2]", 5: "[-3,0,0]"}
        for ident, vec in points.items():
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s::vector)", (ident, vec))
        rows = conn.execute(
            f"SELECT id, embedding <-> '[1,1,1.2]' AS d FROM {table} "
            "ORDER BY embedding <-> '[1,1,1.2]' LIMIT 3"
        ).fetchall()
        assert [r[0] for r in rows] == [2, 4, 1]
        assert rows[0][1] == pytest.approx(0.2, abs=1e-6)


def test_bridge_urls_have_the_documented_shape(shared_bridge: Bridge) -> None:
    password = shared_bridge.password
    port = shared_bridge.port
    assert password
    assert shared_bridge.dsn == (
        f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        "?sslmode=disable&gssencmode=disable"
    )
    assert shared_bridge.sqlalchemy_url.startswith("postgresql+psycopg://postgres:")
    assert shared_bridge.sqlalchemy_url.endswith("?sslmode=disable&gssencmode=disable")
    assert shared_bridge.asyncpg_dsn == (
        f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres?sslmode=disable"
    )
    assert shared_bridge.async_sqlalchemy_url == (
        f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{port}/postgres?ssl=disable"
    )


def test_wrong_password_is_refused(shared_bridge: Bridge) -> None:
    dsn = shared_bridge.dsn.replace(shared_bridge.password or "", "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(dsn, connect_timeout=5)


def test_ping(shared_dsn: str) -> None:
    took = hive_bridge.ping(shared_dsn, timeout=30)
    assert 0 < took < 30

    async def inside_a_running_loop() -> float:
        return hive_bridge.ping(shared_dsn, timeout=30)

    assert asyncio.run(inside_a_running_loop()) > 0


def test_ping_of_a_dead_port_fails_fast() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(OSError, match=r"Connect call failed|refused"):
        hive_bridge.ping(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=60)
    assert time.monotonic() - started < 30  # refused at once, not after the 60 s timeout


def test_ping_of_a_silent_server_times_out() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # accepts TCP, never answers: like a frozen server
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            hive_bridge.ping(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=0.5)
        assert time.monotonic() - started < 10  # its own timeout ends it: it never hangs


# ---------------------------------------------------------------- other backends' URLs


def test_sqlite_and_postgresql_urls_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HIVE_DATABASE_BACKEND", raising=False)  # inferred from the URL
    monkeypatch.setenv("HIVE_DATABASE_URL", "sqlite:///./data/app.db")
    assert hive_bridge.database_url() == "sqlite:///./data/app.db"
    engine = hive_bridge.create_engine()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 41 + 1")).scalar() == 42
    engine.dispose()
    assert (tmp_path / "data" / "app.db").is_file()

    monkeypatch.setenv("HIVE_DATABASE_URL", "postgres://u:pw@db.example:5432/hive?sslmode=require")
    assert (
        hive_bridge.database_url()
        == "postgresql+psycopg://u:pw@db.example:5432/hive?sslmode=require"
    )
    assert (
        hive_bridge.database_url(async_=True)
        == "postgresql+asyncpg://u:pw@db.example:5432/hive?ssl=require"
    )
