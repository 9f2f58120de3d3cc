"""Fuzzing the wire front end: whatever one client sends, it never hangs and never hurts the others.

Each example opens a raw connection, completes the startup handshake, sends a hypothesis-generated
sequence of frontend messages (well-formed ones with random contents, garbage, bad lengths), then a
probe. The oracle is what a user would see:

- the fuzzed connection either answers the probe (after Sync/ROLLBACK if the fuzz left it mid-batch or
  in an aborted transaction) or is closed by the server, within a deadline: never a hang;
- another client can still run ``SELECT 1`` afterwards;
- the server process is still alive.

CI runs a short version; ``scripts/fuzz_wire.py`` runs it longer (FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_support import WireServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
# Longer than the fuzz server's idle-in-transaction timeout: a client idle in a transaction holds
# the others that long, by design.
DEADLINE_S = 6.0


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


SQL = st.sampled_from(
    [
        "SELECT 1",
        "SELECT $1::int",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SELECT 1/0",
        "SET TimeZone = 'Asia/Tokyo'",
        "SET statement_timeout = 50",
        "RESET ALL",
        "LISTEN fuzz",
        "UNLISTEN *",
        "NOTIFY fuzz, 'x'",
        "DISCARD ALL",
        "DEALLOCATE ALL",
        "CREATE TABLE IF NOT EXISTS fuzz_t (a int, b text)",
        "COPY fuzz_t FROM STDIN",
        "COPY fuzz_t TO STDOUT",
        "SELECT pg_sleep(0.01)",
        "SELEC garbage",
        "",
        ";;",
    ]
)
NAMES = st.sampled_from(["", "s1", "s2", "__hb1", "__hb_missing", "x" * 80])


@st.composite
def parse_msg(draw: st.DrawFn) -> bytes:
    oids = draw(st.lists(st.sampled_from([0, 23, 25, 1, 999999]), max_size=3))
    body = cstr(draw(NAMES)) + cstr(draw(SQL)) + struct.pack("!h", len(oids))
    body += b"".join(struct.pack("!i", o) for o in oids)
    return msg(b"P", body)


@st.composite
def bind_msg(draw: st.DrawFn) -> bytes:
    params = draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=3))
    body = (
        cstr(draw(NAMES))
        + cstr(draw(NAMES))
        + struct.pack("!h", 0)
        + struct.pack("!h", len(params))
    )
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", draw(st.sampled_from([0, 1])))
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # truncated
    return msg(b"B", body)


FRAME = st.one_of(
    SQL.map(lambda q: msg(b"Q", cstr(q))),
    parse_msg(),
    bind_msg(),
    st.tuples(st.sampled_from([b"S", b"P"]), NAMES).map(lambda t: msg(b"D", t[0] + cstr(t[1]))),
    st.tuples(st.sampled_from([b"S", b"P"]), NAMES).map(lambda t: msg(b"C", t[0] + cstr(t[1]))),
    st.integers(0, 3).map(lambda n: msg(b"E", cstr("") + struct.pack("!i", n))),
    st.just(msg(b"S", b"")),
    st.just(msg(b"H", b"")),
    st.binary(max_size=64).map(lambda b: msg(b"d", b)),
    st.just(msg(b"c", b"")),
    st.just(msg(b"f", cstr("fuzz"))),
    # not a frontend message type at all, or a lying length
    st.tuples(st.binary(min_size=1, max_size=1), st.binary(max_size=16)).map(
        lambda t: msg(t[0], t[1])
    ),
    st.tuples(st.sampled_from([b"Q", b"P", b"d"]), st.integers(-5, 3)).map(
        lambda t: t[0] + struct.pack("!i", t[1])
    ),
    st.binary(min_size=1, max_size=32),
)


class Conn:
    """A raw protocol connection with a deadline on every read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        self.buf = b""
        body = (
            struct.pack("!i", 196608)
            + cstr("user")
            + cstr("postgres")
            + cstr("database")
            + cstr("postgres")
            + b"\0"
        )
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self.closed = False
        assert self.read_until_ready() is not None, "startup handshake did not complete"

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def messages(self, deadline: float):  # type: ignore[no-untyped-def]
        while True:
            while len(self.buf) >= 5:
                length = struct.unpack("!i", self.buf[1:5])[0]
                if len(self.buf) < length + 1:
                    break
                kind, body, self.buf = (
                    self.buf[:1],
                    self.buf[5 : length + 1],
                    self.buf[length + 1 :],
                )
                yield kind, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the server: the connection hangs")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.buf += chunk

    def read_until_ready(self, token: bytes | None = None) -> bool | None:
        """Read to the next ReadyForQuery. True if the probe token was seen; None if the server closed."""
        seen = False
        for kind, body in self.messages(time.monotonic() + DEADLINE_S):
            if kind == b"D" and token is not None and token in body:
                seen = True
            if kind == b"Z":
                return seen
        return None

    def close(self) -> None:
        self.sock.close()


def probe(conn: Conn) -> None:
    """The fuzzed connection must answer a query again, or be closed: never hang."""
    for attempt in range(4):
        token = f"probe-{attempt}".encode()
        conn.send(
            msg(b"S", b"")
            + msg(b"c", b"")
            + msg(b"Q", cstr("ROLLBACK"))
            + msg(b"Q", cstr(f"SELECT '{token.decode()}'"))
        )
        if conn.closed:
            return
        # answers to the fuzz itself, the Sync, the ROLLBACK, then the probe
        for _ in range(200):
            result = conn.read_until_ready(token)
            if result is None or result:
                return
        # still not through (e.g. a COPY swallowed the probe): go round again
    raise AssertionError("the connection never answered the probe")


LARGE_TYPES = set(b"QPBFdcf")
SMALL_TYPES = set(b"DECSHX")


def ends_mid_message(data: bytes) -> bool:
    """Whether the server, framing ``data`` as PostgreSQL does, is left waiting for the rest of a message.

    A client that announces a 900 MB Query and stops sending is waited for, by PostgreSQL too; what
    matters then is that nobody else waits with it.
    """
    pos = 0
    while pos < len(data):
        kind = data[pos]
        if (kind not in LARGE_TYPES and kind not in SMALL_TYPES) or kind == ord("X"):
            return False  # refused (or Terminate): the connection is closed
        if len(data) - pos < 5:
            return True
        length = struct.unpack("!i", data[pos + 1 : pos + 5])[0]
        if length < 4 or length > (1 << 30 if kind in LARGE_TYPES else 10000):
            return False
        if pos + 1 + length > len(data):
            return True
        pos += 1 + length
    return False


def healthy(server: WireServer) -> None:
    other = Conn(server.port)
    other.send(msg(b"Q", cstr("SELECT 'alive'")))
    assert other.read_until_ready(b"alive"), "another client could not run a query after the fuzz"
    other.close()
    assert server.proc.poll() is None, "the server exited"


@pytest.fixture(scope="module")
def fuzz_server(server_factory) -> WireServer:  # type: ignore[no-untyped-def]
    return server_factory.start(queue_timeout_ms=4000, idle_in_transaction_timeout_ms=2000)


@pytest.mark.timeout(600)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not os.environ.get("FUZZ_RANDOM"),
)
@given(frames=st.lists(FRAME, min_size=1, max_size=12))
def test_fuzzed_client_never_hangs_and_never_hurts_others(
    fuzz_server: WireServer, frames: list[bytes]
) -> None:
    conn = Conn(fuzz_server.port)
    data = b"".join(frames)
    try:
        conn.send(data)
        if ends_mid_message(data):
            healthy(fuzz_server)  # while the fuzzed client sits mid-message, others are not held up
        else:
            probe(conn)
    finally:
        conn.close()
    healthy(fuzz_server)
