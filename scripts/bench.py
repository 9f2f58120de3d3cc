#!/usr/bin/env python3
"""Benchmark hive-bridge against the stock pglite-server, py-pglite, a local PostgreSQL 15 and the
in-process PGlite floor, side by side in one run.

    python scripts/bench.py            # full run, 4-5 minutes on 2 cores
    python scripts/bench.py --quick    # smoke run, about 1.5 minutes
    make bench

Measured for each server where it applies: cold start (empty data dir -> first SELECT 1), warm start
(existing data dir -> first SELECT 1), restart after kill -9 (until the same DSN answers again),
SELECT 1 latency p50/p99 (asyncpg, psycopg), inserts (autocommit, one transaction, executemany),
COPY FROM STDIN, pgbench (tpcb-like and select-only, 1 and 8 clients, simple and prepared) and the
server's RSS. Writes bench/results.json, bench/results.md and bench/results.png.

Every client call runs in a worker process the main process can kill, and every subprocess has a
deadline, so a server that hangs (the stock server does, on COPY) becomes a result, not a stuck run.
Everything started here is stopped and every temp dir removed, also on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "bridge-js"
NODE_MODULES = JS_DIR / "node_modules"
STOCK_SERVER = NODE_MODULES / "@electric-sql/pglite-socket/dist/scripts/server.js"
FLOOR_JS = JS_DIR / "bench" / "floor.js"
PG_BIN_DIRS = ["/usr/lib/postgresql/15/bin"]

HB, STOCK, PYP, PG = "hive-bridge", "stock", "py-pglite", "postgres"
LABELS = {
    HB: "hive-bridge",
    STOCK: "stock pglite-server",
    PYP: "py-pglite",
    PG: "PostgreSQL 15",
}
ALL_TARGETS = [HB, STOCK, PYP, PG]

# pgbench client counts, side by side for every server (issue: 1, 4 and 8; the target compares 8 to 1)
PGBENCH_CLIENTS = (1, 4, 8)


# ================================================================================ small helpers


def log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", flush=True)


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_error(exc: BaseException | str, limit: int = 200) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run in its own session, killed as a group at the deadline."""
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    ) as p:
        REG.procs.append(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            out, err = p.communicate()
            raise TimeoutError(
                f"{Path(argv[0]).name} did not finish within {timeout:.0f} s"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                REG.procs.remove(p)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)


def kill_group(p: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a child started with start_new_session=True (pgid == its pid)."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)


def stop_proc(p: subprocess.Popen[Any], wait: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL; always reaps."""
    if p.poll() is None:
        kill_group(p, signal.SIGTERM)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            kill_group(p, signal.SIGKILL)
            p.wait(5)
    if p.stdin:
        with contextlib.suppress(OSError):
            p.stdin.close()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


# ================================================================================ cleanup registry


class Registry:
    """Everything this run started or created, undone in reverse on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.pids: list[int] = []  # processes started indirectly (pg_ctl, py-pglite's node)
        self.dirs: list[Path] = []
        self.callbacks: list[Callable[[], None]] = []

    def cleanup(self) -> None:
        for cb in reversed(self.callbacks):
            with contextlib.suppress(Exception):
                cb()
        self.callbacks.clear()
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                stop_proc(p, wait=3)
        self.procs.clear()
        for pid in self.pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        for d in reversed(self.dirs):
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


REG = Registry()


# ================================================================================ connection params


@dataclass
class Conn:
    host: str
    port: int
    user: str = "postgres"
    password: str | None = None
    dbname: str = "postgres"

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
        }

    def pg_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGDATABASE=self.dbname,
            PGSSLMODE="disable",
            PGGSSENCMODE="disable",
            PGCONNECT_TIMEOUT="5",
        )
        if self.password:
            env["PGPASSWORD"] = self.password
        else:
            env.pop("PGPASSWORD", None)
        return env


def psycopg_conninfo(p: dict[str, Any]) -> str:
    from psycopg.conninfo import make_conninfo

    kw = {k: v for k, v in p.items() if v is not None}
    return make_conninfo(**kw, sslmode="disable", gssencmode="disable", connect_timeout=10)


async def asyncpg_connect(p: dict[str, Any], timeout: float = 10.0) -> Any:
    import asyncpg

    return await asyncpg.connect(
        host=p["host"],
        port=p["port"],
        user=p["user"],
        password=p["password"],
        database=p["dbname"],
        ssl=False,
        timeout=timeout,
    )


# ================================================================================ readiness (main)


class PingError(Exception):
    pass


def _scram_client(password: str) -> tuple[bytes, Callable[[bytes], bytes], Callable[[bytes], None]]:
    """SCRAM-SHA-256 (RFC 7677) client side, without channel binding."""
    import base64
    import hashlib
    import hmac
    import secrets

    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    state: dict[str, bytes] = {}

    def final(server_first: bytes) -> bytes:
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        if not attrs["r"].startswith(nonce):
            raise PingError("SCRAM: server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        state["server_signature"] = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(server_final: bytes) -> None:
        attrs = dict(kv.split("=", 1) for kv in server_final.decode().split(","))
        if base64.b64decode(attrs.get("v", "")) != state.get("server_signature"):
            raise PingError("SCRAM: bad server signature")

    return f"n,,{first_bare}".encode(), final, verify


def raw_ping(conn: Conn, timeout: float = 3.0) -> None:
    """Connect, authenticate (trust, cleartext, md5 or SCRAM-SHA-256), run `SELECT 1` with the simple
    protocol, send Terminate and close. Raw sockets with a deadline: it cannot hang, it leaves no
    state in a shared-session server, and it costs the same for every server under test."""
    import hashlib
    import struct

    deadline = time.monotonic() + timeout
    sock = socket.create_connection((conn.host, conn.port), timeout=timeout)
    buf = b""

    def send(kind: bytes, body: bytes) -> None:
        sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)

    def recv() -> tuple[bytes, bytes]:
        nonlocal buf
        while True:
            if len(buf) >= 5:
                (n,) = struct.unpack("!i", buf[1:5])
                if len(buf) >= n + 1:
                    kind, body, buf = buf[:1], buf[5 : n + 1], buf[n + 1 :]
                    return kind, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise PingError("timed out")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise PingError("server closed the connection")
            buf += chunk

    def error_text(body: bytes) -> str:
        fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
        return f"{fields.get(b'C', '?')} {fields.get(b'M', '')}"

    try:
        params = f"user\0{conn.user}\0database\0{conn.dbname}\0\0".encode()
        body = struct.pack("!i", 196608) + params
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        scram = None
        password = conn.password or ""
        while True:
            kind, body = recv()
            if kind == b"E":
                raise PingError(error_text(body))
            if kind == b"R":
                (code,) = struct.unpack("!i", body[:4])
                if code == 0:
                    continue
                if code == 3:
                    send(b"p", password.encode() + b"\0")
                elif code == 5:
                    inner = hashlib.md5((password + conn.user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    send(b"p", f"md5{outer}".encode() + b"\0")
                elif code == 10:
                    if b"SCRAM-SHA-256" not in body[4:].split(b"\0"):
                        raise PingError("server offers no SCRAM-SHA-256")
                    first, final, verify = _scram_client(password)
                    scram = (final, verify)
                    send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
                elif code == 11 and scram:
                    send(b"p", scram[0](body[4:]))
                elif code == 12 and scram:
                    scram[1](body[4:])
                else:
                    raise PingError(f"unsupported authentication request {code}")
            elif kind == b"Z":
                break
        send(b"Q", b"SELECT 1\0")
        got_row = False
        while True:
            kind, body = recv()
            if kind == b"E":
                raise PingError(error_text(body))
            if kind == b"D":
                got_row = True
            if kind == b"Z":
                break
        if not got_row:
            raise PingError("SELECT 1 returned no row")
        with contextlib.suppress(OSError):
            send(b"X", b"")
    finally:
        sock.close()


def ping(conn: Conn, timeout: float = 3.0) -> None:
    raw_ping(conn, timeout)


def wait_sql(conn: Conn, deadline: float, alive: Callable[[], bool] | None = None) -> float:
    """Poll SELECT 1 until it answers; returns time.monotonic() of the answer."""
    last: BaseException | None = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(
                f"SELECT 1 did not answer in time (last error: {short_error(last or 'none')})"
            )
        if alive is not None and not alive():
            raise RuntimeError("the server process exited")
        try:
            ping(conn, timeout=min(10.0, max(0.2, deadline - now)))
            return time.monotonic()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # connection refused while it starts: retry
            last = exc
            time.sleep(0.005)


def is_healthy(conn: Conn, timeout: float = 3.0) -> bool:
    try:
        ping(conn, timeout)
        return True
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        return False


def wait_for_line(
    path: Path,
    pattern: re.Pattern[str],
    proc: subprocess.Popen[Any],
    deadline: float,
    offset: int = 0,
) -> re.Match[str]:
    """Tail a log file from `offset` until a line matches; the server's stdout goes to a file, never
    a pipe that could fill up and block it."""
    buf = b""
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            buf += chunk
            lines = buf.split(b"\n")
            buf = lines.pop()
            for line in lines:
                m = pattern.search(line.decode("utf-8", errors="replace"))
                if m:
                    return m
        if proc.poll() is not None:
            tail = path.read_text(errors="replace")[-600:] if path.exists() else ""
            raise RuntimeError(
                f"exited with status {proc.returncode} before it was ready: {short_error(tail, 400)}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError("no ready line in time")
        time.sleep(0.003)


# ================================================================================ memory


def rss_of(pids: list[int]) -> dict[str, Any] | None:
    """RSS (and PSS) of the server: the listed processes (threads included) plus their children."""
    import psutil

    procs: dict[int, Any] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
        except psutil.Error:
            continue
        procs[p.pid] = p
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                procs[c.pid] = c
    if not procs:
        return None
    rss = pss = 0
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            full = p.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "processes": len(procs)}


# ================================================================================ servers


class ServerHandle:
    """A running server: how to reach it, its pids, how to stop or crash it."""

    target: str
    conn: Conn

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill9(self) -> None:
        """SIGKILL the server."""
        raise NotImplementedError

    def after_kill_restart(self, deadline: float) -> None:
        """What a supervisor would do after the kill (nothing for hive-bridge: its own does it)."""

    def alive(self) -> bool:
        """False once the server is known to have died (ends a wait for SELECT 1 early)."""
        return True


class Target:
    name: str
    available: bool = True
    unavailable_reason: str | None = None
    persistent = True  # has a data dir (warm start, restart after kill make sense)
    copy_ok = True
    pgbench_init_steps: str | None = None  # None = pgbench's default (client-side COPY)
    notes: list[str]

    def __init__(self) -> None:
        self.notes = []

    def setup(self, work: Path, quick: bool) -> None:
        pass

    def data_root(self, tmp: Path) -> Path:
        """Where this target's data dirs go."""
        return tmp / self.name

    def start(self, data_dir: Path, deadline: float) -> ServerHandle:
        raise NotImplementedError

    def versions(self) -> dict[str, Any]:
        return {}


def _json_version(pkg_json: Path) -> str | None:
    try:
        return str(json.loads(pkg_json.read_text())["version"])
    except Exception:
        return None


# ------------------------------------------------------------------------------ hive-bridge


class HBSupervised(ServerHandle):
    def __init__(self, bridge: Any) -> None:
        self.target = HB
        self.bridge = bridge
        self.conn = Conn(bridge.connect_host, bridge.port, password=bridge.password)
        self._last_pid = bridge.node_pid
        REG.callbacks.append(self._cleanup)

    def pids(self) -> list[int]:
        pid = self.bridge.node_pid
        if pid:
            self._last_pid = pid
        return [pid] if pid else []

    def stop(self) -> None:
        self.bridge.stop()
        with contextlib.suppress(ValueError):
            REG.callbacks.remove(self._cleanup)

    def _cleanup(self) -> None:
        self.bridge.request_stop(force=True)
        self.bridge.stop()
        if pid_alive(self._last_pid):
            os.kill(self._last_pid, signal.SIGKILL)

    def kill9(self) -> None:
        pid = self.bridge.node_pid
        if not pid:
            raise RuntimeError("no node pid")
        self._last_pid = pid
        os.kill(pid, signal.SIGKILL)


class NodeServer(ServerHandle):
    """A node server we spawned ourselves (hive-bridge without the supervisor, or the stock one)."""

    def __init__(
        self,
        target: str,
        argv: list[str],
        log_path: Path,
        ready: re.Pattern[str],
        port_from: Callable[[re.Match[str]], int],
        deadline: float,
        keep_stdin: bool,
        cwd: Path = JS_DIR,
    ) -> None:
        self.target = target
        self.cwd = cwd
        self.argv = argv
        self.log_path = log_path
        self.ready = ready
        self.port_from = port_from
        self.keep_stdin = keep_stdin
        self.proc = self._spawn(argv)
        self.ready_match = wait_for_line(log_path, ready, self.proc, deadline, self.log_offset)
        self.conn = Conn("127.0.0.1", port_from(self.ready_match))

    def _spawn(self, argv: list[str]) -> subprocess.Popen[Any]:
        with open(self.log_path, "ab") as out:
            self.log_offset = out.tell()  # the same dir's log is appended to by each start
            p = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if self.keep_stdin else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
            )
        REG.procs.append(p)
        return p

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc.poll() is None else []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_proc(self.proc)
        with contextlib.suppress(ValueError):
            REG.procs.remove(self.proc)

    def kill9(self) -> None:
        kill_group(self.proc, signal.SIGKILL)
        self.proc.wait(5)
        with contextlib.suppress(ValueError):
            REG.procs.remove(self.proc)

    def after_kill_restart(self, deadline: float) -> None:
        # an instant supervisor: the same command again, on the same port
        argv = _with_port(self.argv, self.conn.port)
        self.argv = argv
        self.proc = self._spawn(argv)
        wait_for_line(self.log_path, self.ready, self.proc, deadline, self.log_offset)


def _with_port(argv: list[str], port: int) -> list[str]:
    out = list(argv)
    i = out.index("--port")
    out[i + 1] = str(port)
    return out


class HiveBridgeTarget(Target):
    name = HB

    def __init__(self, js_dir: Path) -> None:
        super().__init__()
        self.js_dir = js_dir
        self.mode = "supervisor"
        self.ready_info: dict[str, Any] = {}
        self.cache_dir: Path | None = None
        self.template_build_s: float | None = None
        self.has_template = False
        try:
            if str(REPO) not in sys.path:
                sys.path.insert(0, str(REPO))
            from hive_bridge import Bridge  # noqa: F401
        except Exception as exc:
            self.mode = "node"
            self.notes.append(
                f"hive_bridge.Bridge not importable ({short_error(exc, 120)}): started node "
                "directly, restart after kill -9 done by this script"
            )
        server = js_dir / "server.js"
        if not server.exists() or not (js_dir / "node_modules").exists():
            self.available = False
            self.unavailable_reason = f"{server} or its node_modules missing (run npm ci)"
        else:
            self.has_template = "prepare-template" in server.read_text()

    def setup(self, work: Path, quick: bool) -> None:
        """Newer servers copy new data dirs from a cached template: keep that cache in our temp dir
        (not ~/.cache), build it once here (timed: the one-off cost on a new machine)."""
        if not self.has_template:
            return
        self.cache_dir = work / "hb-template-cache"
        old = os.environ.get("HIVE_BRIDGE_CACHE_DIR")

        def restore() -> None:
            if old is None:
                os.environ.pop("HIVE_BRIDGE_CACHE_DIR", None)
            else:
                os.environ["HIVE_BRIDGE_CACHE_DIR"] = old

        REG.callbacks.append(restore)
        os.environ["HIVE_BRIDGE_CACHE_DIR"] = str(self.cache_dir)
        t0 = time.monotonic()
        try:
            r = run(
                ["node", str(self.js_dir / "server.js"), "--prepare-template"],
                timeout=180,
                cwd=str(self.js_dir),
            )
            if r.returncode != 0:
                raise RuntimeError(short_error(r.stdout + r.stderr, 300))
            self.template_build_s = time.monotonic() - t0
            log(HB, f"data-dir template built in {self.template_build_s:.2f} s (once per machine)")
        except Exception as exc:
            self.notes.append(f"could not build the data-dir template: {short_error(exc, 200)}")
        self.notes.append(
            "a new data dir is a copy of a cached template (built once per PGlite version, here "
            "into the benchmark's temp dir); 'first start ever' is an empty data dir with an empty "
            "template cache"
        )

    @contextlib.contextmanager
    def no_template_cache(self, empty: Path) -> Any:
        """Within: starts see an empty template cache (the first start on a new machine)."""
        old = os.environ.get("HIVE_BRIDGE_CACHE_DIR")
        os.environ["HIVE_BRIDGE_CACHE_DIR"] = str(empty)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("HIVE_BRIDGE_CACHE_DIR", None)
            else:
                os.environ["HIVE_BRIDGE_CACHE_DIR"] = old

    def start(self, data_dir: Path, deadline: float) -> ServerHandle:
        if self.mode == "supervisor":
            from hive_bridge import Bridge

            b = Bridge(data_dir, log_level="ERROR", js_dir=self.js_dir)
            try:
                b.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    b.stop()
                raise
            h = HBSupervised(b)
            sup = b.supervisor
            if sup is not None and sup.ready_info is not None:
                ri = sup.ready_info
                self.ready_info = {
                    "pglite_version": ri.pglite_version,
                    "postgres_version": ri.postgres_version,
                    "extensions": list(ri.extensions),
                    "startup_ms": ri.startup_ms,
                }
            return h
        log_path = data_dir.parent / f"{data_dir.name}.node.log"
        argv = ["node", str(self.js_dir / "server.js"), "--data-dir", str(data_dir), "--no-lock"]
        argv += ["--port", "0", "--admin-port=-1", "--log-level", "warn"]
        h = NodeServer(
            HB,
            argv,
            log_path,
            re.compile(r'^\{.*"event":"ready".*\}$'),
            lambda m: int(json.loads(m.group(0))["port"]),
            deadline,
            keep_stdin=True,
            cwd=self.js_dir,
        )
        with contextlib.suppress(Exception):
            ready = json.loads(h.ready_match.group(0))
            self.ready_info = {
                k: ready.get(k)
                for k in ("pglite_version", "postgres_version", "extensions", "startup_ms")
            }
        return h

    def versions(self) -> dict[str, Any]:
        nm = self.js_dir / "node_modules"
        v = {
            "pglite": _json_version(nm / "@electric-sql/pglite/package.json"),
            "pglite_pgvector": _json_version(nm / "@electric-sql/pglite-pgvector/package.json"),
            "mode": self.mode,
            "js_dir": str(self.js_dir),
            "template_build_s": self.template_build_s,
        }
        v.update({k: v2 for k, v2 in self.ready_info.items() if v2 and k != "startup_ms"})
        return v


# ------------------------------------------------------------------------------ stock pglite-server

STOCK_READY = re.compile(r"PGLiteSocketServer listening on (\{.*\})")


class StockTarget(Target):
    name = STOCK
    copy_ok = False
    pgbench_init_steps = "dtGvp"

    def __init__(self) -> None:
        super().__init__()
        if not STOCK_SERVER.exists():
            self.available = False
            self.unavailable_reason = f"{STOCK_SERVER.relative_to(REPO)} missing"
        self.notes.append(
            "`--max-connections 8`, no extensions; COPY FROM STDIN skipped (it hangs the server), "
            "`pgbench -i -I dtGvp` (server-side generation); clients closed with terminate()"
        )

    def start(self, data_dir: Path, deadline: float) -> ServerHandle:
        log_path = data_dir.parent / f"{data_dir.name}.stock.log"
        argv = [
            "node",
            str(STOCK_SERVER),
            "--db",
            str(data_dir),
            "--port",
            "0",
            "--max-connections",
            "8",
        ]
        return NodeServer(
            STOCK,
            argv,
            log_path,
            STOCK_READY,
            lambda m: int(json.loads(m.group(1))["port"]),
            deadline,
            keep_stdin=False,
        )

    def versions(self) -> dict[str, Any]:
        return {
            "pglite_socket": _json_version(
                NODE_MODULES / "@electric-sql/pglite-socket/package.json"
            ),
            "pglite": _json_version(NODE_MODULES / "@electric-sql/pglite/package.json"),
        }


# ------------------------------------------------------------------------------ py-pglite

PYP_HELPER = r"""
import json, os, sys, time
from pathlib import Path
from py_pglite import PGliteManager, PGliteConfig
mode, work, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
# its generated pglite_manager.js hard-codes the port: regenerate it for every start
with_js = work / "pglite_manager.js"
if with_js.exists():
    with_js.unlink()
cfg = PGliteConfig(use_tcp=True, tcp_port=port, work_dir=work, timeout=90, log_level="ERROR")
m = PGliteManager(cfg)
m._kill_all_pglite_processes = lambda: None  # never touch processes this run did not start
t0 = time.time()
m.start()
t1 = time.time()
print(json.dumps({"event": "ready", "t0": t0, "t1": t1, "node_pid": m.process.pid, "port": port}), flush=True)
if mode == "setup":
    m.stop()
    sys.exit(0)
try:
    sys.stdin.read()  # until the bench closes our stdin
finally:
    m.stop()
"""


class PyPgliteHandle(ServerHandle):
    def __init__(self, target: PyPgliteTarget, deadline: float) -> None:
        self.target = PYP
        port = free_port()
        log_path = target.tmp / f"helper-{port}.log"
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(target.python), str(target.helper), "serve", str(target.npm_dir), str(port)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=target.env(),
            )
        REG.procs.append(self.proc)
        m = wait_for_line(log_path, re.compile(r'^\{"event": "ready".*\}$'), self.proc, deadline)
        info = json.loads(m.group(0))
        self.t0_wall = float(info["t0"])
        self.node_pid = int(info["node_pid"])
        REG.pids.append(self.node_pid)
        self.conn = Conn("127.0.0.1", port, password="postgres")

    def pids(self) -> list[int]:
        return [self.node_pid] if pid_alive(self.node_pid) else []

    def alive(self) -> bool:
        return self.proc.poll() is None and pid_alive(self.node_pid)

    def stop(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop_proc(self.proc)
        with contextlib.suppress(ValueError):
            REG.procs.remove(self.proc)
        if pid_alive(self.node_pid):
            os.kill(self.node_pid, signal.SIGKILL)

    def kill9(self) -> None:
        os.kill(self.node_pid, signal.SIGKILL)


class PyPgliteTarget(Target):
    name = PYP
    persistent = False
    pgbench_init_steps = "dtGvp"

    def __init__(self, out_dir: Path) -> None:
        super().__init__()
        self.work = out_dir / ".py-pglite"
        self.venv = self.work / "venv"
        self.python = self.venv / "bin" / "python"
        self.npm_dir = self.work / "npm"
        self.helper = self.work / "helper.py"
        self._versions: dict[str, Any] = {}
        self.setup_s: float | None = None
        self.tmp = out_dir
        self.notes.append(
            "in-memory only (PGliteManager has no data dir option): every start is a cold start, no warm "
            "start, no restart; one connection (pglite-socket 0.0.x); its venv and npm packages are "
            "installed once under bench/.py-pglite and reused (setup time not counted); asyncpg gets "
            "`server_version` only on the first connection after a start (the readiness probe), so its "
            "asyncpg steps fail"
        )

    def env(self) -> dict[str, str]:
        # PGliteConfig makes a socket dir in the temp dir even in TCP mode: keep it inside ours
        return {**os.environ, "TMPDIR": str(self.tmp)}

    def setup(self, work: Path, quick: bool) -> None:
        t0 = time.monotonic()
        self.tmp = work / "py-pglite-tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            if not self.python.exists():
                log(PYP, "creating a throwaway venv and installing py-pglite from PyPI ...")
                run([sys.executable, "-m", "venv", str(self.venv)], timeout=120)
            probe = run(
                [str(self.python), "-c", "import py_pglite, sys; print(py_pglite.__version__)"],
                timeout=60,
            )
            if probe.returncode != 0:
                r = run(
                    [
                        str(self.python),
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--disable-pip-version-check",
                        "py-pglite",
                    ],
                    timeout=240,
                )
                if r.returncode != 0:
                    raise RuntimeError(
                        f"pip install py-pglite failed: {short_error(r.stderr or r.stdout, 300)}"
                    )
                probe = run(
                    [str(self.python), "-c", "import py_pglite; print(py_pglite.__version__)"],
                    timeout=60,
                )
                if probe.returncode != 0:
                    raise RuntimeError(
                        f"py_pglite does not import: {short_error(probe.stderr, 300)}"
                    )
            self._versions["py_pglite"] = probe.stdout.strip()
            self.helper.write_text(PYP_HELPER)
            self.npm_dir.mkdir(exist_ok=True)
            if not (self.npm_dir / "node_modules" / "@electric-sql" / "pglite").exists():
                log(PYP, "first start: py-pglite runs npm install for its own PGlite ...")
                r = run(
                    [
                        str(self.python),
                        str(self.helper),
                        "setup",
                        str(self.npm_dir),
                        str(free_port()),
                    ],
                    timeout=240,
                    env=self.env(),
                )
                if r.returncode != 0:
                    raise RuntimeError(
                        f"py-pglite could not start: {short_error(r.stdout + r.stderr, 300)}"
                    )
            self._versions["pglite"] = _json_version(
                self.npm_dir / "node_modules/@electric-sql/pglite/package.json"
            )
            self._versions["pglite_socket"] = _json_version(
                self.npm_dir / "node_modules/@electric-sql/pglite-socket/package.json"
            )
        except Exception as exc:
            self.available = False
            self.unavailable_reason = short_error(exc, 300)
        self.setup_s = time.monotonic() - t0

    def start(self, data_dir: Path, deadline: float) -> ServerHandle:
        return PyPgliteHandle(self, deadline)

    def versions(self) -> dict[str, Any]:
        return dict(self._versions)


# ------------------------------------------------------------------------------ PostgreSQL 15


def find_pg_bin() -> Path | None:
    for d in PG_BIN_DIRS:
        if (Path(d) / "pg_ctl").exists() and (Path(d) / "initdb").exists():
            return Path(d)
    exe = shutil.which("pg_ctl")
    if exe and shutil.which("initdb"):
        return Path(exe).resolve().parent
    return None


class PGHandle(ServerHandle):
    def __init__(self, target: PGTarget, data_dir: Path, deadline: float) -> None:
        self.target = PG
        self.t = target
        self.data_dir = data_dir
        self.port = free_port()
        self.conn = Conn("127.0.0.1", self.port)
        self.postmaster: int | None = None
        REG.callbacks.append(self._cleanup)
        self._start()

    def _start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.t.sock_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c logging_collector=off"
        )
        r = run(
            self.t.cmd(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.data_dir / "server.log"),
                "-W",
                "-o",
                opts,
                "start",
            ),
            timeout=30,
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {short_error(r.stderr or r.stdout)}")

    def _read_pid(self) -> int | None:
        with contextlib.suppress(Exception):
            return int((self.data_dir / "postmaster.pid").read_text().split("\n")[0])
        return None

    def pids(self) -> list[int]:
        pid = self._read_pid()
        if pid:
            self.postmaster = pid
            if pid not in REG.pids:
                REG.pids.append(pid)
        return [pid] if pid and pid_alive(pid) else []

    def stop(self) -> None:
        self.pids()
        run(
            self.t.cmd("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "20", "stop"),
            timeout=30,
        )
        with contextlib.suppress(ValueError):
            REG.callbacks.remove(self._cleanup)

    def _cleanup(self) -> None:
        self.pids()
        with contextlib.suppress(Exception):
            run(
                self.t.cmd(
                    "pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "10", "stop"
                ),
                timeout=15,
            )
        if self.postmaster and pid_alive(self.postmaster):
            os.kill(self.postmaster, signal.SIGKILL)

    def kill9(self) -> None:
        import psutil

        pids = self.pids()
        if not pids:
            raise RuntimeError("postmaster not running")
        procs = [psutil.Process(pids[0])]
        with contextlib.suppress(psutil.Error):
            procs += procs[0].children(recursive=True)
        for p in procs:  # the postmaster and every backend/auxiliary process: a whole-server crash
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=5)

    def after_kill_restart(self, deadline: float) -> None:
        self._start()  # crash recovery happens inside


class PGTarget(Target):
    name = PG
    persistent = True

    def __init__(self) -> None:
        super().__init__()
        self.bin = find_pg_bin()
        self.sock_dir: Path | None = None
        self.root: Path | None = None
        self._version: str | None = None
        self.as_user: str | None = None
        if self.bin is None:
            self.available = False
            self.unavailable_reason = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        elif os.geteuid() == 0:
            # initdb and postgres refuse to run as root: run them as the unprivileged `postgres` user
            import pwd

            try:
                pwd.getpwnam("postgres")
                self.as_user = "postgres"
                self.notes.append("run as the `postgres` user (this benchmark ran as root)")
            except KeyError:
                self.available = False
                self.unavailable_reason = (
                    "running as root and there is no `postgres` user to run the server as"
                )
        self.notes.append(
            "`fsync=off` (like PGlite, which forces it), `initdb --no-sync -A trust`; cold start includes "
            "initdb; restart after kill -9 = SIGKILL of the postmaster and all its processes, then "
            "`pg_ctl start` at once (crash recovery included); RSS = sum over all its processes "
            "(shared memory counted in each: PSS sum also in results.json)"
        )

    def setup(self, work: Path, quick: bool) -> None:
        if not self.available:
            return
        self.root = Path(tempfile.mkdtemp(prefix="hive-bench-pg-"))
        REG.dirs.append(self.root)
        self.sock_dir = self.root / "sock"
        self.sock_dir.mkdir()
        if self.as_user:
            import pwd

            pw = pwd.getpwnam(self.as_user)
            for d in (self.root, self.sock_dir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        with contextlib.suppress(Exception):
            self._version = run(
                [str(self.bin / "postgres"), "--version"], timeout=10
            ).stdout.strip()

    def cmd(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin / tool), *args]
        return ["runuser", "-u", self.as_user, "--", *argv] if self.as_user else argv

    def data_root(self, tmp: Path) -> Path:
        assert self.root is not None
        return self.root

    def start(self, data_dir: Path, deadline: float) -> ServerHandle:
        if not (data_dir / "PG_VERSION").exists():
            r = run(
                self.cmd(
                    "initdb",
                    "-D",
                    str(data_dir),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ),
                timeout=120,
            )
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed: {short_error(r.stderr or r.stdout)}")
        return PGHandle(self, data_dir, deadline)

    def versions(self) -> dict[str, Any]:
        return {"postgres": self._version}


# ================================================================================ client worker


class WorkerTimeout(Exception):
    pass


class Worker:
    """A `bench.py --worker` process that runs the client side of one step at a time. If a step does
    not answer by its deadline the worker is killed (and the step reported as a hang)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as err:
            p = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        REG.procs.append(p)
        self.buf = b""
        return p

    def kill(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc, wait=0.5)
            with contextlib.suppress(ValueError):
                REG.procs.remove(self.proc)
            self.proc = None

    def call(self, cmd: str, conn: Conn, timeout: float, **args: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._spawn()
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        msg = json.dumps({"cmd": cmd, "conn": conn.as_dict(), "args": args}) + "\n"
        self.proc.stdin.write(msg.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise WorkerTimeout(f"no answer within {timeout:.0f} s (client killed)")
                if sel.select(min(left, 0.5)):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        self.kill()
                        raise RuntimeError("client worker died")
                    self.buf += chunk
        finally:
            sel.close()
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "unknown error"))
        return dict(reply["result"])


def _lat_stats(samples: list[float]) -> dict[str, Any]:
    s = sorted(samples)
    n = len(s)
    return {
        "n": n,
        "p50_us": s[n // 2] * 1e6,
        "p99_us": s[min(n - 1, int(n * 0.99))] * 1e6,
        "mean_us": sum(s) / n * 1e6,
    }


def _rows(n: int, offset: int = 0) -> list[tuple[int, str]]:
    return [(offset + i, f"row {offset + i} of the benchmark") for i in range(n)]


async def _w_latency_asyncpg(p: dict[str, Any], n: int, warmup: int) -> dict[str, Any]:
    conn = await asyncpg_connect(p)
    try:
        for _ in range(warmup):
            await conn.fetchval("SELECT 1")
        pc = time.perf_counter
        samples = []
        for _ in range(n):
            t = pc()
            await conn.fetchval("SELECT 1")
            samples.append(pc() - t)
        return _lat_stats(samples)
    finally:
        conn.terminate()


def _w_latency_psycopg(p: dict[str, Any], n: int, warmup: int) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(psycopg_conninfo(p), autocommit=True) as conn:
        cur = conn.cursor()
        for _ in range(warmup):
            cur.execute("SELECT 1")
            cur.fetchone()
        pc = time.perf_counter
        samples = []
        for _ in range(n):
            t = pc()
            cur.execute("SELECT 1")
            cur.fetchone()
            samples.append(pc() - t)
        return _lat_stats(samples)


async def _w_inserts_asyncpg(p: dict[str, Any], kind: str, n: int) -> dict[str, Any]:
    table = f"bench_{kind}"
    conn = await asyncpg_connect(p)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        rows = _rows(n)
        sql = f"INSERT INTO {table} (id, v) VALUES ($1, $2)"
        t = time.perf_counter()
        if kind == "autocommit_asyncpg":
            for r in rows:
                await conn.execute(sql, *r)
        elif kind == "transaction_asyncpg":
            async with conn.transaction():
                for r in rows:
                    await conn.execute(sql, *r)
        elif kind == "executemany_asyncpg":
            await conn.executemany(sql, rows)
        else:
            raise ValueError(kind)
        took = time.perf_counter() - t
        count = await conn.fetchval(f"SELECT count(*) FROM {table}")
        if count != n:
            raise RuntimeError(f"expected {n} rows, found {count}")
        return {"rows": n, "seconds": took, "rows_per_s": n / took}
    finally:
        conn.terminate()


def _w_inserts_psycopg(p: dict[str, Any], n: int) -> dict[str, Any]:
    import psycopg

    table = "bench_autocommit_psycopg"
    with psycopg.connect(psycopg_conninfo(p), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        cur = conn.cursor()
        sql = f"INSERT INTO {table} (id, v) VALUES (%s, %s)"
        rows = _rows(n)
        t = time.perf_counter()
        for r in rows:
            cur.execute(sql, r)
        took = time.perf_counter() - t
        count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        if count != n:
            raise RuntimeError(f"expected {n} rows, found {count}")
        return {"rows": n, "seconds": took, "rows_per_s": n / took}


def _w_copy_psycopg(p: dict[str, Any], n: int) -> dict[str, Any]:
    import psycopg

    table = "bench_copy"
    data = "".join(f"{i}\trow {i} of the benchmark\n" for i in range(n)).encode()
    with psycopg.connect(psycopg_conninfo(p), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int, v text)")
        cur = conn.cursor()
        t = time.perf_counter()
        with cur.copy(f"COPY {table} (id, v) FROM STDIN") as cp:
            step = 1 << 20
            for i in range(0, len(data), step):
                cp.write(data[i : i + step])
        took = time.perf_counter() - t
        count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        if count != n:
            raise RuntimeError(f"expected {n} rows, found {count}")
        return {"rows": n, "seconds": took, "rows_per_s": n / took, "mb": len(data) / 2**20}


def worker_main() -> None:
    """`bench.py --worker`: one JSON command per stdin line, one JSON reply per stdout line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when we die
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        cmd, p, a = req["cmd"], req["conn"], req["args"]
        try:
            if cmd == "latency_asyncpg":
                res = asyncio.run(_w_latency_asyncpg(p, a["n"], a["warmup"]))
            elif cmd == "latency_psycopg":
                res = _w_latency_psycopg(p, a["n"], a["warmup"])
            elif cmd == "inserts_asyncpg":
                res = asyncio.run(_w_inserts_asyncpg(p, a["kind"], a["n"]))
            elif cmd == "inserts_psycopg":
                res = _w_inserts_psycopg(p, a["n"])
            elif cmd == "copy_psycopg":
                res = _w_copy_psycopg(p, a["n"])
            else:
                raise ValueError(f"unknown command {cmd}")
            reply = {"ok": True, "result": res}
        except Exception as exc:
            reply = {"ok": False, "error": short_error(exc, 300)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# ================================================================================ the benchmark


@dataclass
class Config:
    quick: bool
    runs: int
    lat_n: int
    lat_warmup: int
    insert_rows: int
    copy_rows: int
    pgbench_s: int
    pgbench_clients: list[int] = field(default_factory=lambda: list(PGBENCH_CLIENTS))
    pgbench_modes: tuple[str, ...] = ("simple", "prepared")


def make_config(args: argparse.Namespace) -> Config:
    if args.quick:
        cfg = Config(
            quick=True,
            runs=1,
            lat_n=1000,
            lat_warmup=200,
            insert_rows=2000,
            copy_rows=100_000,
            pgbench_s=1,
            pgbench_modes=("simple",),
        )
    else:
        cfg = Config(
            quick=False,
            runs=3,
            lat_n=5000,
            lat_warmup=500,
            insert_rows=2000,
            copy_rows=100_000,
            pgbench_s=5,
        )
    if args.runs:
        cfg.runs = args.runs
    if args.pgbench_seconds:
        cfg.pgbench_s = args.pgbench_seconds
    return cfg


class Bench:
    def __init__(self, cfg: Config, targets: list[Target], tmp: Path, out_dir: Path) -> None:
        self.cfg = cfg
        self.targets = targets
        self.tmp = tmp
        self.out_dir = out_dir
        self.res: dict[str, dict[str, Any]] = {
            t.name: {
                "label": LABELS[t.name],
                "available": t.available,
                "notes": list(t.notes),
                "errors": [],
            }
            for t in targets
        }
        self.warm_dirs: dict[str, Path] = {}
        self.worker = Worker(tmp / "worker.log")

    # -------------------------------------------------------------- helpers

    def err(self, t: Target, what: str, exc: BaseException | str) -> None:
        text = f"{what}: {short_error(exc, 300)}"
        self.res[t.name]["errors"].append(text)
        log(t.name, f"{what} FAILED: {short_error(exc, 300)}")

    def dirs_for(self, t: Target, kind: str) -> Path:
        d = t.data_root(self.tmp) / kind
        d.parent.mkdir(parents=True, exist_ok=True)
        return d

    def _timed_start(
        self, t: Target, data_dir: Path, kind: str = "other"
    ) -> tuple[ServerHandle, float]:
        deadline = time.monotonic() + 90
        t0 = time.monotonic()
        t0_wall = time.time()
        h = t.start(data_dir, deadline)
        returned = time.monotonic()
        try:
            t1 = wait_sql(h.conn, deadline, h.alive)
        except BaseException:
            with contextlib.suppress(Exception):
                h.stop()
            raise
        if isinstance(h, HBSupervised):
            # Bridge.start() returns only after its own SELECT 1 answered: that is the first SELECT 1.
            # (The check above, one more SCRAM connection, is kept out of the number.)
            self.res[t.name].setdefault("extra_ping_after_start_s", []).append(t1 - returned)
            # how much of it Node itself reports (spawn to ready line not included)
            ms = t.ready_info.get("startup_ms") if isinstance(t, HiveBridgeTarget) else None
            self.res[t.name].setdefault("node_startup_ms", {}).setdefault(kind, []).append(ms)
            return h, returned - t0
        if isinstance(h, PyPgliteHandle):
            # measured from the moment its helper called PGliteManager.start() (python startup excluded)
            return h, (t1 - t0) - (h.t0_wall - t0_wall)
        return h, t1 - t0

    # -------------------------------------------------------------- starts

    def starts(self) -> None:
        cfg = self.cfg
        for t in self.targets:
            r = self.res[t.name]
            r.update(
                first_start_s=[],
                cold_start_s=[],
                warm_start_s=[],
                restart_kill9_s=[],
                rss_after_cold_start=[],
                rss_after_warm_start=[],
            )
        for i in range(cfg.runs):
            order = self.targets if i % 2 == 0 else list(reversed(self.targets))
            for t in order:
                if t.available:
                    self._cold(t, i)
                first = isinstance(t, HiveBridgeTarget) and t.has_template and not cfg.quick
                if t.available and first:
                    self._cold(t, i, first_ever=True)
            for t in order:
                if t.available and t.persistent and t.name in self.warm_dirs:
                    self._warm_and_kill(t, i)
        for t in self.targets:
            r = self.res[t.name]
            for k in ("first_start_s", "cold_start_s", "warm_start_s", "restart_kill9_s"):
                r[k + "_median"] = median(r[k])
            if not r["first_start_s"]:
                # no template cache that could be empty: the first start ever is a cold start
                r["first_start_s_median"] = r["cold_start_s_median"]
            for k in ("rss_after_cold_start", "rss_after_warm_start"):
                r[k + "_mb_median"] = median([x["rss_mb"] for x in r[k] if x])

    def _cold(self, t: Target, i: int, first_ever: bool = False) -> None:
        r = self.res[t.name]
        what = "first start ever (no template cache)" if first_ever else "cold start"
        d = self.dirs_for(t, f"{'first' if first_ever else 'cold'}{i}")
        h = None
        ok = False
        try:
            if first_ever:
                assert isinstance(t, HiveBridgeTarget)
                empty = self.tmp / f"empty-template-cache-{i}"
                with t.no_template_cache(empty):
                    h, took = self._timed_start(t, d, "first")
                shutil.rmtree(empty, ignore_errors=True)
                r["first_start_s"].append(took)
            else:
                h, took = self._timed_start(t, d, "cold")
                r["cold_start_s"].append(took)
                r["rss_after_cold_start"].append(rss_of(h.pids()))
            ok = True
            log(t.name, f"{what} {i + 1}/{self.cfg.runs}: {took:.2f} s")
        except Exception as exc:
            self.err(t, f"{what} {i + 1}", exc)
        finally:
            if h is not None:
                try:
                    h.stop()
                except Exception as exc:
                    self.err(t, f"stop after {what} {i + 1}", exc)
        if first_ever:
            ok = False  # never the warm dir
        if t.persistent and t.name not in self.warm_dirs and ok and (d / "PG_VERSION").exists():
            self.warm_dirs[t.name] = d
        elif d.exists() and self.warm_dirs.get(t.name) != d:
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(d.with_name(d.name + ".bridge"), ignore_errors=True)

    def _warm_and_kill(self, t: Target, i: int) -> None:
        r = self.res[t.name]
        d = self.warm_dirs[t.name]
        h = None
        try:
            h, took = self._timed_start(t, d, "warm")
            r["warm_start_s"].append(took)
            r["rss_after_warm_start"].append(rss_of(h.pids()))
            log(t.name, f"warm start {i + 1}/{self.cfg.runs}: {took:.2f} s")
        except Exception as exc:
            self.err(t, f"warm start {i + 1}", exc)
            if h is not None:
                with contextlib.suppress(Exception):
                    h.stop()
            return
        try:
            old = h.pids()
            deadline = time.monotonic() + 60
            t0 = time.monotonic()
            h.kill9()
            h.after_kill_restart(deadline)
            t1 = wait_sql(h.conn, deadline, h.alive)
            new = h.pids()
            took = t1 - t0
            if new and old and new == old and t.name != PG:
                raise RuntimeError(f"SELECT 1 answered but the pid did not change ({old})")
            r["restart_kill9_s"].append(took)
            log(t.name, f"restart after kill -9 {i + 1}/{self.cfg.runs}: {took:.2f} s")
        except Exception as exc:
            self.err(t, f"restart after kill -9 {i + 1}", exc)
        finally:
            try:
                h.stop()
            except Exception as exc:
                self.err(t, f"stop after restart {i + 1}", exc)

    # -------------------------------------------------------------- workload

    def workload(self, t: Target) -> None:
        r = self.res[t.name]
        d = self.warm_dirs.get(t.name) or self.dirs_for(t, "work")
        try:
            h, took = self._timed_start(t, d)
        except Exception as exc:
            self.err(t, "start for the workload", exc)
            return
        self.h = h
        log(t.name, f"workload server up in {took:.2f} s")
        r["rss_workload_start"] = rss_of(h.pids())
        try:
            self._client_steps(t)
            r["rss_after_inserts_copy"] = rss_of(self.h.pids())
            self._pgbench(t)
            r["rss_after_writes"] = rss_of(self.h.pids())
            if r["rss_after_writes"]:
                log(
                    t.name,
                    f"RSS after the write workload: {r['rss_after_writes']['rss_mb']:.0f} MB",
                )
        finally:
            try:
                self.h.stop()
            except Exception as exc:
                self.err(t, "stop after the workload", exc)

    def _ensure_healthy(self, t: Target, after: str) -> bool:
        """After a failed step: is the server still answering? If not, restart it (a hung server is a
        result; the rest of the run should still measure something). True if it was restarted."""
        if is_healthy(self.h.conn, 3.0):
            return False
        # a half-open connection of the client may be what blocks a one-connection server
        self.worker.kill()
        if is_healthy(self.h.conn, 3.0):
            self.res[t.name].setdefault("client_restarts", []).append(after)
            return False
        self.err(t, f"server stopped answering SELECT 1 after {after}", "restarting it")
        with contextlib.suppress(Exception):
            self.h.kill9()
        with contextlib.suppress(Exception):
            self.h.stop()
        d = self.warm_dirs.get(t.name) or self.dirs_for(t, "work")
        self.h, took = self._timed_start(t, d)
        self.res[t.name].setdefault("server_restarts_after_hang", []).append(after)
        log(t.name, f"restarted after a hang in {took:.2f} s")
        return True

    def _step(
        self,
        t: Target,
        key: str,
        cmd: str,
        timeout: float,
        show: Callable[[dict[str, Any]], str],
        **args: Any,
    ) -> None:
        r = self.res[t.name]
        try:
            res = self.worker.call(cmd, self.h.conn, timeout, **args)
            r.setdefault("client", {})[key] = res
            log(t.name, f"{key}: {show(res)}")
        except Exception as exc:
            r.setdefault("client", {})[key] = {"error": short_error(exc, 300)}
            self.err(t, key, exc)
            self._ensure_healthy(t, key)

    def _client_steps(self, t: Target) -> None:
        cfg = self.cfg

        def lat(res: dict[str, Any]) -> str:
            return f"p50 {res['p50_us']:.0f} µs, p99 {res['p99_us']:.0f} µs (n={res['n']})"

        def thr(res: dict[str, Any]) -> str:
            return f"{res['rows_per_s']:,.0f} rows/s ({res['rows']} rows in {res['seconds']:.3f} s)"

        lat_timeout = 30 + (cfg.lat_n + cfg.lat_warmup) * 0.005
        self._step(
            t,
            "select1_asyncpg",
            "latency_asyncpg",
            lat_timeout,
            lat,
            n=cfg.lat_n,
            warmup=cfg.lat_warmup,
        )
        self._step(
            t,
            "select1_psycopg",
            "latency_psycopg",
            lat_timeout,
            lat,
            n=cfg.lat_n,
            warmup=cfg.lat_warmup,
        )
        ins_timeout = 30 + cfg.insert_rows * 0.01
        for kind in ("autocommit_asyncpg", "transaction_asyncpg", "executemany_asyncpg"):
            self._step(
                t,
                f"insert_{kind}",
                "inserts_asyncpg",
                ins_timeout,
                thr,
                kind=kind,
                n=cfg.insert_rows,
            )
        self._step(
            t, "insert_autocommit_psycopg", "inserts_psycopg", ins_timeout, thr, n=cfg.insert_rows
        )
        if t.copy_ok:
            self._step(
                t, "copy_100k_psycopg", "copy_psycopg", 5 if cfg.quick else 10, thr, n=cfg.copy_rows
            )
        else:
            self.res[t.name].setdefault("client", {})["copy_100k_psycopg"] = {
                "skipped": "COPY FROM STDIN hangs the stock server (known defect)"
            }
            log(t.name, "COPY FROM STDIN: skipped (known to hang the stock server)")

    # -------------------------------------------------------------- pgbench

    def _pgbench_init(self, t: Target) -> dict[str, Any]:
        argv = ["pgbench", "-i", "-s", "1", "-q"]
        if t.pgbench_init_steps:
            argv += ["-I", t.pgbench_init_steps]
        t0 = time.monotonic()
        try:
            p = run(argv, timeout=90 if not self.cfg.quick else 45, env=self.h.conn.pg_env())
        except TimeoutError as exc:
            return {"ok": False, "error": str(exc), "steps": t.pgbench_init_steps or "dtgvp"}
        took = time.monotonic() - t0
        res = {
            "ok": p.returncode == 0,
            "seconds": took,
            "steps": t.pgbench_init_steps or "dtgvp (client-side COPY)",
        }
        if p.returncode != 0:
            res["error"] = short_error(p.stderr or p.stdout, 300)
        return res

    def _pgbench(self, t: Target) -> None:
        cfg = self.cfg
        r = self.res[t.name]
        pb: dict[str, Any] = {"init": {}, "runs": {}}
        r["pgbench"] = pb
        if not shutil.which("pgbench"):
            pb["init"] = {"ok": False, "error": "pgbench not found"}
            return
        pb["init"] = self._pgbench_init(t)
        if pb["init"]["ok"]:
            log(t.name, f"pgbench -i -s 1 ({pb['init']['steps']}): {pb['init']['seconds']:.2f} s")
        else:
            self.err(t, "pgbench -i -s 1", pb["init"].get("error", "failed"))
            if self._ensure_healthy(t, "pgbench -i"):
                pb["init_retry"] = self._pgbench_init(t)
            if not (pb.get("init_retry") or {}).get("ok"):
                return
        hangs = 0
        refused: dict[int, str] = {}  # client count -> the run where that many connections failed
        for script in ("select-only", "tpcb-like"):
            for clients in cfg.pgbench_clients:
                for mode in cfg.pgbench_modes:
                    key = f"{script}/c{clients}/{mode}"
                    if hangs >= 2:
                        pb["runs"][key] = {"skipped": "the server hung in two earlier pgbench runs"}
                        continue
                    if clients in refused:
                        pb["runs"][key] = {
                            "skipped": f"{clients} connections failed in {refused[clients]}"
                        }
                        log(
                            t.name,
                            f"pgbench {key}: skipped ({clients} connections failed in {refused[clients]})",
                        )
                        continue
                    res = self._pgbench_run(t, script, clients, mode)
                    pb["runs"][key] = res
                    if res.get("hung"):
                        hangs += 1
                    if not res.get("transactions") and "connect" in str(res.get("error", "")):
                        refused[clients] = key
                    shown = f"{res['tps']:.0f} tps" if res.get("tps") is not None else "no tps"
                    shown += (
                        f", {res.get('failed', 0)} failed,"
                        f" {res.get('aborted_clients', 0)} clients aborted"
                    )
                    if res.get("error"):
                        shown += f" ({short_error(res['error'], 120)})"
                    log(t.name, f"pgbench {key} -T {cfg.pgbench_s}: {shown}")
                    failed = bool(res.get("error") or res.get("hung"))
                    if failed and self._ensure_healthy(t, f"pgbench {key}") and not t.persistent:
                        pb["init_after_restart"] = self._pgbench_init(t)

    def _pgbench_run(self, t: Target, script: str, clients: int, mode: str) -> dict[str, Any]:
        cfg = self.cfg
        ncpu = os.cpu_count() or 2
        argv = [
            "pgbench",
            "-n",
            "-T",
            str(cfg.pgbench_s),
            "-c",
            str(clients),
            "-j",
            str(min(clients, ncpu)),
            "-M",
            mode,
            "-b",
            script,
        ]
        try:
            p = run(argv, timeout=cfg.pgbench_s + 15, env=self.h.conn.pg_env())
        except TimeoutError as exc:
            return {"hung": True, "error": str(exc), "tps": None}
        out = p.stdout + "\n" + p.stderr
        res: dict[str, Any] = {"exit": p.returncode}
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        res["tps"] = float(m.group(1)) if m else None
        m = re.search(r"number of transactions actually processed: (\d+)", out)
        res["transactions"] = int(m.group(1)) if m else None
        m = re.search(r"number of failed transactions: (\d+)", out)
        res["failed"] = int(m.group(1)) if m else 0
        res["aborted_clients"] = len(re.findall(r"client \d+ aborted", out))
        m = re.search(r"latency average = ([\d.]+) ms", out)
        res["latency_ms"] = float(m.group(1)) if m else None
        if p.returncode != 0 or res["aborted_clients"]:
            errs = [
                ln for ln in p.stderr.splitlines() if "error" in ln.lower() or "fatal" in ln.lower()
            ]
            res["error"] = short_error(errs[0] if errs else (p.stderr or p.stdout), 300)
        return res

    # -------------------------------------------------------------- floor

    def floor(self) -> dict[str, Any]:
        src = self.warm_dirs.get(STOCK)
        d = self.tmp / "floor-data"
        if src and src.exists():
            shutil.copytree(
                src, d
            )  # an existing PGlite 0.5 dir without extensions: no initdb in the timing
        argv = [
            "node",
            str(FLOOR_JS),
            "--data-dir",
            str(d),
            "--iterations",
            str(self.cfg.lat_n),
            "--warmup",
            str(self.cfg.lat_warmup),
            "--inserts",
            str(self.cfg.insert_rows),
        ]
        try:
            p = run(argv, timeout=180, cwd=str(JS_DIR))
            if p.returncode != 0:
                raise RuntimeError(short_error(p.stderr or p.stdout, 300))
            res = json.loads(p.stdout.strip().splitlines()[-1])
            log(
                "floor",
                f"in-process execProtocolRaw SELECT 1: p50 {res['raw_select1']['p50_us']:.1f} µs, "
                f"p99 {res['raw_select1']['p99_us']:.1f} µs; 2000 autocommit INSERTs "
                f"{res['inserts']['ms']:.0f} ms",
            )
            return res
        except Exception as exc:
            log("floor", f"FAILED: {short_error(exc)}")
            return {"error": short_error(exc, 300)}
        finally:
            shutil.rmtree(d, ignore_errors=True)


# ================================================================================ results


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def ver(argv: list[str]) -> str | None:
        try:
            return run(argv, timeout=20).stdout.strip().splitlines()[0]
        except Exception:
            return None

    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "node": ver(["node", "--version"]),
        "pgbench": ver(["pgbench", "--version"]),
        "load_avg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(Exception):
        import asyncpg
        import psycopg

        info["asyncpg"] = asyncpg.__version__
        info["psycopg"] = psycopg.__version__
        info["libpq"] = psycopg.pq.version()
    with contextlib.suppress(Exception):
        info["git_commit"] = run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], timeout=10
        ).stdout.strip()
        dirty = run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "bridge-js", "hive_bridge"],
            timeout=10,
        ).stdout.split("\n")
        info["git_uncommitted"] = [line[3:] for line in dirty if line.strip()]
    return info


def _get(d: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _tps(key: str) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        run_ = _get(r, "pgbench", "runs", key)
        if not isinstance(run_, dict) or run_.get("tps") is None:
            return None
        if run_.get("hung") or run_.get("aborted_clients"):
            return None
        return float(run_["tps"])

    return get


def _cell_pgbench(r: dict[str, Any], key: str) -> str:
    run_ = _get(r, "pgbench", "runs", key)
    if not r.get("available"):
        return "n/a"
    if run_ is None:
        init = _get(r, "pgbench", "init") or {}
        return "init failed" if init and not init.get("ok") else "n/a"
    if "skipped" in run_:
        return "skipped"
    if run_.get("hung"):
        return "hung"
    parts = []
    if run_.get("tps") is not None and not run_.get("aborted_clients"):
        parts.append(f"{run_['tps']:,.0f}")
    elif run_.get("aborted_clients"):
        parts.append(f"aborted ({run_['aborted_clients']} clients)")
    else:
        parts.append("failed")
    if run_.get("failed"):
        parts.append(f"{run_['failed']} failed")
    return ", ".join(parts)


FORMATS: dict[str, Callable[[float], str]] = {
    "s": lambda x: f"{x:.2f} s",
    "us": lambda x: f"{x:,.0f} µs",
    "rate": lambda x: f"{x:,.0f}/s",
    "mb": lambda x: f"{x:,.0f} MB",
    "tps": lambda x: f"{x:,.0f}",
}
FMT_S, FMT_US, FMT_RATE, FMT_MB = FORMATS["s"], FORMATS["us"], FORMATS["rate"], FORMATS["mb"]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    path: tuple[str, ...]  # where in a target's results; for "tps": the pgbench run key
    unit: str  # a FORMATS key

    @property
    def lower_better(self) -> bool:
        return self.unit in ("s", "us", "mb")

    def get(self, r: dict[str, Any]) -> float | None:
        if self.unit == "tps":
            return _tps(self.path[0])(r)
        v = _get(r, *self.path)
        return None if v is None else float(v)

    def fmt(self, x: float) -> str:
        return FORMATS[self.unit](x)


def _c(step: str, value: str) -> tuple[str, ...]:
    return ("client", step, value)


METRICS = [
    Metric("first", "first start ever: empty data dir, no cache", ("first_start_s_median",), "s"),
    Metric("cold", "cold start: empty data dir → first SELECT 1", ("cold_start_s_median",), "s"),
    Metric("warm", "warm start: existing data dir → first SELECT 1", ("warm_start_s_median",), "s"),
    Metric("restart", "restart after kill -9 → SELECT 1 answers", ("restart_kill9_s_median",), "s"),
    Metric("a_p50", "SELECT 1 p50, asyncpg", _c("select1_asyncpg", "p50_us"), "us"),
    Metric("a_p99", "SELECT 1 p99, asyncpg", _c("select1_asyncpg", "p99_us"), "us"),
    Metric("p_p50", "SELECT 1 p50, psycopg", _c("select1_psycopg", "p50_us"), "us"),
    Metric("p_p99", "SELECT 1 p99, psycopg", _c("select1_psycopg", "p99_us"), "us"),
    Metric(
        "ins_a",
        "autocommit INSERTs, asyncpg",
        _c("insert_autocommit_asyncpg", "rows_per_s"),
        "rate",
    ),
    Metric(
        "ins_p",
        "autocommit INSERTs, psycopg",
        _c("insert_autocommit_psycopg", "rows_per_s"),
        "rate",
    ),
    Metric(
        "ins_t",
        "INSERTs in one transaction, asyncpg",
        _c("insert_transaction_asyncpg", "rows_per_s"),
        "rate",
    ),
    Metric(
        "many",
        "executemany 2000 rows, asyncpg",
        _c("insert_executemany_asyncpg", "rows_per_s"),
        "rate",
    ),
    Metric(
        "copy", "COPY FROM STDIN 100k rows, psycopg", _c("copy_100k_psycopg", "rows_per_s"), "rate"
    ),
    *[
        Metric(
            f"pgb_{s}_{c}_{m}",
            f"pgbench {s}, {c} client{'s' if c > 1 else ''}, {m} (tps)",
            (f"{s}/c{c}/{m}",),
            "tps",
        )
        for s in ("select-only", "tpcb-like")
        for c in PGBENCH_CLIENTS
        for m in ("simple", "prepared")
    ],
    Metric("rss_cold", "server RSS after cold start", ("rss_after_cold_start_mb_median",), "mb"),
    Metric("rss_warm", "server RSS after warm start", ("rss_after_warm_start_mb_median",), "mb"),
    Metric(
        "rss_writes", "server RSS after the write workload", ("rss_after_writes", "rss_mb"), "mb"
    ),
]


def _cell(m: Metric, r: dict[str, Any], name: str) -> str:
    if not r.get("available"):
        return "n/a"
    if m.unit == "tps":
        return _cell_pgbench(r, m.path[0])
    v = m.get(r)
    if v is not None:
        return m.fmt(v)
    if name == PYP and m.key in ("warm", "restart", "rss_warm"):
        return "n/a (in-memory)"
    client_key = {
        "a_p50": "select1_asyncpg",
        "a_p99": "select1_asyncpg",
        "p_p50": "select1_psycopg",
        "p_p99": "select1_psycopg",
        "ins_a": "insert_autocommit_asyncpg",
        "ins_p": "insert_autocommit_psycopg",
        "ins_t": "insert_transaction_asyncpg",
        "many": "insert_executemany_asyncpg",
        "copy": "copy_100k_psycopg",
    }.get(m.key)
    if client_key:
        c = _get(r, "client", client_key) or {}
        if "skipped" in c:
            return "skipped"
        if "error" in c:
            return "hung" if "no answer within" in c["error"] else "failed"
    return "failed" if r.get("errors") else "n/a"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def compute_ratios(res: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    hb = res["targets"].get(HB, {})
    for m in METRICS:
        out[m.key] = {
            "vs_stock": ratio(m.get(hb), m.get(res["targets"].get(STOCK, {}))),
            "vs_postgres": ratio(m.get(hb), m.get(res["targets"].get(PG, {}))),
        }
    return out


def _pair(
    a: float | None, b: float | None, fmt: Callable[[float], str], ratio_fmt: str = ".2f"
) -> str:
    q = ratio(a, b)
    sa = "n/a" if a is None else fmt(a)
    sb = "n/a" if b is None else fmt(b)
    return f"{sa} vs {sb}" + ("" if q is None else f" = {q:{ratio_fmt}}×")


def check_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    T = res["targets"]
    hb, st = T.get(HB, {}), T.get(STOCK, {})
    checks: list[dict[str, Any]] = []

    def add(name: str, value: str, ok: bool | None) -> None:
        checks.append({"target": name, "value": value, "met": ok})

    def m(key: str) -> Metric:
        return next(x for x in METRICS if x.key == key)

    cold = m("cold").get(hb)
    add(
        "first start on an empty data dir ≤ 1.0 s",
        fmt_s(cold),
        None if cold is None else cold <= 1.0,
    )
    first = m("first").get(hb)
    if first is not None and first != cold:
        add(
            "(same, the first start ever on a machine: template cache empty)",
            fmt_s(first),
            first <= 1.0,
        )
    w_hb, w_st = m("warm").get(hb), m("warm").get(st)
    q = ratio(w_hb, w_st)
    add(
        "warm start through the supervisor ≤ 1.1× bare stock warm start",
        _pair(w_hb, w_st, FMT_S),
        None if q is None else q <= 1.1,
    )
    rs = m("restart").get(hb)
    add("restart after kill -9 ≤ 1.0 s", fmt_s(rs), None if rs is None else rs <= 1.0)
    for key, what in (
        ("a_p50", "asyncpg p50"),
        ("a_p99", "asyncpg p99"),
        ("p_p50", "psycopg p50"),
        ("p_p99", "psycopg p99"),
    ):
        a, b = m(key).get(hb), m(key).get(st)
        q = ratio(a, b)
        add(f"SELECT 1 {what} ≤ 1.1× stock", _pair(a, b, FMT_US), None if q is None else q <= 1.1)
    for key, what in (("rss_warm", "after warm start"), ("rss_writes", "after the write workload")):
        a, b = m(key).get(hb), m(key).get(st)
        q = ratio(a, b)
        add(f"server RSS {what} ≤ 0.5× stock", _pair(a, b, FMT_MB), None if q is None else q <= 0.5)
    a, b = m("many").get(hb), m("many").get(st)
    q = ratio(a, b)
    add(
        "executemany 2000 rows ≥ 3× stock",
        _pair(a, b, FMT_RATE, ".1f"),
        None if q is None else q >= 3.0,
    )
    runs = _get(hb, "pgbench", "runs") or {}
    for s in ("select-only", "tpcb-like"):
        for mode in ("simple", "prepared"):
            if f"{s}/c1/{mode}" not in runs and f"{s}/c8/{mode}" not in runs:
                continue
            one, eight = runs.get(f"{s}/c1/{mode}") or {}, runs.get(f"{s}/c8/{mode}") or {}
            t1, t8 = one.get("tps"), eight.get("tps")
            bad = sum(
                int(x.get("failed") or 0)
                + int(x.get("aborted_clients") or 0)
                + (1 if x.get("hung") else 0)
                for x in (one, eight)
            )
            ok = None if (t1 is None or t8 is None) else (t8 >= t1 and bad == 0)
            if one.get("hung") or eight.get("hung") or one.get("error") or eight.get("error"):
                ok = False
            shown = f"{'n/a' if t8 is None else f'{t8:,.0f}'} vs {'n/a' if t1 is None else f'{t1:,.0f}'} tps"
            shown += f", {bad} failed/aborted"
            if eight.get("error") or one.get("error"):
                shown += f" ({short_error(eight.get('error') or one.get('error'), 100)})"
            add(f"pgbench {s} {mode}: 8 clients ≥ 1 client TPS, zero failures", shown, ok)
    return checks


def versions_line(res: dict[str, Any]) -> str:
    mi = res["meta"]["machine"]
    v = res["meta"]["versions"]
    hb = v.get(HB, {})
    parts = [
        f"{mi.get('cpu_model')}, {mi.get('cores')} cores, {mi.get('ram_gb')} GB RAM, {mi.get('os')}",
        f"Node {mi.get('node')}",
        f"PGlite {hb.get('pglite')} (PostgreSQL {hb.get('postgres_version', '?')})",
        f"pglite-socket {v.get(STOCK, {}).get('pglite_socket')}",
    ]
    pyp = v.get(PYP, {})
    if pyp.get("py_pglite"):
        parts.append(
            f"py-pglite {pyp.get('py_pglite')} (PGlite {pyp.get('pglite')}, "
            f"pglite-socket {pyp.get('pglite_socket')})"
        )
    if v.get(PG, {}).get("postgres"):
        parts.append(v[PG]["postgres"])
    parts.append(f"asyncpg {mi.get('asyncpg')}, psycopg {mi.get('psycopg')}, {mi.get('pgbench')}")
    return "; ".join(parts)


def _provenance(res: dict[str, Any]) -> str:
    mi = res["meta"]["machine"]
    hb = res["meta"]["versions"].get(HB, {})
    text = f"hive-bridge at commit {mi.get('git_commit', '?')}"
    if mi.get("git_uncommitted"):
        text += f" plus uncommitted changes to {', '.join(mi['git_uncommitted'])}"
    if hb.get("js_dir") and Path(hb["js_dir"]) != JS_DIR:
        text += f" (bridge-js from {hb['js_dir']})"
    if hb.get("template_build_s"):
        text += f"; building its data-dir template took {hb['template_build_s']:.2f} s"
    load = mi.get("load_avg_at_start") or [0]
    end = res["meta"].get("load_avg_at_end") or [0]
    return text + f". Load average {load[0]:.2f} at the start, {end[0]:.2f} at the end."


def render_markdown(res: dict[str, Any]) -> str:
    meta = res["meta"]
    T = res["targets"]
    names = [n for n in ALL_TARGETS if n in T]
    lines = [
        f"### Benchmark ({meta['date'][:10]}{', quick run' if meta['config']['quick'] else ''})",
        "",
        f"{versions_line(res)}. `scripts/bench.py` (`make bench`), {meta['config']['runs']} run(s) per start "
        f"measurement (medians), SELECT 1 × {meta['config']['lat_n']} after {meta['config']['lat_warmup']} "
        f"warm-up, pgbench `-s 1 -T {meta['config']['pgbench_s']}`; took {meta['duration_s']:.0f} s.",
        "",
        _provenance(res),
        "",
        "| | "
        + " | ".join(LABELS[n] for n in names)
        + " | hive-bridge ÷ stock | hive-bridge ÷ PostgreSQL |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    lines_note = (
        "Times, latencies and RSS: lower is better; rows/s and tps: higher is better. A ratio "
        "below 1 is hive-bridge taking less time or memory, or doing less work per second."
    )
    for m in METRICS:
        if m.unit == "tps" and not any(_get(T[n], "pgbench", "runs", m.path[0]) for n in names):
            continue  # not run in this configuration (--quick runs only the simple protocol)
        cells = [_cell(m, T[n], n) for n in names]
        rr = res["ratios"].get(m.key, {})
        fr = lambda x: "" if x is None else f"{x:.2f}×"  # noqa: E731
        lines.append(
            f"| {m.label} | "
            + " | ".join(cells)
            + f" | {fr(rr.get('vs_stock'))} | {fr(rr.get('vs_postgres'))} |"
        )
    lines += ["", lines_note]
    fl = res.get("floor") or {}
    if "raw_select1" in fl:
        sync = fl.get("raw_sync_select1") or {}
        lines += [
            "",
            f"In-process floor (PGlite {fl.get('pglite_version')} in one Node process, no socket): "
            f"SELECT 1 via `execProtocolRaw` p50 {fl['raw_select1']['p50_us']:.1f} µs / "
            f"p99 {fl['raw_select1']['p99_us']:.1f} µs"
            + (
                f", `execProtocolRawSync` p50 {sync['p50_us']:.1f} µs / p99 {sync['p99_us']:.1f} µs"
                if sync
                else ""
            )
            + f", `db.query` p50 {fl['query_select1']['p50_us']:.1f} µs; {fl['inserts']['rows']} autocommit "
            f"INSERTs {fl['inserts']['ms']:.0f} ms ({fl['inserts']['rows_per_s']:,.0f}/s).",
        ]
    lines += ["", "Targets (hive-bridge):", "", "| target | measured | met? |", "|---|---|---|"]
    for c in res["checks"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[c["met"]]
        lines.append(f"| {c['target']} | {c['value']} | {met} |")
    lines += ["", "Notes:", ""]
    lines.append(
        "- Start times are wall clock from the start call to the first answered `SELECT 1` on a new "
        "connection. hive-bridge is started through its Python supervisor (`hive_bridge.Bridge`: "
        "data-dir lock, SCRAM password, pgvector loaded by default), whose `start()` returns only "
        "once its own `SELECT 1` answered; its restart after kill -9 is the supervisor's own and "
        "ends when the benchmark's probe (a raw-socket client, SCRAM included) gets an answer. For "
        "the other servers the benchmark's probe decides, and for restarts it plays an instant "
        "supervisor that runs the same command again right after the kill."
    )
    hb_ms = T.get(HB, {}).get("node_startup_ms") or {}
    parts = [
        f"{kind} {statistics.median([x for x in v if x is not None]):.0f} ms"
        for kind, v in hb_ms.items()
        if kind in ("first", "cold", "warm") and any(x is not None for x in v)
    ]
    if parts:
        lines.append(
            "- hive-bridge: of its start times, Node's own `startup_ms` (process up to ready line, "
            "medians): " + ", ".join(parts) + "; the rest is spawning Node and the supervisor's "
            "readiness check."
        )
    lines.append(
        "- RSS after the write workload: after the inserts, COPY, `pgbench -i` and all pgbench runs "
        "that worked on that server (the stock server does less: no COPY, its failed steps)."
    )
    lines.append(
        "- PGlite runs with `fsync=off` (forced): committed data survives a process crash, not an OS "
        "crash or power loss. PostgreSQL here also runs with `fsync=off`."
    )
    for n in names:
        for note in T[n].get("notes", []):
            lines.append(f"- {LABELS[n]}: {note}")
        if not T[n].get("available"):
            lines.append(f"- {LABELS[n]}: not available: {T[n].get('unavailable_reason')}")
        for e in T[n].get("errors", []):
            lines.append(f"- {LABELS[n]} error: {e}")
    return "\n".join(lines) + "\n"


COLORS = {HB: "#2b7bba", PYP: "#f0a030", PG: "#5a9e4b", STOCK: "#888888"}
SHORT = {
    "first": "first\nstart ever",
    "cold": "cold\nstart",
    "warm": "warm\nstart",
    "restart": "restart\nkill -9",
    "a_p50": "asyncpg\np50",
    "a_p99": "asyncpg\np99",
    "p_p50": "psycopg\np50",
    "p_p99": "psycopg\np99",
    "rss_warm": "RSS\nwarm",
    "rss_writes": "RSS after\nwrites",
    "ins_a": "autocommit\nasyncpg",
    "ins_p": "autocommit\npsycopg",
    "ins_t": "one txn\nasyncpg",
    "many": "execute-\nmany",
    "copy": "COPY\n100k",
}


def _bars(
    ax: Any,
    labels: list[str],
    series: list[tuple[str, list[float | None]]],
    mark: str,
    annotate: bool,
) -> None:
    """Grouped bars on a log axis; a missing value is marked at the bottom instead of a bar."""
    width = 0.8 / max(1, len(series))
    drawn = False
    for i, (name, vals) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        pts = [(x, v) for x, v in zip(xs, vals, strict=True) if v]
        if pts:
            drawn = True
            ax.bar(
                [x for x, _ in pts],
                [v for _, v in pts],
                width,
                label=LABELS[name],
                color=COLORS[name],
            )
        for x, v in zip(xs, vals, strict=True):
            if v and annotate:
                ax.annotate(f"{v:.2g}", (x, v), ha="center", va="bottom", fontsize=7)
            elif not v:
                ax.text(
                    x,
                    0.02,
                    mark,
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=COLORS[name],
                    rotation=90 if len(mark) > 1 else 0,
                )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper left")


def render_chart(res: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"no chart: matplotlib not importable ({short_error(exc, 100)})"
    T = res["targets"]
    st = T.get(STOCK, {})
    others = [n for n in (HB, PYP, PG) if n in T and T[n].get("available")]
    by_key = {m.key: m for m in METRICS}
    fig, axes = plt.subplots(3, 1, figsize=(13, 13))
    panels = [
        (
            "Starts, latency, memory vs stock pglite-server (lower is better; stock = 1; log scale)",
            [
                "first",
                "cold",
                "warm",
                "restart",
                "a_p50",
                "a_p99",
                "p_p50",
                "p_p99",
                "rss_warm",
                "rss_writes",
            ],
        ),
        (
            "Throughput vs stock pglite-server (higher is better; stock = 1; log scale)",
            ["ins_a", "ins_p", "ins_t", "many", "copy"]
            + [
                f"pgb_{s}_{c}_{m}"
                for s in ("select-only", "tpcb-like")
                for c in PGBENCH_CLIENTS
                for m in ("simple", "prepared")
            ],
        ),
    ]
    for ax, (title, keys) in zip(axes[:2], panels, strict=True):
        ms = [by_key[k] for k in keys]
        series = [(n, [ratio(m.get(T[n]), m.get(st)) for m in ms]) for n in others]
        labels = [
            SHORT.get(k) or k[4:].replace("_", "\n").replace("prepared", "prep") for k in keys
        ]
        _bars(ax, labels, series, "n/a", annotate=True)
        ax.axhline(1.0, color=COLORS[STOCK], linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=10)
    keys = [
        f"{s}/c{c}/{m}"
        for s in ("select-only", "tpcb-like")
        for c in PGBENCH_CLIENTS
        for m in ("simple", "prepared")
    ]
    names = [n for n in ALL_TARGETS if n in T and T[n].get("available")]
    _bars(
        axes[2],
        [k.replace("/", "\n") for k in keys],
        [(n, [_tps(k)(T[n]) for k in keys]) for n in names],
        "✗",
        annotate=False,
    )
    axes[2].set_title(
        "pgbench TPS, absolute (log scale; ✗ = failed, aborted, skipped or hung)", fontsize=10
    )
    fig.suptitle(
        f"hive-bridge benchmark, {res['meta']['date'][:10]}: {versions_line(res)}",
        fontsize=7,
        wrap=True,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def ensure_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if sys.prefix == sys.base_prefix:
            return  # not a venv: do not pip install into a system Python
        log(
            "bench",
            "matplotlib missing: installing it into this venv (only the benchmark needs it)",
        )
        with contextlib.suppress(Exception):
            run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "matplotlib",
                ],
                timeout=300,
            )


# ================================================================================ main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, ~1.5 min (1 run per start, pgbench -T 1, simple protocol only)",
    )
    ap.add_argument("--out", default=str(REPO / "bench"), help="output dir (default: bench/)")
    ap.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma list of {','.join(ALL_TARGETS)} (default: all)",
    )
    ap.add_argument("--runs", type=int, help="runs per start measurement (default 3, quick 1)")
    ap.add_argument("--pgbench-seconds", type=int, help="pgbench -T (default 5, quick 1)")
    ap.add_argument("--no-floor", action="store_true", help="skip the in-process floor")
    ap.add_argument(
        "--js-dir",
        default=str(JS_DIR),
        help="the bridge-js dir to run hive-bridge from (default: this checkout's); e.g. a "
        "`git archive HEAD bridge-js` export with node_modules linked in, to measure a commit "
        "while the working tree is being edited",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main()
        return 0

    cfg = make_config(args)
    js_dir = Path(args.js_dir).resolve()
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [x.strip() for x in args.targets.split(",") if x.strip()]
    unknown = set(wanted) - set(ALL_TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="hive-bench-"))
    REG.dirs.append(tmp)
    results: dict[str, Any] = {}
    try:
        ensure_matplotlib()
        log("bench", f"{'quick' if cfg.quick else 'full'} run, temp dir {tmp}, output {out_dir}")
        machine = machine_info()
        log(
            "bench",
            f"{machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gb']} GB, "
            f"node {machine['node']}, load {machine['load_avg_at_start'][0]:.2f}",
        )
        factories: dict[str, Callable[[], Target]] = {
            HB: lambda: HiveBridgeTarget(js_dir),
            STOCK: StockTarget,
            PYP: lambda: PyPgliteTarget(out_dir),
            PG: PGTarget,
        }
        targets = [factories[n]() for n in ALL_TARGETS if n in wanted]
        for t in targets:
            if t.available:
                t.setup(tmp, cfg.quick)
            if not t.available:
                log(t.name, f"not available: {t.unavailable_reason}")
            elif isinstance(t, PyPgliteTarget):
                log(
                    t.name,
                    f"ready: py-pglite {t.versions().get('py_pglite')} "
                    f"(PGlite {t.versions().get('pglite')}); setup {t.setup_s:.1f} s",
                )
        bench = Bench(cfg, targets, tmp, out_dir)
        for t in targets:
            bench.res[t.name]["available"] = t.available
            bench.res[t.name]["unavailable_reason"] = t.unavailable_reason
        bench.starts()
        for t in targets:
            if t.available:
                bench.workload(t)
        bench.worker.kill()
        floor = {} if args.no_floor else bench.floor()
        for t in targets:  # notes added while running
            bench.res[t.name]["notes"] = list(t.notes)
        results = {
            "meta": {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine,
                "versions": {t.name: t.versions() for t in targets},
                "config": cfg.__dict__,
                "duration_s": time.monotonic() - started,
                "load_avg_at_end": os.getloadavg(),
            },
            "targets": bench.res,
            "floor": floor,
        }
        if PYP in bench.res:
            bench.res[PYP]["setup_s"] = next((t.setup_s for t in targets if t.name == PYP), None)
        results["ratios"] = compute_ratios(results)
        results["checks"] = check_targets(results)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        md = render_markdown(results)
        (out_dir / "results.md").write_text(md)
        try:
            note = render_chart(results, out_dir / "results.png")
        except Exception as exc:  # a chart problem must not cost the numbers
            note = f"no chart: {short_error(exc, 200)}"
        print()
        print(md)
        if note:
            log("bench", note)
        log(
            "bench",
            f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}"
            + ("" if note else f", {out_dir / 'results.png'}"),
        )
        log("bench", f"done in {time.monotonic() - started:.0f} s")
        return 0
    except KeyboardInterrupt:
        print(
            "\n[bench] interrupted: stopping everything this run started",
            file=sys.stderr,
            flush=True,
        )
        return 130
    except Exception:
        traceback.print_exc()
        print("[bench] failed: stopping everything this run started", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(
            signal.SIGINT, signal.SIG_IGN
        )  # do not let a second Ctrl-C cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        REG.cleanup()


if __name__ == "__main__":
    sys.exit(main())
