"""Bad input through the supervised bridge: each gets a clear error, and the server goes on running
(same Node process, no restart) with its data intact.

One bridge for the module, started through the Python API with the production supervisor options.
Every test inserts a marker row first and ends with ``intact.check()``: the server is RUNNING, it
is the same Node process, the supervisor restarted nothing, and every marker written so far (by
this test and the ones before it) is still readable.

Not repeated here: bad ``HIVE_DATABASE_URL`` values raise a ``ConfigError`` that names the variable
(tests/test_config.py: test_bad_urls, test_bad_settings, test_bad_value_in_dotenv_is_reported).
The wire front end's own limits are tested without the supervisor in tests/wire.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from helpers import SHARED_SERVER_DIRS

from hive_bridge import Bridge
from hive_bridge.readiness import ping

pytestmark = [pytest.mark.bridge]

PROTOCOL_3 = 196608
SSL_REQUEST = 80877103
MAX_CONNECTIONS = 100  # bridge-js --max-connections default; the Python side does not change it
STARTUP_TIMEOUT = 10.0  # bridge-js --startup-timeout-ms default; the Python side does not change it


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def bridge(template_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    data_dir = tmp_path_factory.mktemp("bad-input") / "db"
    shutil.copytree(template_data_dir, data_dir)
    SHARED_SERVER_DIRS.append(str(data_dir))
    server = Bridge(data_dir).start()  # default SupervisorOptions, as an application gets them
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE markers (name text PRIMARY KEY, body text NOT NULL)")
    yield server
    server.stop()


MARKERS: list[str] = []


class Intact:
    """A marker row written before the test; :meth:`check` proves the server and data survived."""

    def __init__(self, bridge: Bridge, name: str) -> None:
        self.bridge = bridge
        self.node_pid = bridge.node_pid
        self.restarts = bridge.status()["restarts"]
        with psycopg.connect(bridge.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO markers VALUES (%s, %s)", (name, "m" * 1000))
        MARKERS.append(name)

    def check(self) -> None:
        bridge = self.bridge
        assert bridge.state == "RUNNING"
        assert bridge.node_pid == self.node_pid, "the Node server was restarted"
        assert bridge.status()["restarts"] == self.restarts
        with psycopg.connect(bridge.dsn, autocommit=True, connect_timeout=10) as conn:
            names = {
                n
                for (n,) in conn.execute("SELECT name FROM markers WHERE body = repeat('m', 1000)")
            }
        assert set(MARKERS) <= names, f"markers lost: {set(MARKERS) - names}"


@pytest.fixture
def intact(bridge: Bridge, request: pytest.FixtureRequest) -> Intact:
    return Intact(bridge, f"{request.node.name}-{uuid.uuid4().hex[:6]}")


# --------------------------------------------------------------------------- raw protocol


def startup_packet(**params: str) -> bytes:
    body = struct.pack("!i", PROTOCOL_3)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


class Raw:
    """A bare socket speaking the PostgreSQL protocol, for what no driver would send."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def read_message(self) -> tuple[bytes, bytes]:
        while len(self.buf) < 5:
            self._fill()
        length = struct.unpack("!i", self.buf[1:5])[0]
        while len(self.buf) < 1 + length:
            self._fill()
        kind, body = self.buf[:1], self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return kind, body

    def read_to_eof(self, timeout: float) -> bytes:
        """Everything until the server closes; fails if it does not close within ``timeout``."""
        self.sock.settimeout(timeout)
        data, self.buf = self.buf, b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            except TimeoutError:
                raise AssertionError(
                    f"the server did not close the connection in {timeout}s"
                ) from None
            if not chunk:
                return data
            data += chunk

    def login(self, password: str) -> None:
        """Startup and SCRAM-SHA-256, up to the first ReadyForQuery."""
        self.send(startup_packet(user="postgres", database="postgres"))
        kind, body = self.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, (kind, body)  # SASL
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        kind, body = self.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11, (kind, body)
        server_first = body[4:].decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={attrs['r']}"
        auth = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.new(stored_key, auth, hashlib.sha256).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
        self.send(message(b"p", f"{final_bare},p={proof.decode()}".encode()))
        while True:
            kind, body = self.read_message()
            assert kind != b"E", error_fields(body)
            if kind == b"Z":
                return

    def close(self) -> None:
        self.sock.close()


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while len(data) >= 5:
        length = struct.unpack("!i", data[1:5])[0]
        out.append((data[:1], data[5 : 1 + length]))
        data = data[1 + length :]
    assert data == b"", f"trailing bytes that are not a message: {data[:50]!r}"
    return out


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1].decode()] = part[1:].decode("utf-8", "replace")
    return fields


def closed_with_error(data: bytes) -> dict[str, str]:
    """``data`` (all the server sent before closing) ends in a FATAL ErrorResponse: its fields."""
    msgs = split_messages(data)
    assert msgs, "the server closed the connection without an ErrorResponse"
    kind, body = msgs[-1]
    assert kind == b"E", f"the last message before the close is {kind!r}, not an ErrorResponse"
    fields = error_fields(body)
    assert fields["S"] == "FATAL", fields
    return fields


# --------------------------------------------------------------------------- the tests


@pytest.mark.timeout(120)
def test_a_10_mb_query_works(bridge: Bridge, intact: Intact) -> None:
    big = "x" * 10_000_000
    with psycopg.connect(bridge.dsn, autocommit=True) as conn:
        # a 10 MB literal in the SQL text (simple protocol: no parameters)
        row = conn.execute(f"SELECT length('{big}'), md5('{big}')".encode()).fetchone()
        assert row == (10_000_000, hashlib.md5(big.encode()).hexdigest())
        # and stored: 10 MB in, the same 10 MB out
        conn.execute("CREATE TABLE big_values (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO big_values VALUES (1, '{big}')".encode())
        assert conn.execute("SELECT v FROM big_values WHERE id = 1").fetchone() == (big,)

    async def as_parameter() -> int:
        aconn = await asyncpg.connect(bridge.asyncpg_dsn)
        try:
            return int(await aconn.fetchval("SELECT length($1::text)", big + "y"))
        finally:
            await aconn.close()

    assert asyncio.run(as_parameter()) == 10_000_001
    intact.check()


def test_garbage_instead_of_a_startup_packet(bridge: Bridge, intact: Intact) -> None:
    garbage = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS ClientHello
        b"\x00\x00\x00\x08\x00\x00\x00\x00",  # a packet of version 0.0
        b"\x00\x00\x00\x00",  # length 0
        b"\xde\xad\xbe\xef" * 64,
        struct.pack("!ii", 16, PROTOCOL_3) + b"user\0\xff\xfe\xfd",  # a value with no NUL
        startup_packet(user="postgres", database="postgres")[:-1] + b"x",  # no final NUL
    ]
    for data in garbage:
        raw = Raw(bridge.port)
        try:
            raw.send(data)
            t0 = time.monotonic()
            answer = raw.read_to_eof(10)
        finally:
            raw.close()
        # refused for what it is, not dropped later by the startup timeout
        assert time.monotonic() - t0 < STARTUP_TIMEOUT / 2, data[:20]
        closed_with_error(answer)
        for kind, _body in split_messages(answer):
            assert kind == b"E", f"{data[:20]!r} got {answer[:80]!r}"  # nothing but an error
    intact.check()


@pytest.mark.timeout(90)
def test_a_client_that_says_nothing_is_dropped_after_the_startup_timeout(
    bridge: Bridge, intact: Intact
) -> None:
    """Five kinds of silence, in parallel: nothing at all; half a length word; a startup packet
    one byte short; an SSLRequest (answered N) and then nothing; a startup packet and then no
    SASL response."""
    results: dict[str, tuple[float, bytes]] = {}
    t0 = time.monotonic()

    def silent(name: str, first: bytes, expect_first: bytes | None) -> None:
        raw = Raw(bridge.port, timeout=STARTUP_TIMEOUT + 30)
        try:
            if first:
                raw.send(first)
            if expect_first:
                assert raw.sock.recv(1) == expect_first
            data = raw.read_to_eof(STARTUP_TIMEOUT + 30)
            results[name] = (time.monotonic() - t0, data)
        finally:
            raw.close()

    kinds = {
        "nothing": (b"", None),
        "half a length": (b"\x00\x00", None),
        "a startup packet cut short": (
            struct.pack("!ii", 16, PROTOCOL_3) + b"user\0\xff\xfe",
            None,
        ),
        "SSLRequest, then nothing": (struct.pack("!ii", 8, SSL_REQUEST), b"N"),
        "startup, no password": (startup_packet(user="postgres", database="postgres"), None),
    }
    threads = [
        threading.Thread(target=silent, args=(name, *args), daemon=True)
        for name, args in kinds.items()
    ]
    for thread in threads:
        thread.start()
    # meanwhile the server serves everyone else
    while any(t.is_alive() for t in threads) and time.monotonic() - t0 < STARTUP_TIMEOUT + 35:
        with psycopg.connect(bridge.dsn, autocommit=True, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(0.5)
    for thread in threads:
        thread.join(1)
    assert set(results) == set(kinds), f"not all silent clients were dropped: {set(results)}"
    for name, (took, data) in results.items():
        assert took < STARTUP_TIMEOUT + 10, f"{name}: dropped only after {took:.1f}s"
        msgs = split_messages(data)
        if name == "startup, no password":
            assert msgs[0][0] == b"R"  # the AuthenticationSASL it never answered
        fields = closed_with_error(data)
        assert fields["C"] == "08P01", (name, fields)
        assert "startup" in fields["M"], (name, fields)
    intact.check()


@pytest.mark.timeout(120)
def test_200_connections_at_once(bridge: Bridge, intact: Intact) -> None:
    async def storm() -> tuple[list[asyncpg.Connection], list[BaseException]]:
        async def one() -> asyncpg.Connection:
            return await asyncpg.connect(bridge.asyncpg_dsn, timeout=60)

        results = await asyncio.gather(*(one() for _ in range(200)), return_exceptions=True)
        conns = [r for r in results if isinstance(r, asyncpg.Connection)]
        errors = [r for r in results if isinstance(r, BaseException)]
        return conns, errors

    async def run() -> tuple[int, list[BaseException], list[int]]:
        conns, errors = await storm()
        try:
            # every slot taken: the supervisor's health ping must see a live server, not restart it
            # (that would drop all of these connections)
            await asyncio.to_thread(ping, bridge.asyncpg_dsn, 5.0)
            answers = await asyncio.gather(
                *(c.fetchval("SELECT $1::int", i) for i, c in enumerate(conns))
            )
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        return len(conns), errors, answers

    ok, errors, answers = asyncio.run(run())
    assert ok + len(errors) == 200
    assert answers == list(range(ok))  # every admitted connection works
    # the ones over the limit get 53300, nothing else (no reset, no timeout, no garbage)
    unexpected = [e for e in errors if getattr(e, "sqlstate", None) != "53300"]
    assert unexpected == [], [repr(e) for e in unexpected[:5]]
    # (the supervisor's health check may hold a slot for a moment)
    assert MAX_CONNECTIONS - 3 <= ok <= MAX_CONNECTIONS, f"{ok} of 200 got in"
    # all closed: a new one gets in at once
    with psycopg.connect(bridge.dsn, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    intact.check()


@pytest.mark.parametrize("length", [0x7FFFFFFF, 0x80000000], ids=["2GiB-1", "2GiB"])
@pytest.mark.parametrize("phase", ["startup", "authentication", "query", "copy data"])
def test_a_2_gb_message_length_is_refused(
    bridge: Bridge, intact: Intact, phase: str, length: int
) -> None:
    raw = Raw(bridge.port)
    try:
        if phase == "startup":
            raw.send(struct.pack("!I", length) + struct.pack("!i", PROTOCOL_3) + b"user\0")
        elif phase == "authentication":
            raw.send(startup_packet(user="postgres", database="postgres"))
            assert raw.read_message()[0] == b"R"
            raw.send(b"p" + struct.pack("!I", length) + b"SCRAM-SHA-256\0")
        else:
            assert bridge.password is not None
            raw.login(bridge.password)
            kind = b"Q" if phase == "query" else b"d"
            raw.send(kind + struct.pack("!I", length) + b"SELECT 1\0")
        t0 = time.monotonic()
        data = raw.read_to_eof(10)
    finally:
        raw.close()
    assert time.monotonic() - t0 < 5  # refused from the header, not after waiting for 2 GB
    fields = closed_with_error(data)
    assert fields["C"] == "08P01", fields
    intact.check()


def test_the_data_survived_everything(bridge: Bridge, intact: Intact) -> None:
    """Last: the data dir reopens with every marker (a clean stop and start of the same server)."""
    intact.check()
    data_dir = bridge.data_dir
    assert data_dir is not None
    bridge.stop()
    with Bridge(data_dir) as again, psycopg.connect(again.dsn, autocommit=True) as conn:
        names = {n for (n,) in conn.execute("SELECT name FROM markers")}
    assert set(MARKERS) <= names
    bridge.start()  # for the module fixture's teardown
