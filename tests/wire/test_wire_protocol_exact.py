"""The exact message flow PostgreSQL gives, on a raw socket (issue 14, items 2, 3 and 4).

- Replies to Parse/Bind/Describe/Execute are sent when the client's Sync or Flush comes (PostgreSQL keeps
  them in its send buffer until then), so a pipeline gets one flight of replies; an error goes out at once.
- When the worker is replaced in the middle of a batch (a cancel, statement_timeout), every Sync and Query
  the client sent gets exactly one ReadyForQuery; messages after the last Sync get the error alone and are
  discarded up to the client's Sync, as PostgreSQL does after an error.
- A COPY TO STDOUT stopped part-way (psycopg cancels it when the block raises) leaves the transaction
  failed (INERROR), as on PostgreSQL.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import psycopg
import pytest
from psycopg import pq
from wire_support import RawConn, WireServer, error_fields, message, query_message, wait_until

CANCEL_REQUEST = 80877102


def parse(sql: str, name: str = "") -> bytes:
    return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(statement: str = "") -> bytes:
    return message(b"B", b"\0" + statement.encode() + b"\0" + struct.pack("!hhh", 0, 0, 0))


def describe_portal() -> bytes:
    return message(b"D", b"P\0")


def execute() -> bytes:
    return message(b"E", b"\0" + struct.pack("!i", 0))


SYNC = message(b"S")
FLUSH = message(b"H")


class Client(RawConn):
    """A raw connection that knows its BackendKeyData."""

    def __init__(self, server: WireServer) -> None:
        super().__init__(server.port, timeout=60)
        msgs = self.start()
        key = next(body for kind, body in msgs if kind == b"K")
        self.pid, self.secret = struct.unpack("!ii", key)

    def cancel(self, port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(struct.pack("!iiii", 16, CANCEL_REQUEST, self.pid, self.secret))
            sock.recv(1)  # the server closes it

    def pending(self) -> bytes:
        """Whatever has arrived without blocking."""
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            data = b""
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(60)
        self.buf += data
        return data

    def read_kinds(self, count_ready: int = 1) -> list[bytes]:
        kinds = []
        while count_ready:
            kind, _ = self.read_message()
            kinds.append(kind)
            if kind == b"Z":
                count_ready -= 1
        return kinds

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(query_message(sql))
        return self.read_until_ready()


def _served(server: WireServer) -> int:
    served: int = server.stats()["queries_served"]
    return served


# ---- item 4: replies grouped and flushed as PostgreSQL does --------------------------------------------


def test_pipeline_replies_wait_for_the_sync(server: WireServer) -> None:
    with Client(server) as c:
        before = _served(server)
        c.send(parse("SELECT 1") + bind() + describe_portal() + execute())
        c.send(bind() + describe_portal() + execute())
        wait_until(lambda: _served(server) >= before + 2, what="the two executions to run")
        assert c.pending() == b"", "replies were sent before the client's Sync or Flush"
        c.send(SYNC)
        kinds = c.read_kinds()
        assert kinds == [b"1", b"2", b"T", b"D", b"C", b"2", b"T", b"D", b"C", b"Z"]


def test_flush_sends_what_is_pending(server: WireServer) -> None:
    with Client(server) as c:
        c.send(parse("SELECT 2") + bind() + execute() + FLUSH)
        assert [c.read_message()[0] for _ in range(4)] == [b"1", b"2", b"D", b"C"]
        c.send(SYNC)
        assert c.read_message()[0] == b"Z"


def test_an_error_is_sent_at_once(server: WireServer) -> None:
    with Client(server) as c:
        c.send(parse("SELEC 1") + bind() + execute())
        kind, body = c.read_message()  # no Sync yet: the error still comes at once
        assert kind == b"E" and error_fields(body)["C"] == "42601"
        c.send(SYNC)
        assert c.read_message() == (b"Z", b"I")
        assert [k for k, _ in c.query("SELECT 3")] == [b"T", b"D", b"C", b"Z"]


def test_psycopg_pipeline_is_one_flight_each_way(server: WireServer, unique: Any) -> None:
    """psycopg's own test_executemany_trace: libpq's trace shows one flight each way."""
    import tempfile
    from itertools import groupby

    table = unique("trace")
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        with tempfile.TemporaryFile(buffering=0) as f:
            conn.pgconn.trace(f.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            with conn.pipeline():
                cur = conn.cursor()
                cur.executemany(f"INSERT INTO {table} (id) VALUES (%s)", [(10,), (20,)])
                cur.executemany(f"INSERT INTO {table} (id) VALUES (%s)", [(10,), (20,)])
            conn.pgconn.untrace()
            f.seek(0)
            directions = [line.split(b"\t")[0] for line in f.read().splitlines()]
        conn.execute(f"DROP TABLE {table}")
    assert [k for k, _ in groupby(directions)] == [b"F", b"B"]


# ---- item 2: exactly one ReadyForQuery per Sync/Query when the worker is replaced ---------------------


def _wait_running(server: WireServer) -> None:
    wait_until(
        lambda: (server.stats().get("activity") or {}).get("backend") == "running",
        timeout=30,
        what="the statement to be running in PGlite",
    )


def test_cancel_of_a_batch_without_sync(server: WireServer) -> None:
    restarts = server.stats()["backend_restarts"]
    with Client(server) as c:
        c.send(parse("SELECT pg_sleep(60)") + bind() + execute())
        _wait_running(server)
        c.cancel(server.port)
        kind, body = c.read_message()
        assert kind == b"E" and error_fields(body)["C"] == "57014"
        # the rest of that batch is discarded up to its Sync, which gets the one ReadyForQuery
        c.send(bind() + execute() + query_message("SELECT 'discarded'") + SYNC)
        assert c.read_message() == (b"Z", b"I")
        assert [k for k, _ in c.query("SELECT 4")] == [b"T", b"D", b"C", b"Z"]
        assert c.pending() == b""
    assert server.stats()["backend_restarts"] == restarts + 1


def test_cancel_of_a_pipeline_answers_every_sync_once(server: WireServer) -> None:
    with Client(server) as c:
        c.send(
            parse("SELECT pg_sleep(60)")
            + bind()
            + execute()
            + SYNC
            + parse("SELECT 2")
            + bind()
            + execute()
            + SYNC
            + query_message("SELECT 3")
            + parse("SELECT 5")
            + bind()
            + execute()
        )
        _wait_running(server)
        c.cancel(server.port)
        kinds = c.read_kinds(count_ready=3)
        assert kinds.count(b"Z") == 3 and kinds[0] == b"E"
        # the open batch after the last Sync: its error alone, then discarded up to its Sync
        kind, body = c.read_message()
        assert kind == b"E" and error_fields(body)["C"] == "57014"
        c.send(SYNC)
        assert c.read_message() == (b"Z", b"I")
        assert [k for k, _ in c.query("SELECT 6")] == [b"T", b"D", b"C", b"Z"]


def test_cancel_of_a_waiting_batch_without_sync(server: WireServer, unique: Any) -> None:
    """A client waiting for the backend cancels a batch it has not finished (no Sync yet): the error
    alone, then its Sync gets the one ReadyForQuery; nothing of that batch ever runs."""
    table = unique("waiting")
    with Client(server) as holder, Client(server) as waiter:
        assert holder.query(f"CREATE TABLE {table} (id int)")[-1] == (b"Z", b"I")
        assert holder.query(f"BEGIN; INSERT INTO {table} VALUES (1)")[-1] == (b"Z", b"T")
        waiter.send(parse(f"INSERT INTO {table} VALUES (2)") + bind() + execute())
        wait_until(lambda: server.stats()["waiting"] >= 1, what="the waiter to queue")
        waiter.cancel(server.port)
        kind, body = waiter.read_message()
        assert kind == b"E" and error_fields(body)["C"] == "57014"
        waiter.send(bind() + execute() + SYNC)
        assert holder.query("COMMIT")[-1] == (b"Z", b"I")
        assert waiter.read_message() == (b"Z", b"I")
        out = waiter.query(f"SELECT count(*) FROM {table}")
        assert out[1] == (b"D", b"\x00\x01\x00\x00\x00\x011")  # only the holder's row
        assert waiter.query(f"DROP TABLE {table}")[-1] == (b"Z", b"I")


def test_statement_timeout_in_a_transaction(server: WireServer) -> None:
    with Client(server) as c:
        assert c.query("SET statement_timeout = '300ms'")[-1] == (b"Z", b"I")
        assert c.query("BEGIN")[-1] == (b"Z", b"T")
        c.send(parse("SELECT pg_sleep(60)") + bind() + execute() + SYNC)
        kinds = c.read_kinds()
        assert kinds[0] == b"E" and kinds.count(b"Z") == 1
        assert c.buf == b"" and c.pending() == b""
        out = c.query("SELECT 1")  # the transaction is aborted, as on PostgreSQL
        assert error_fields(out[0][1])["C"] == "25P02" and out[-1] == (b"Z", b"E")
        assert c.query("ROLLBACK")[-1] == (b"Z", b"I")
        assert c.query("RESET statement_timeout")[-1] == (b"Z", b"I")


# ---- item 3: COPY TO STDOUT stopped part-way ------------------------------------------------------------


@pytest.mark.parametrize("autocommit", [False, True])
def test_copy_out_stopped_part_way_fails_the_transaction(
    server: WireServer, autocommit: bool
) -> None:
    """psycopg's test_copy_out_error_with_copy_not_finished: the block raises after one row, psycopg
    cancels the COPY; PostgreSQL reports the transaction INERROR (IDLE with autocommit)."""
    with psycopg.connect(server.dsn, autocommit=autocommit) as conn:
        cur = conn.cursor()
        with (
            pytest.raises(ZeroDivisionError),
            cur.copy("COPY (SELECT generate_series(1, 1000000)) TO STDOUT") as copy,
        ):
            copy.read_row()
            1 / 0  # noqa: B018 - the user's code fails in the middle of the COPY
        expected = pq.TransactionStatus.IDLE if autocommit else pq.TransactionStatus.INERROR
        assert conn.info.transaction_status == expected
        if not autocommit:
            conn.rollback()
        assert conn.execute("SELECT 7").fetchone() == (7,)
