"""The shared-memory buffers between the front end and the PGlite worker grow for a large message
and shrink back once the server is idle (a SharedArrayBuffer cannot shrink: they are replaced)."""

from __future__ import annotations

from collections.abc import Callable

from helpers import wait_until
from wire_support import WireServer

MIB = 1 << 20
IDLE_SIZE = 2 * MIB  # one 1 MiB request buffer and one 1 MiB response buffer


def test_buffers_shrink_back_after_a_large_result_and_a_large_copy(
    server: WireServer, unique: Callable[[str], str]
) -> None:
    table = unique("bulk")
    shrinks = server.stats()["channel_shrinks"]
    with server.psycopg(autocommit=True) as conn:
        assert len(conn.execute("SELECT repeat('x', 24000000)").fetchone()[0]) == 24_000_000
        assert server.stats()["channel_buffer_bytes"] > 24 * MIB  # grew for the result
        conn.execute(f"CREATE TABLE {table} (id int, body text)")
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for i in range(200):
                copy.write_row((i, "y" * 100_000))  # 20 MB in one COPY, handed over at once
        stats = wait_until(
            lambda: (s := server.stats())["channel_buffer_bytes"] == IDLE_SIZE and s,
            timeout=30,
            what="the channel buffers to shrink back after the peak",
        )
        assert stats["channel_shrinks"] > shrinks
        # the worker uses the new buffers: small and large messages still round-trip intact
        assert conn.execute(f"SELECT count(*), sum(length(body)) FROM {table}").fetchone() == (
            200,
            20_000_000,
        )
        assert conn.execute("SELECT repeat('z', 5000000)").fetchone() == ("z" * 5_000_000,)
        conn.execute(f"DROP TABLE {table}")
