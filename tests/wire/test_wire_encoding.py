"""Client encodings (issue 14, item 5): the backend is UTF8 and PGlite's conversion functions crash it,
so a client asking for LATIN1, LATIN9, WIN1252, EUC_JP ... gets PostgreSQL's own refusal, at startup or
at SET, and the shared backend never restarts for it. UTF8 and SQL_ASCII need no conversion and work."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, pq
from wire_support import WireServer


@pytest.fixture
def no_restart(server: WireServer) -> Iterator[None]:
    before = server.stats()["backend_restarts"]
    offset = server.log_size()
    yield
    assert server.stats()["backend_restarts"] == before, "a client's encoding restarted the backend"
    assert "engine failed" not in server.log_since(offset)


SETS = [
    "SET client_encoding = 'LATIN9'",
    "SET client_encoding TO latin1",
    "SET NAMES 'WIN1252'",
    "SET SESSION client_encoding = 'EUC_JP'",
    "SELECT set_config('client_encoding', 'LATIN1', false)",
]


@pytest.mark.parametrize("sql", SETS)
@pytest.mark.usefixtures("no_restart")
def test_set_of_an_encoding_the_backend_cannot_convert_is_refused(
    server: WireServer, sql: str
) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        with pytest.raises(errors.FeatureNotSupported) as info:
            conn.execute(sql)
        assert info.value.sqlstate == "0A000"
        assert 'invalid value for parameter "client_encoding"' in str(info.value)
        assert info.value.diag.message_detail is not None
        assert "and UTF8 is not supported" in info.value.diag.message_detail
        # nothing changed: the client still talks UTF8, and text round-trips
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
        assert conn.execute("SELECT %s::text", ["€ é ü"]).fetchone() == ("€ é ü",)


@pytest.mark.usefixtures("no_restart")
def test_refused_in_a_transaction_fails_it_as_postgresql_does(server: WireServer) -> None:
    with psycopg.connect(server.dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute("SET client_encoding = 'LATIN1'")
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        conn.rollback()
        # a simple-protocol query (psycopg's ClientCursor) is refused the same way
        cur = psycopg.ClientCursor(conn)
        with pytest.raises(errors.FeatureNotSupported):
            cur.execute("SELECT 1; SET NAMES 'LATIN9'")
        conn.rollback()
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)


@pytest.mark.parametrize(
    "params",
    [{"client_encoding": "LATIN1"}, {"options": "-c client_encoding=WIN1252"}],
    ids=["client_encoding", "options"],
)
@pytest.mark.usefixtures("no_restart")
def test_startup_with_such_an_encoding_is_refused(
    server: WireServer, params: dict[str, str]
) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(server.dsn, connect_timeout=20, **params)
    assert "and UTF8 is not supported" in str(info.value)
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.usefixtures("no_restart")
def test_utf8_aliases_and_sql_ascii_work(server: WireServer) -> None:
    with psycopg.connect(server.dsn, client_encoding="utf-8") as conn:
        assert conn.execute("SELECT 'é'").fetchone() == ("é",)
        conn.execute("SET client_encoding = 'unicode'")
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
        # SQL_ASCII passes the bytes through, as PostgreSQL does
        conn.execute("SET client_encoding = 'SQL_ASCII'")
        assert conn.execute("SELECT chr(8364)").fetchone() == ("€".encode(),)
        conn.execute("RESET client_encoding")
        assert conn.execute("SELECT chr(8364)").fetchone() == ("€",)
