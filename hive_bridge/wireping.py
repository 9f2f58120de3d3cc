"""``SELECT 1`` over the PostgreSQL wire protocol, with nothing but the standard library.

The supervisor asks "does the server really answer SQL?" before it calls a start done and then every
few seconds as its health check. A driver (asyncpg pulled in asyncio and ~0.1 s of imports plus
~10 MB into every supervisor) is more than that question needs: a startup message, SCRAM-SHA-256
(RFC 5802/7677) or a cleartext password, one simple query, Terminate. Blocking, one deadline for the
whole exchange, so it can never hang longer than its timeout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import socket
import struct
import time
from urllib.parse import unquote, urlsplit

__all__ = ["PingError", "TooManyClients", "ping_select1"]

_PROTOCOL_3_0 = 196608


class PingError(Exception):
    """The server answered, but not with what a healthy server answers (or broke the protocol)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class TooManyClients(PingError):
    """53300: every connection slot is taken. The server answered, so it is alive and busy."""


class _Conn:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""

    def send(self, data: bytes) -> None:
        self._arm()
        self.sock.sendall(data)

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("ping timed out")
        self.sock.settimeout(left)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self._arm()
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PingError("the server closed the connection")
            self.buf += chunk

    def read(self) -> tuple[bytes, bytes]:
        """One backend message: (type, body)."""
        self._need(5)
        kind = self.buf[:1]
        (length,) = struct.unpack("!I", self.buf[1:5])
        self._need(1 + length)
        body = self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return kind, body


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _error(body: bytes) -> PingError:
    fields = {f[:1]: f[1:].decode("utf-8", "replace") for f in body.split(b"\0") if f}
    code = fields.get(b"C")
    text = f"{fields.get(b'S', 'ERROR')} {code}: {fields.get(b'M', '')}"
    return (TooManyClients if code == "53300" else PingError)(text, code)


def _scram(conn: _Conn, password: str, mechanisms: bytes) -> None:
    if b"SCRAM-SHA-256\0" not in mechanisms:
        raise PingError(f"the server offers no SCRAM-SHA-256 ({mechanisms!r})")
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    conn.send(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
    kind, body = conn.read()
    if kind == b"E":
        raise _error(body)
    if kind != b"R" or struct.unpack("!i", body[:4])[0] != 11:
        raise PingError(f"unexpected SASL message {kind!r}")
    server_first = body[4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise PingError("the server's SCRAM nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    final_bare = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{final_bare},p={base64.b64encode(proof).decode()}".encode()
    conn.send(_msg(b"p", final))
    kind, body = conn.read()
    if kind == b"E":
        raise _error(body)
    if kind != b"R" or struct.unpack("!i", body[:4])[0] != 12:
        raise PingError(f"unexpected SASL final message {kind!r}")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
    if body[4:].decode().split("v=", 1)[-1] != expected:
        raise PingError("the server's SCRAM signature does not match: not the server we started")


def ping_select1(dsn: str, timeout: float) -> tuple[float, float]:
    """Connect to ``dsn`` (postgresql://user:pw@host:port/db), authenticate, run ``SELECT 1``.

    Returns (seconds to connect and authenticate, seconds for SELECT 1). Raises ``OSError`` or
    ``TimeoutError`` when nobody answers in time, :class:`TooManyClients` on 53300 and
    :class:`PingError` on any other answer than a healthy one.
    """
    parts = urlsplit(dsn)
    user = unquote(parts.username or "postgres")
    password = unquote(parts.password) if parts.password else ""
    database = unquote(parts.path.lstrip("/")) or "postgres"
    start = time.monotonic()
    deadline = start + timeout
    with socket.create_connection(
        (parts.hostname or "127.0.0.1", parts.port or 5432), timeout=timeout
    ) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, deadline)
        params = f"user\0{user}\0database\0{database}\0application_name\0hive-bridge-ping\0\0"
        conn.send(_msg(b"", struct.pack("!i", _PROTOCOL_3_0) + params.encode()))
        while True:
            kind, body = conn.read()
            if kind == b"E":
                raise _error(body)
            if kind == b"R":
                code = struct.unpack("!i", body[:4])[0]
                if code == 3:
                    conn.send(_msg(b"p", password.encode() + b"\0"))
                elif code == 10:
                    _scram(conn, password, body[4:])
                elif code != 0:
                    raise PingError(f"unsupported authentication request {code}")
            elif kind == b"Z":
                break
        connected = time.monotonic()
        conn.send(_msg(b"Q", b"SELECT 1\0"))
        rows = 0
        while True:
            kind, body = conn.read()
            if kind == b"E":
                raise _error(body)
            if kind == b"D":
                rows += 1
            if kind == b"Z":
                break
        if rows != 1:
            raise PingError(f"SELECT 1 returned {rows} rows")
        done = time.monotonic()
        with contextlib.suppress(OSError):
            sock.sendall(_msg(b"X", b""))
    return connected - start, done - connected
