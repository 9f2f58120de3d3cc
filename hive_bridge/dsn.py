"""The spellings of a bridge's address: libpq DSN, SQLAlchemy psycopg URL, SQLAlchemy asyncpg URL,
and the Unix-socket DSN.

The bridge always listens on loopback without TLS and does not speak GSS encryption, so the libpq
forms say ``sslmode=disable&gssencmode=disable`` (otherwise libpq would first ask for encryption).
asyncpg takes ``ssl=disable`` instead and never asks for GSS encryption. Over the Unix socket no
password is needed and libpq never tries encryption.
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
    "unix_dsn",
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


def unix_dsn(socket_dir: str, port: int) -> str:
    """``postgresql://postgres@/postgres?host=<socket dir>&port=<port>`` (libpq, psycopg, psql)."""
    return f"postgresql://{USER}@/{DATABASE}?host={quote(socket_dir, safe='/')}&port={port}"
