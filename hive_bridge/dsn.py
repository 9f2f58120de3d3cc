"""The spellings of a bridge's address: libpq DSN, SQLAlchemy psycopg URL, SQLAlchemy asyncpg URL,
and the Unix-socket DSN.

The bridge always listens on loopback without TLS and does not speak GSS encryption, so the libpq
forms say ``sslmode=disable&gssencmode=disable`` (otherwise libpq would first ask for encryption).
asyncpg takes ``ssl=disable`` instead and never asks for GSS encryption. Over the Unix socket no
password is needed and libpq never tries encryption; psycopg and asyncpg both reach it through
SQLAlchemy's ``?host=<dir>&port=<port>``, which :mod:`hive_bridge.engines` hands out by default
(SELECT 1 measured 10-35 % faster than over loopback TCP).
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = [
    "DATABASE",
    "USER",
    "async_sqlalchemy_url",
    "asyncpg_dsn",
    "libpq_dsn",
    "sqlalchemy_url",
    "unix_async_sqlalchemy_url",
    "unix_dsn",
    "unix_sqlalchemy_url",
]

USER = "postgres"
DATABASE = "postgres"


def connect_host(host: str) -> str:
    """Where a client should connect for a server bound to ``host``."""
    if host in ("", "0.0.0.0", "::", "localhost"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _netloc(host: str, port: int, password: str | None) -> str:
    auth = USER if password is None else f"{USER}:{quote(password, safe='')}"
    return f"{auth}@{connect_host(host)}:{port}"


def libpq_dsn(host: str, port: int, password: str | None) -> str:
    """``postgresql://postgres:PW@127.0.0.1:PORT/postgres?sslmode=disable&gssencmode=disable``"""
    return f"postgresql://{_netloc(host, port, password)}/{DATABASE}?sslmode=disable&gssencmode=disable"


def asyncpg_dsn(host: str, port: int, password: str | None) -> str:
    """``postgresql://…?sslmode=disable`` for ``asyncpg.connect`` (it would send ``gssencmode`` to
    the server as a setting, which the server rejects)."""
    return f"postgresql://{_netloc(host, port, password)}/{DATABASE}?sslmode=disable"


def sqlalchemy_url(host: str, port: int, password: str | None) -> str:
    """``postgresql+psycopg://…?sslmode=disable&gssencmode=disable`` for :func:`sqlalchemy.create_engine`."""
    return (
        f"postgresql+psycopg://{_netloc(host, port, password)}/{DATABASE}"
        "?sslmode=disable&gssencmode=disable"
    )


def async_sqlalchemy_url(host: str, port: int, password: str | None) -> str:
    """``postgresql+asyncpg://…?ssl=disable`` for :func:`sqlalchemy.ext.asyncio.create_async_engine`."""
    return f"postgresql+asyncpg://{_netloc(host, port, password)}/{DATABASE}?ssl=disable"


def _unix_query(socket_dir: str, port: int) -> str:
    return f"host={quote(socket_dir, safe='/')}&port={port}"


def unix_sqlalchemy_url(socket_dir: str, port: int) -> str:
    """``postgresql+psycopg://postgres@/postgres?host=<socket dir>&port=<port>`` (no password)."""
    return f"postgresql+psycopg://{USER}@/{DATABASE}?{_unix_query(socket_dir, port)}"


def unix_async_sqlalchemy_url(socket_dir: str, port: int) -> str:
    """``postgresql+asyncpg://postgres@/postgres?host=<socket dir>&port=<port>`` (no password)."""
    return f"postgresql+asyncpg://{USER}@/{DATABASE}?{_unix_query(socket_dir, port)}"


def unix_dsn(socket_dir: str, port: int) -> str:
    """``postgresql://postgres@/postgres?host=<socket dir>&port=<port>`` (libpq, psycopg, psql)."""
    return f"postgresql://{USER}@/{DATABASE}?host={quote(socket_dir, safe='/')}&port={port}"
