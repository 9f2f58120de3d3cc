"""--password-file: SCRAM-SHA-256 for every TCP client (any user name, database "postgres")."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from wire_support import RawConn, WireServer, error_fields, split_messages, startup_packet

PASSWORD = "c0rrect horse;battery"


@pytest.fixture(scope="module")
def auth_server(server_factory, tmp_path_factory) -> Iterator[WireServer]:
    pw_file = tmp_path_factory.mktemp("auth") / "password"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    server = server_factory.start(password_file=pw_file)
    yield server
    server.stop()


def _url_password() -> str:
    from urllib.parse import quote

    return quote(PASSWORD, safe="")


def test_server_asks_for_scram(auth_server: WireServer) -> None:
    with RawConn(auth_server.port) as raw:
        raw.send(startup_packet(user="postgres", database="postgres"))
        kind, body = raw.read_message()
    assert kind == b"R"
    assert struct.unpack("!i", body[:4])[0] == 10  # AuthenticationSASL
    assert b"SCRAM-SHA-256\0" in body[4:]


@pytest.mark.parametrize("user", ["postgres", "alice"])
def test_psycopg_right_password(auth_server: WireServer, user: str) -> None:
    with auth_server.psycopg(dsn=auth_server.dsn_for(user=user, password=_url_password())) as conn:
        assert conn.execute("SELECT current_user, 1 + 1").fetchone()[1] == 2


@pytest.mark.asyncio
async def test_asyncpg_right_password(auth_server: WireServer) -> None:
    conn = await auth_server.asyncpg(password=PASSWORD)
    try:
        assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
    finally:
        await conn.close()


def test_psql_right_password(auth_server: WireServer) -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    out = subprocess.run(
        ["psql", "-X", "-w", "-At", "-c", "SELECT 'authenticated'"],
        env=auth_server.libpq_env(PGPASSWORD=PASSWORD),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "authenticated"


@pytest.mark.asyncio
async def test_asyncpg_wrong_password_is_28P01(auth_server: WireServer) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await auth_server.asyncpg(password="wrong")
    assert info.value.sqlstate == "28P01"
    assert "password authentication failed" in str(info.value)


def test_psycopg_wrong_password(auth_server: WireServer) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        auth_server.psycopg(dsn=auth_server.dsn_for(password="wrong"))
    assert 'password authentication failed for user "postgres"' in str(info.value)


def test_psql_wrong_and_no_password(auth_server: WireServer) -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    wrong = subprocess.run(
        ["psql", "-X", "-w", "-c", "SELECT 1"],
        env=auth_server.libpq_env(PGPASSWORD="nope"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 2
    assert "password authentication failed" in wrong.stderr
    none = subprocess.run(
        ["psql", "-X", "-w", "-c", "SELECT 1"],
        env=auth_server.libpq_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert none.returncode == 2
    assert "no password supplied" in none.stderr


@pytest.mark.asyncio
async def test_no_password_is_refused(auth_server: WireServer) -> None:
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)) as info:
        await auth_server.asyncpg()
    assert "password" in str(info.value).lower()
    with pytest.raises(psycopg.OperationalError) as pinfo:
        auth_server.psycopg()
    assert "no password supplied" in str(pinfo.value)


def test_wrong_password_raw_error_response(auth_server: WireServer) -> None:
    """A client that answers the SASL request with garbage gets FATAL 28P01 or 08P01, then EOF."""
    with RawConn(auth_server.port) as raw:
        raw.send(startup_packet(user="postgres", database="postgres"))
        kind, _ = raw.read_message()
        assert kind == b"R"
        mech = b"SCRAM-SHA-256\0"
        first = b"n,,n=,r=short"
        raw.send(
            b"p"
            + struct.pack("!i", 4 + len(mech) + 4 + len(first))
            + mech
            + struct.pack("!i", len(first))
            + first
        )
        kind, _ = raw.read_message()  # AuthenticationSASLContinue
        assert kind == b"R"
        final = b"c=biws,r=not-the-nonce,p=AAAA"
        raw.send(b"p" + struct.pack("!i", 4 + len(final)) + final)
        data = raw.read_to_eof(5)
    msgs = split_messages(data)
    assert [k for k, _ in msgs] == [b"E"], data
    fields = error_fields(msgs[0][1])
    assert fields["S"] == "FATAL"
    assert fields["C"] in ("28P01", "08P01")


def test_other_database_with_right_password(auth_server: WireServer) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        auth_server.psycopg(dsn=auth_server.dsn_for(password=_url_password(), database="other"))
    assert 'database "other" does not exist' in str(info.value)
