"""Support code for the wire-protocol tests: the Node server handle, polling, raw protocol bytes.

Imported by ``conftest.py`` and the test modules of this directory (``import wire_support``); the
name is unique so it cannot clash with ``tests/helpers.py`` on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from helpers import wait_until  # one polling helper for the whole suite (tests/helpers.py)

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
SERVER_JS = REPO / "bridge-js" / "server.js"

#: log lines that always mean a bug in the server, whatever the test did
SERVER_BUG_MARKERS = ("internal error", "uncaught exception", "unhandled rejection")


# ---- waiting ---------------------------------------------------------------------------------------


async def async_wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """``wait_until`` for async tests; ``predicate`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (psycopg, a raw socket read) without blocking the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


# ---- the server ------------------------------------------------------------------------------------


class ServerStartError(RuntimeError):
    pass


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class WireServer:
    """One running ``node bridge-js/server.js``; see bridge-js/README.md for its contract."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    data_dir: Path
    flags: dict[str, Any]
    ready: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    died_on_its_own: bool = False
    _files: list[Any] = field(default_factory=list)

    # -- addresses --

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def admin_port(self) -> int:
        return int(self.ready["admin_port"])

    @property
    def log_path(self) -> Path:
        return self.workdir / "stderr.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    def dsn_for(
        self,
        user: str = "postgres",
        password: str | None = None,
        database: str = "postgres",
        **params: str,
    ) -> str:
        cred = user if password is None else f"{user}:{password}"
        query = {"sslmode": "disable", "gssencmode": "disable", **params}
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{database}?{qs}"

    @property
    def dsn(self) -> str:
        """libpq / psycopg DSN (no TLS, no GSS encryption)."""
        return self.dsn_for()

    @property
    def async_dsn(self) -> str:
        """asyncpg DSN: asyncpg does not know gssencmode; pass ``ssl=False`` with it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def sqlalchemy_url(self, driver: str) -> str:
        if driver == "asyncpg":
            return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable&gssencmode=disable"

    def libpq_env(self, **extra: str) -> dict[str, str]:
        """Environment for psql / pgbench pointing at this server, isolated from ~/.pgpass etc."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(self.port),
            PGUSER="postgres",
            PGDATABASE="postgres",
            PGSSLMODE="disable",
            PGGSSENCMODE="disable",
            PGPASSFILE=os.devnull,
            PGCONNECT_TIMEOUT="10",
        )
        env.update(extra)
        return env

    # -- clients --

    async def asyncpg(self, **kwargs: Any) -> Any:
        import asyncpg

        kwargs.setdefault("ssl", False)
        kwargs.setdefault("timeout", 10)
        dsn = kwargs.pop("dsn", self.async_dsn)
        return await asyncpg.connect(dsn, **kwargs)

    def psycopg(self, **kwargs: Any) -> Any:
        import psycopg

        kwargs.setdefault("connect_timeout", 10)
        dsn = kwargs.pop("dsn", self.dsn)
        return psycopg.connect(dsn, **kwargs)

    # -- admin endpoint --

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read()

    def stats(self) -> dict[str, Any]:
        status, _, body = self.http_get("/stats")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def settled_connections(self, timeout: float = 3.0) -> int:
        """The open connection count once earlier tests' closing connections are gone.

        Every test closes what it opens, but the server may see a close a moment after the client
        returned from it; a baseline taken during that moment would be off by one.
        """
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self.stats()["connections"] == 0, timeout=timeout)
        count: int = self.stats()["connections"]
        return count

    # -- lifetime --

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def stop(self, wait: float = 10.0) -> int:
        """SIGTERM, wait, then SIGKILL. Returns the exit code (negative: killed by a signal)."""
        if self.exit_code is not None:
            return self.exit_code
        if self.proc.poll() is not None:
            self.died_on_its_own = True
        else:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.exit_code = self.proc.returncode
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for f in self._files:
            f.close()
        self._files.clear()
        return self.exit_code

    def __repr__(self) -> str:
        return f"<WireServer pid={self.proc.pid} port={self.ready.get('port')} flags={self.flags}>"


def flag_args(flags: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in flags.items():
        name = "--" + key.replace("_", "-")
        if value is True:
            args.append(name)
        elif value is False or value is None:
            continue
        else:
            args += [name, str(value)]
    return args


def spawn_server(
    data_dir: Path, workdir: Path, flags: dict[str, Any], timeout: float = 60.0
) -> WireServer:
    """Start the Node server on ``data_dir`` and wait for its JSON ready line."""
    node = shutil.which("node")
    if node is None:
        raise ServerStartError("node is not on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    all_flags: dict[str, Any] = {"no_lock": True, "port": 0, "log_level": "debug", **flags}
    args = [node, str(SERVER_JS), "--data-dir", str(data_dir), *flag_args(all_flags)]
    out = open(workdir / "stdout.log", "wb")  # noqa: SIM115 - closed by WireServer.stop
    err = open(workdir / "stderr.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir)
    server = WireServer(
        proc=proc, workdir=workdir, data_dir=data_dir, flags=flags, _files=[out, err]
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            text = server.stdout_path.read_text(errors="replace")
            if "\n" in text:
                line = text.split("\n", 1)[0]
                try:
                    msg = json.loads(line)
                except ValueError as exc:
                    raise ServerStartError(
                        f"server printed a non-JSON first line: {line!r}"
                    ) from exc
                if msg.get("event") != "ready":
                    raise ServerStartError(
                        f"server failed to start: {line}\nstderr:\n{tail(server.log_path)}"
                    )
                server.ready = msg
                return server
            if proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with {proc.returncode} before it was ready; stdout: {text!r}\n"
                    f"stderr:\n{tail(server.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"server not ready after {timeout} s\nstderr:\n{tail(server.log_path)}"
                )
            time.sleep(0.02)
    except BaseException:
        server.stop()
        raise


# ---- raw protocol ------------------------------------------------------------------------------------

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
PROTOCOL_3_0 = 196608


def startup_packet(**params: str) -> bytes:
    body = struct.pack("!i", PROTOCOL_3_0)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


class RawConn:
    """A bare TCP connection speaking just enough of the protocol to send malformed input."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed with {len(self.buf)} of {n} bytes read")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_message(self) -> tuple[bytes, bytes]:
        head = self.recv_exact(5)
        (length,) = struct.unpack("!i", head[1:])
        return head[:1], self.recv_exact(length - 4)

    def read_until_ready(self) -> list[tuple[bytes, bytes]]:
        msgs = []
        while True:
            kind, body = self.read_message()
            msgs.append((kind, body))
            if kind == b"Z":
                return msgs

    def start(self, **params: str) -> list[tuple[bytes, bytes]]:
        params.setdefault("user", "postgres")
        params.setdefault("database", "postgres")
        self.send(startup_packet(**params))
        return self.read_until_ready()

    def read_to_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the server closes the connection (fails if it does not within timeout)."""
        self.sock.settimeout(timeout)
        data, self.buf = self.buf, b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    msgs = []
    pos = 0
    while pos + 5 <= len(data):
        (length,) = struct.unpack("!i", data[pos + 1 : pos + 5])
        msgs.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    assert pos == len(data), f"trailing bytes that are not a whole message: {data[pos:]!r}"
    return msgs


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


async def timed(aw: Awaitable[T]) -> tuple[T, float]:
    t0 = time.monotonic()
    result = await aw
    return result, time.monotonic() - t0
