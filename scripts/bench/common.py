"""What every part of the benchmark shares: logging, processes with deadlines, cleanup, memory and
CPU of a server's processes, and waiting for the first answered SELECT 1 (psycopg)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent.parent
JS_DIR = REPO / "bridge-js"
NODE_MODULES = JS_DIR / "node_modules"


def log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", flush=True)


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def short_error(exc: BaseException | str, limit: int = 200) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_version(pkg_json: Path) -> str | None:
    try:
        return str(json.loads(pkg_json.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------- processes


class Registry:
    """Everything this run started or created, undone in reverse at exit (also on Ctrl-C)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
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
        for d in reversed(self.dirs):
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


REG = Registry()


def kill_group(p: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a child started with start_new_session=True."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)


def stop_proc(p: subprocess.Popen[Any], wait: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL; always reaps."""
    if p.stdin:
        with contextlib.suppress(OSError):
            p.stdin.close()
    if p.poll() is None:
        kill_group(p, signal.SIGTERM)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            kill_group(p, signal.SIGKILL)
            p.wait(5)
    with contextlib.suppress(ValueError):
        REG.procs.remove(p)


def run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run in its own session, killed as a group at the deadline (TimeoutError)."""
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
            p.communicate()
            raise TimeoutError(
                f"{Path(argv[0]).name} did not finish within {timeout:.0f} s"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                REG.procs.remove(p)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)


def client(step: str, conn: Conn, timeout: float, **args: Any) -> dict[str, Any]:
    """Run one client step (:mod:`.clients`) in a child process; its JSON result or an error."""
    spec = json.dumps({"step": step, "conn": conn.as_dict(), "args": args})
    r = run([sys.executable, "-m", "scripts.bench.clients", spec], timeout=timeout, cwd=str(REPO))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(
            short_error(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.stdout, 300)
        )
    return dict(json.loads(lines[-1]))


# ------------------------------------------------------------------------------- connections


@dataclass
class Conn:
    """How clients reach a server: TCP host/port (or a Unix socket directory as host)."""

    host: str
    port: int
    password: str | None = None
    user: str = "postgres"
    dbname: str = "postgres"

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "password": self.password,
            "user": self.user,
            "dbname": self.dbname,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Conn:
        return Conn(**d)

    def conninfo(self) -> str:
        parts = [
            f"host={self.host}",
            f"port={self.port}",
            f"user={self.user}",
            f"dbname={self.dbname}",
        ]
        if self.password:
            parts.append(f"password={self.password}")
        if not self.host.startswith("/"):
            parts += ["sslmode=disable", "gssencmode=disable"]
        return " ".join(parts)

    def sqlalchemy_url(self) -> str:
        from urllib.parse import quote

        auth = self.user + (f":{quote(self.password, safe='')}" if self.password else "")
        if self.host.startswith("/"):
            return f"postgresql+psycopg://{auth}@/{self.dbname}?host={self.host}&port={self.port}"
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{self.dbname}?sslmode=disable&gssencmode=disable"

    def pg_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGDATABASE=self.dbname
        )
        env.update(PGSSLMODE="disable", PGGSSENCMODE="disable")
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def select1(conn: Conn, timeout: float = 5.0) -> None:
    import psycopg

    with psycopg.connect(
        conn.conninfo(), connect_timeout=max(1, int(timeout)), autocommit=True
    ) as c:
        c.execute("SELECT 1").fetchone()


def wait_sql(conn: Conn, deadline: float, alive: Callable[[], bool] | None = None) -> float:
    """Retry until a new connection answers SELECT 1; returns the monotonic time it did."""
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server exited before it answered SELECT 1 ({last})")
        try:
            select1(conn, timeout=max(1.0, min(5.0, deadline - time.monotonic())))
            return time.monotonic()
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.005)
    raise TimeoutError(f"no SELECT 1 answer in time: {short_error(last or 'no attempt')}")


# ------------------------------------------------------------------------------- memory, CPU


def _procs(pids: list[int]) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
        except psutil.Error:
            continue
        found[p.pid] = p
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                found[c.pid] = c
    return list(found.values())


def memory_of(pids: list[int]) -> dict[str, float] | None:
    """RSS and PSS (MiB) summed over the processes and their children."""
    procs = _procs(pids)
    if not procs:
        return None
    rss = pss = 0
    parts: list[dict[str, Any]] = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            full = p.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
            parts.append({"name": p.name(), **_pss_split(p.pid)})
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "processes": len(procs), "parts": parts}


def _pss_split(pid: int) -> dict[str, float]:
    """PSS of one process split into anonymous memory (heaps, WASM memory and code) and file
    pages (the executable and libraries), in MiB, from /proc/PID/smaps_rollup (Linux)."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Pss_Anon", "Pss_File"):
            out[key.lower() + "_mb"] = int(rest.split()[0]) / 1024
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes (all threads) and their children so far: live children
    by their own times, reaped ones (PostgreSQL's backends of closed connections) through their
    parent's children times."""
    total = 0.0
    for p in _procs(pids):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
            if p.pid in pids:
                total += t.children_user + t.children_system
    return total


@dataclass
class Handle:
    """A running server: where it listens, its pids, and how to stop it."""

    conn: Conn
    pids: Callable[[], list[int]]
    stop: Callable[[], None]
    info: dict[str, Any] = field(default_factory=dict)


def wait_line(
    path: Path, needle: str, proc: subprocess.Popen[Any], deadline: float, offset: int = 0
) -> str:
    """Tail a log file from ``offset`` until a line contains ``needle`` (server output goes to a
    file, never a pipe that could fill up)."""
    buf = b""
    while True:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
            offset += len(chunk)
            buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            if needle in text:
                return text
        if proc.poll() is not None:
            tail = path.read_text(errors="replace")[-400:] if path.exists() else ""
            raise RuntimeError(f"exited with status {proc.returncode}: {short_error(tail, 300)}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {needle!r} line in time")
        time.sleep(0.003)
