"""One data dir, one server, many users: application processes share the server a detached
supervisor runs for them; it stops when the last of them is gone, SIGKILLed ones included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from helpers import FAST, node_pids_for, pid_gone, run_cli, supervisor_pids, wait_until

from hive_bridge import Bridge, SupervisorOptions
from hive_bridge.leases import live_users
from hive_bridge.paths import read_password
from hive_bridge.statefile import read_live_state

#: an application: the HIVE_* engine API, then one SQL statement per stdin line, result on stdout
APP = textwrap.dedent(
    """
    import json, os, socket, sys, threading, time
    import hive_bridge
    from sqlalchemy import text

    if sys.argv[1:] == ["thread"]:  # an app with another thread is not forked: it spawns
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    listener = socket.create_server(("127.0.0.1", 0))  # the app's own socket: never the server's
    engine = hive_bridge.create_engine()
    bridge = hive_bridge.auto_bridge()
    status = bridge.status()
    print(json.dumps({"pid": os.getpid(), "port": bridge.port, "attached": bridge.attached,
                      "supervisor": status["supervisor_pid"], "node": status["node_pid"],
                      "origin": status["origin"], "app_port": listener.getsockname()[1]}),
          flush=True)
    if sys.argv[1:] == ["fork"]:  # a worker that outlives its parent (gunicorn, multiprocessing)
        child = os.fork()
        if child == 0:
            time.sleep(600)
            os._exit(0)
        print(json.dumps({"child": child}), flush=True)
    for line in sys.stdin:
        with engine.begin() as conn:
            result = conn.execute(text(line))
            print(json.dumps(result.scalar() if result.returns_rows else None), flush=True)
    """
)

#: how long an on-demand server may take to notice that its users are gone and stop
IDLE = SupervisorOptions().idle_grace + 2 * SupervisorOptions().idle_check_interval


class App:
    """An application process using ``data_dir`` through ``hive_bridge.create_engine()``."""

    def __init__(self, data_dir: Path, *args: str, wait: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", APP, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=next(p for p in data_dir.parents if p.is_dir()),
            env={**os.environ, "HIVE_DATABASE_URL": f"pglite://{data_dir}"},
        )
        self.pid = self.proc.pid
        self.info: dict[str, Any] = {}
        if wait:
            self.ready()

    def ready(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the application failed (exit {self.proc.wait()})"
        self.info = json.loads(line)
        return self.info

    def read(self) -> Any:
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())

    def sql(self, statement: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(statement + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> int:
        """End it normally (atexit runs): returns its exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def apps() -> Any:
    started: list[App] = []

    def start(data_dir: Path, *args: str, wait: bool = True) -> App:
        app = App(data_dir, *args, wait=wait)
        started.append(app)
        return app

    yield start
    for app in started:
        if app.proc.poll() is None:
            app.kill()


def users_of(data_dir: Path) -> set[int]:
    return {lease.pid for lease in live_users(Path(f"{data_dir}.bridge") / "users", clean=False)}


def supervisors_of(data_dir: Path) -> list[int]:
    return supervisor_pids(data_dir)


def server_gone(data_dir: Path) -> bool:
    state = read_live_state(Path(f"{data_dir}.bridge") / "state.json", clean=False)
    return state is None and not node_pids_for(data_dir) and not supervisors_of(data_dir)


def direct_dsn(data_dir: Path) -> str:
    """The server's DSN from its state file, without registering as a user."""
    run_dir = Path(f"{data_dir}.bridge")
    state = read_live_state(run_dir / "state.json")
    assert state is not None and state.port
    password = read_password(run_dir / "password")
    return f"postgresql://postgres:{password}@127.0.0.1:{state.port}/postgres?sslmode=disable"


def keeps_answering(query: Callable[[], bool], seconds: float = IDLE) -> None:
    """The server keeps serving for longer than it would take to stop for want of users."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert query()
        time.sleep(0.2)


# ---------------------------------------------------------------------------------- users


def test_the_server_runs_outside_the_app_that_started_it(fresh_data_dir: Path, apps: Any) -> None:
    app = apps(fresh_data_dir)
    supervisor = psutil.Process(app.info["supervisor"])
    assert supervisor.pid != app.pid
    assert supervisor.name() == "hive-supervise"  # forked from the app: one Python start
    assert supervisor.ppid() != app.pid  # detached: not the app's child, never its zombie
    # forked, it kept none of the app's descriptors: the app's listening socket is the app's alone
    held = [c.laddr.port for c in supervisor.net_connections() if c.laddr]
    assert app.info["app_port"] not in held
    assert 0 <= supervisor.num_fds() <= 12, supervisor.open_files()
    assert app.info["origin"] == "auto"
    assert app.info["attached"] is True
    assert node_pids_for(fresh_data_dir) == [app.info["node"]]
    assert users_of(fresh_data_dir) == {app.pid}
    assert app.close() == 0
    assert users_of(fresh_data_dir) == set()  # removed at exit
    wait_until(lambda: server_gone(fresh_data_dir), timeout=10, what="the server to stop")


def test_an_app_with_threads_spawns_its_supervisor(fresh_data_dir: Path, apps: Any) -> None:
    """Forking copies other threads' locks mid-use: such an app starts a separate interpreter."""
    app = apps(fresh_data_dir, "thread")
    supervisor = psutil.Process(app.info["supervisor"])
    assert supervisor.cmdline()[1:4] == ["-m", "hive_bridge", "supervise"]
    assert supervisor.ppid() != app.pid
    assert app.sql("SELECT 41 + 1") == 42
    assert app.close() == 0
    wait_until(lambda: server_gone(fresh_data_dir), timeout=IDLE + 10, what="the server to stop")


@pytest.mark.parametrize("first_ends", ["exit", "kill"])
def test_second_app_keeps_the_server_when_the_first_ends(
    fresh_data_dir: Path, apps: Any, first_ends: str
) -> None:
    first = apps(fresh_data_dir)
    second = apps(fresh_data_dir)
    assert second.info["port"] == first.info["port"]
    assert second.info["supervisor"] == first.info["supervisor"]
    assert node_pids_for(fresh_data_dir) == [first.info["node"]]
    assert users_of(fresh_data_dir) == {first.pid, second.pid}
    first.sql("CREATE TABLE shared_rows (x int)")
    assert second.sql("INSERT INTO shared_rows VALUES (1) RETURNING x") == 1

    if first_ends == "exit":
        assert first.close() == 0
    else:
        first.kill()  # its lease stays behind until the supervisor finds it stale
    wait_until(lambda: users_of(fresh_data_dir) == {second.pid}, timeout=10, what="one user left")
    keeps_answering(lambda: second.sql("SELECT count(*) FROM shared_rows") == 1)
    assert node_pids_for(fresh_data_dir) == [first.info["node"]]  # never restarted

    second.kill()
    # ~4 s (idle_grace plus a look or two); the limit only says it stops by itself, under any load
    wait_until(lambda: server_gone(fresh_data_dir), timeout=60, what="the server to stop")
    assert users_of(fresh_data_dir) == set()
    assert os.listdir(Path(f"{fresh_data_dir}.bridge") / "users") == []  # stale lease removed


def test_sigkill_of_the_only_user_stops_the_server(tmp_path: Path, apps: Any) -> None:
    """The orphan guarantee for auto-started servers: nothing runs on once the app is gone."""
    data_dir = tmp_path / "new" / "app.db"  # does not exist yet: created from the template
    app = apps(data_dir)
    node, supervisor = app.info["node"], app.info["supervisor"]
    assert app.sql("SELECT 40 + 2") == 42
    app.kill()
    # ~4 s; the limit only says nothing runs on for good, under any load
    wait_until(lambda: pid_gone(node) and pid_gone(supervisor), timeout=60, what="node to exit")
    wait_until(lambda: server_gone(data_dir), timeout=30, what="the state file to go")
    # and the data dir opens again
    with Bridge(data_dir, options=FAST) as bridge:
        assert not bridge.attached


def test_a_forked_worker_is_a_user_too(fresh_data_dir: Path, apps: Any) -> None:
    parent = apps(fresh_data_dir, "fork")
    child = parent.read()["child"]
    try:
        wait_until(
            lambda: users_of(fresh_data_dir) == {parent.pid, child}, what="the child's lease"
        )
        parent.kill()
        wait_until(lambda: users_of(fresh_data_dir) == {child}, timeout=10, what="parent gone")
        dsn = direct_dsn(fresh_data_dir)

        def answers() -> bool:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        keeps_answering(answers)
    finally:
        os.kill(child, signal.SIGKILL)
    wait_until(lambda: server_gone(fresh_data_dir), timeout=10, what="the server to stop")


def test_racing_starters_end_with_one_server(tmp_path: Path, apps: Any) -> None:
    data_dir = tmp_path / "raced.db"
    racers = [apps(data_dir, wait=False) for _ in range(4)]
    infos = [racer.ready() for racer in racers]
    assert len({info["port"] for info in infos}) == 1
    assert len({info["supervisor"] for info in infos}) == 1
    assert node_pids_for(data_dir) == [infos[0]["node"]]
    assert supervisors_of(data_dir) == [infos[0]["supervisor"]]
    racers[0].sql("CREATE TABLE raced (x int)")
    for i, racer in enumerate(racers):
        racer.sql(f"INSERT INTO raced VALUES ({i}) RETURNING x")
    assert racers[-1].sql("SELECT count(*) FROM raced") == 4
    for racer in racers:
        assert racer.close() == 0
    wait_until(lambda: server_gone(data_dir), timeout=10, what="the server to stop")


def test_an_explicit_bridge_that_attaches_is_a_user(fresh_data_dir: Path, apps: Any) -> None:
    app = apps(fresh_data_dir)
    bridge = Bridge(fresh_data_dir, options=FAST).start()
    try:
        assert bridge.attached
        assert bridge.port == app.info["port"]
        assert os.getpid() in bridge.status()["users"]
        assert app.close() == 0

        def answers() -> bool:
            with psycopg.connect(bridge.dsn, connect_timeout=5) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        keeps_answering(answers)
    finally:
        bridge.stop()  # the last user leaves
    wait_until(lambda: server_gone(fresh_data_dir), timeout=10, what="the server to stop")


# ---------------------------------------------------------------------------- with the CLI


def test_cli_started_server_runs_until_stop_whoever_uses_it(
    fresh_data_dir: Path, apps: Any
) -> None:
    start = run_cli("start", "--data-dir", str(fresh_data_dir))
    assert start.returncode == 0, start.stderr
    app = apps(fresh_data_dir)
    assert app.info["origin"] == "cli"
    assert f":{app.info['port']}/" in start.stdout
    assert app.close() == 0
    keeps_answering(lambda: run_cli("status", "--data-dir", str(fresh_data_dir)).returncode == 0)

    other = apps(fresh_data_dir)  # a user attached right now does not keep it from stopping
    stop = run_cli("stop", "--data-dir", str(fresh_data_dir))
    assert stop.returncode == 0, stop.stderr
    assert server_gone(fresh_data_dir)
    other.kill()


def test_cli_start_pins_a_server_applications_started(fresh_data_dir: Path, apps: Any) -> None:
    app = apps(fresh_data_dir)
    start = run_cli("start", "--data-dir", str(fresh_data_dir))
    assert start.returncode == 0, start.stderr
    assert "now runs until hive-bridge stop" in start.stderr
    assert f":{app.info['port']}/" in start.stdout
    report = json.loads(run_cli("status", "--json", "--data-dir", str(fresh_data_dir)).stdout)
    assert report["origin"] == "cli"
    assert report["supervisor_pid"] == app.info["supervisor"]
    assert report["users"] == [app.pid]
    assert app.close() == 0
    keeps_answering(lambda: run_cli("status", "--data-dir", str(fresh_data_dir)).returncode == 0)
    assert run_cli("stop", "--data-dir", str(fresh_data_dir)).returncode == 0
    assert server_gone(fresh_data_dir)


def test_stop_leaves_an_on_demand_server_alone_unless_forced(
    fresh_data_dir: Path, apps: Any
) -> None:
    app = apps(fresh_data_dir)
    refused = run_cli("stop", "--data-dir", str(fresh_data_dir))
    assert refused.returncode == 1
    assert "started on demand for applications" in refused.stderr
    assert f"processes using it: {app.pid}" in refused.stderr
    assert f"hive-bridge stop --force --data-dir {fresh_data_dir}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert node_pids_for(fresh_data_dir) == [app.info["node"]]

    forced = run_cli("stop", "--force", "--data-dir", str(fresh_data_dir))
    assert forced.returncode == 0, forced.stderr
    assert server_gone(fresh_data_dir)
    assert app.proc.poll() is None  # the application itself was not signalled
