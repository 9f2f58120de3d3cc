"""Per-client session state on the one shared backend session: SET, startup parameters, and the
ParameterStatus messages each client is told."""

from __future__ import annotations

import asyncio

import pytest
from wire_support import WireServer, in_thread

TS = "SELECT '2024-01-01 00:00:00+00'::timestamptz::text"


@pytest.mark.asyncio
async def test_set_timezone_is_per_client(server: WireServer) -> None:
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        await a.execute("SET TimeZone = 'Asia/Tokyo'")
        for _ in range(3):  # interleave: each switch must re-apply the right settings
            assert await b.fetchval("SHOW TimeZone") == "UTC"
            assert await b.fetchval(TS) == "2024-01-01 00:00:00+00"
            assert await a.fetchval("SHOW TimeZone") == "Asia/Tokyo"
            assert await a.fetchval(TS) == "2024-01-01 09:00:00+09"

        # concurrently, many times over
        async def check(conn, zone: str, text: str) -> None:
            for _ in range(50):
                assert await conn.fetchval("SELECT current_setting('TimeZone')") == zone
                assert await conn.fetchval(TS) == text

        await asyncio.gather(
            check(a, "Asia/Tokyo", "2024-01-01 09:00:00+09"),
            check(b, "UTC", "2024-01-01 00:00:00+00"),
        )
        await a.execute("RESET TimeZone")
        assert await a.fetchval("SHOW TimeZone") == "UTC"
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_set_local_and_search_path_do_not_leak(server: WireServer, unique) -> None:
    schema = unique("s")
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        await a.execute(f"CREATE SCHEMA {schema}")
        await a.execute(f"CREATE TABLE {schema}.only_a (v int)")
        await a.execute(f"SET search_path = {schema}, public")
        assert await a.fetchval("SELECT count(*) FROM only_a") == 0
        assert await b.fetchval("SHOW search_path") == "public"
        async with a.transaction():
            await a.execute("SET LOCAL work_mem = '7MB'")
            assert await a.fetchval("SHOW work_mem") == "7MB"
        assert await a.fetchval("SHOW work_mem") == await b.fetchval("SHOW work_mem") != "7MB"
        assert await a.fetchval("SELECT count(*) FROM only_a") == 0
    finally:
        await b.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await a.close()
        await b.close()


def test_startup_parameters_per_client(server: WireServer) -> None:
    with (
        server.psycopg(autocommit=True, options="-c DateStyle=German", application_name="x") as a,
        server.psycopg(autocommit=True) as b,
    ):
        assert a.execute("SHOW DateStyle").fetchone() == ("German, DMY",)
        assert a.execute("SHOW application_name").fetchone() == ("x",)
        assert a.execute("SELECT '2024-03-05'::date::text").fetchone() == ("05.03.2024",)
        assert a.info.parameter_status("application_name") == "x"
        assert a.info.parameter_status("DateStyle") == "German, DMY"

        assert b.execute("SHOW DateStyle").fetchone() == ("ISO, MDY",)
        assert b.execute("SHOW application_name").fetchone() == ("",)
        assert b.execute("SELECT '2024-03-05'::date::text").fetchone() == ("2024-03-05",)
        assert b.info.parameter_status("application_name") == ""
        assert b.info.parameter_status("DateStyle") == "ISO, MDY"

        # A's settings are still A's after B ran
        assert a.execute("SHOW DateStyle").fetchone() == ("German, DMY",)
        # SET reports the new value to the client that set it, and to no one else
        a.execute("SET application_name = 'y'")
        assert a.info.parameter_status("application_name") == "y"
        assert b.execute("SHOW application_name").fetchone() == ("",)
        assert b.info.parameter_status("application_name") == ""
        assert a.execute("SHOW application_name").fetchone() == ("y",)


@pytest.mark.asyncio
async def test_asyncpg_server_settings(server: WireServer) -> None:
    a = await server.asyncpg(
        server_settings={"application_name": "app-a", "TimeZone": "Europe/Paris"}
    )
    b = await server.asyncpg()
    try:
        assert a.get_settings().application_name == "app-a"
        assert a.get_settings().TimeZone == "Europe/Paris"
        assert b.get_settings().TimeZone == "UTC"
        assert await a.fetchval("SHOW TimeZone") == "Europe/Paris"
        assert await b.fetchval("SHOW TimeZone") == "UTC"
        assert await a.fetchval("SELECT current_setting('application_name')") == "app-a"
        assert await b.fetchval("SELECT current_setting('application_name')") == ""
    finally:
        await a.close()
        await b.close()


def test_bad_startup_option_is_an_error(server: WireServer) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError) as info:
        server.psycopg(options="-c no_such_setting_xyz=1")
    assert "no_such_setting_xyz" in str(info.value)
    with server.psycopg() as conn:  # the server goes on
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.asyncio
async def test_session_state_from_threads(server: WireServer) -> None:
    """psycopg clients in threads each with its own DateStyle: every answer in its own style."""
    styles = {
        "ISO, MDY": "2024-03-05",
        "German, DMY": "05.03.2024",
        "SQL, DMY": "05/03/2024",
        "Postgres, MDY": "03-05-2024",
    }

    def run(style: str) -> list[str]:
        with server.psycopg(
            autocommit=True, options=f"-c DateStyle={style.replace(', ', ',')}"
        ) as conn:
            return [
                conn.execute("SELECT '2024-03-05'::date::text").fetchone()[0] for _ in range(40)
            ]

    results = await asyncio.gather(*(in_thread(run, s) for s in styles))
    for (style, expected), got in zip(styles.items(), results, strict=True):
        assert set(got) == {expected}, style


@pytest.mark.asyncio
@pytest.mark.parametrize("statement", ["DISCARD ALL", "DEALLOCATE ALL"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
async def test_discard_and_deallocate_all_affect_only_that_client(
    server: WireServer, statement: str, protocol: str
) -> None:
    """README: DISCARD ALL / DEALLOCATE ALL drop only the issuing client's statements and settings.
    asyncpg's execute() sends a simple query; fetch() sends the same text through Parse/Bind."""
    a = await server.asyncpg()
    b = await server.asyncpg()
    try:
        await b.execute("SET TimeZone = 'Asia/Tokyo'")
        stmt = await b.prepare("SELECT $1::int + 1")
        assert await stmt.fetchval(1) == 2
        own = await a.prepare("SELECT $1::int + 2")
        assert await own.fetchval(1) == 3
        if protocol == "simple":
            await a.execute(statement)
        else:
            await a.fetch(statement)
        # B's statement and setting are untouched
        assert await stmt.fetchval(2) == 3
        assert await b.fetchval("SHOW TimeZone") == "Asia/Tokyo"
        # and A goes on normally (asyncpg re-prepares what it lost)
        assert await a.fetchval("SELECT $1::int * 5", 2) == 10
    finally:
        await a.close()
        await b.close()
