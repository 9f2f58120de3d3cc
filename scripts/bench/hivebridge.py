"""hive-bridge as users run it (``hive-bridge start``, an app's ``create_engine()``, the in-process
``Bridge``) for start times, and its Node server run directly (Liftoff-only or V8's default tiering)
for the workloads, so both WASM compilers are measured on the same server code in one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    JS_DIR,
    NODE_MODULES,
    REG,
    REPO,
    Conn,
    Handle,
    json_version,
    log,
    memory_of,
    run,
    short_error,
    stop_proc,
    wait_line,
)

CLI = Path(sys.executable).parent / "hive-bridge"

#: an application: time from before ``import hive_bridge`` to the first query's answer
APP = """
import json, sys, time
t0 = time.perf_counter()
import hive_bridge
from sqlalchemy import text
engine = hive_bridge.create_engine()
with engine.connect() as conn:
    conn.execute(text("SELECT 1")).scalar()
took = time.perf_counter() - t0
status = hive_bridge.auto_bridge().status()
info = {"seconds": took, "supervisor": status["supervisor_pid"], "node": status["node_pid"]}
print(json.dumps(info), flush=True)
sys.stdin.read()
"""


class HiveBridge:
    """The start paths of hive-bridge; ``env`` is what every one of them runs with."""

    name = "hive-bridge"

    def __init__(self, work: Path) -> None:
        self.cache = work / "hb-template-cache"
        self.env = {
            **os.environ,
            "HIVE_BRIDGE_CACHE_DIR": str(self.cache),
            "HIVE_LOG_LEVEL": "WARNING",
        }
        self.template_build_s: float | None = None

    def setup(self) -> None:
        """Build the data-dir template once (timed: the one-off cost on a new machine), and
        byte-compile the package as ``pip install`` does: this checkout is an editable install, and
        where PYTHONDONTWRITEBYTECODE is set (as on the CI machines) every start would compile it."""
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "hive_bridge")], check=True
        )
        t0 = time.monotonic()
        r = run(
            ["node", str(JS_DIR / "server.js"), "--prepare-template"], timeout=300, env=self.env
        )
        if r.returncode != 0:
            raise RuntimeError(short_error(r.stdout + r.stderr, 300))
        self.template_build_s = time.monotonic() - t0
        log(
            self.name,
            f"data-dir template built in {self.template_build_s:.2f} s (once per machine)",
        )

    # ---- hive-bridge start -> first SELECT 1 ------------------------------------------------
    def start_cli(self, data_dir: Path) -> tuple[float, dict[str, Any]]:
        t0 = time.monotonic()
        r = run([str(CLI), "start", "--data-dir", str(data_dir)], timeout=120, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(short_error(r.stderr, 300))
        import psycopg

        with psycopg.connect(r.stdout.strip(), autocommit=True) as c:
            c.execute("SELECT 1").fetchone()
        took = time.monotonic() - t0
        state = json.loads(Path(f"{data_dir}.bridge/state.json").read_text())
        time.sleep(1.0)  # idle: what it costs to keep it running
        mem = memory_of([state["supervisor_pid"]])  # the supervisor and its Node child
        r = run([str(CLI), "stop", "--data-dir", str(data_dir)], timeout=60, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"hive-bridge stop: {short_error(r.stderr, 300)}")
        return took, {"idle": mem}

    # ---- an app: create_engine() -> first query ----------------------------------------------
    def start_app(self, data_dir: Path) -> tuple[float, dict[str, Any]]:
        env = {**self.env, "HIVE_DATABASE_URL": f"pglite://{data_dir}"}
        t0 = time.monotonic()
        p = subprocess.Popen(
            [sys.executable, "-c", APP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(data_dir.parent),
            start_new_session=True,
        )
        REG.procs.append(p)
        try:
            assert p.stdout is not None
            line = p.stdout.readline()
            whole = time.monotonic() - t0
            if not line:
                raise RuntimeError(f"the app failed (exit {p.wait(30)})")
            info = json.loads(line)
        finally:
            stop_proc(p, wait=30)  # closes stdin: the app exits, its server stops after it
        self._wait_stopped(data_dir)
        return float(info["seconds"]), {"process_s": whole}

    def _wait_stopped(self, data_dir: Path) -> None:
        from hive_bridge.lock import is_locked

        lock = Path(f"{data_dir}.bridge/lock")
        deadline = time.monotonic() + 60
        while is_locked(lock):
            if time.monotonic() > deadline:
                raise TimeoutError("the app's server did not stop after the app exited")
            time.sleep(0.05)

    # ---- in-process Bridge -------------------------------------------------------------------
    def start_bridge(self, data_dir: Path) -> tuple[float, dict[str, Any]]:
        from hive_bridge import Bridge

        old = os.environ.get("HIVE_BRIDGE_CACHE_DIR")
        os.environ["HIVE_BRIDGE_CACHE_DIR"] = str(self.cache)
        try:
            t0 = time.monotonic()
            b = Bridge(data_dir, log_level="ERROR")
            b.start()
            try:
                import psycopg

                with psycopg.connect(b.dsn, autocommit=True) as c:
                    c.execute("SELECT 1").fetchone()
                took = time.monotonic() - t0
                ms = (
                    b.supervisor.ready_info.startup_ms
                    if b.supervisor and b.supervisor.ready_info
                    else None
                )
            finally:
                b.stop()
        finally:
            if old is None:
                os.environ.pop("HIVE_BRIDGE_CACHE_DIR", None)
            else:
                os.environ["HIVE_BRIDGE_CACHE_DIR"] = old
        return took, {"node_startup_ms": ms}

    def versions(self) -> dict[str, Any]:
        return {
            "pglite": json_version(NODE_MODULES / "@electric-sql/pglite/package.json"),
            "pglite_pgvector": json_version(
                NODE_MODULES / "@electric-sql/pglite-pgvector/package.json"
            ),
            "template_build_s": self.template_build_s,
        }


class HiveBridgeServer:
    """The Node server alone (no supervisor), ``--fast-wasm`` or Liftoff-only: a workload target."""

    vector = True
    copy = True
    pgbench_init_steps: str | None = None

    def __init__(self, hb: HiveBridge, tiering: str) -> None:
        self.hb = hb
        self.tiering = tiering  # "liftoff" or "tiered"
        self.name = f"hive-bridge/{tiering}"

    def start(self, data_dir: Path, deadline: float) -> Handle:
        sock = data_dir.parent / f"{data_dir.name}.sock"
        sock.mkdir(mode=0o700, exist_ok=True)
        # the flag goes on node's command line, as the supervisor passes it (Node 24 ignores it
        # when server.js sets it at run time); --fast-wasm keeps server.js from setting it
        flags = ["--liftoff-only"] if self.tiering == "liftoff" else []
        argv = ["node", *flags, str(JS_DIR / "server.js"), "--data-dir", str(data_dir), "--no-lock"]
        argv += ["--port", "0", "--admin-port=-1", "--log-level", "warn", "--socket-dir", str(sock)]
        if self.tiering == "tiered":
            argv.append("--fast-wasm")
        log_path = data_dir.parent / f"{data_dir.name}.node.log"
        with open(log_path, "ab") as out:
            offset = out.seek(0, 2)  # the same data dir's log is appended to by every start
            p = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(JS_DIR),
                start_new_session=True,
                env=self.hb.env,
            )
        REG.procs.append(p)
        ready = json.loads(wait_line(log_path, '"event":"ready"', p, deadline, offset))
        port = int(ready["port"])
        return Handle(
            conn=Conn("127.0.0.1", port),
            pids=lambda: [p.pid] if p.poll() is None else [],
            stop=lambda: stop_proc(p),
            info={"unix": Conn(str(sock), port), "ready": ready},
        )

    def versions(self) -> dict[str, Any]:
        return {}


__all__ = ["REPO", "HiveBridge", "HiveBridgeServer"]
