"""Lifecycle with real processes: restarts after crash and hang, no orphans, one opener per data
dir, failures that explain themselves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psutil
import psycopg
import pytest
import sqlalchemy
from helpers import FAST, REPO, node_pids_for, pid_gone, run_cli, wait_until

from hive_bridge import (
    Bridge,
    BridgeFatalError,
    BridgeStartError,
    DataDirError,
    DataDirLockedError,
    HiveBridgeError,
    PortInUseError,
    State,
)
from hive_bridge.engines import PGLITE_ENGINE_DEFAULTS

StartBridge = Callable[..., Bridge]


def query(dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def wait_restarted(bridge: Bridge, old_pid: int, timeout: float = 90) -> int:
    def restarted() -> int | None:
        pid = bridge.node_pid
        if bridge.state == State.RUNNING.value and pid is not None and pid != old_pid:
            return pid
        return None

    return wait_until(restarted, timeout=timeout, what=f"a new RUNNING server after pid {old_pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- persistence


def test_data_survives_stop_and_start(fresh_data_dir: Path, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fresh_data_dir)
    query(bridge.dsn, "CREATE TABLE kept (id int PRIMARY KEY, note text)")
    query(bridge.dsn, "INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 500) g")
    password = bridge.password
    bridge.stop()
    assert not bridge.running
    assert node_pids_for(fresh_data_dir) == []

    again = start_bridge(fresh_data_dir)
    assert again.password == password  # stored in the run dir, reused
    assert query(again.dsn, "SELECT count(*), max(note) FROM kept") == [(500, "row 99")]


def test_in_memory_bridge(start_bridge: StartBridge) -> None:
    bridge = start_bridge(None)
    assert bridge.memory
    query(bridge.dsn, "CREATE TABLE scratch (x int)")
    query(bridge.dsn, "INSERT INTO scratch VALUES (7)")
    assert query(bridge.dsn, "SELECT x FROM scratch") == [(7,)]
    assert bridge.paths is not None
    run_dir = bridge.paths.run_dir
    assert run_dir.is_dir()
    bridge.stop()
    assert not run_dir.exists()


# ---------------------------------------------------------------------- crash and hang


def test_crash_is_restarted_on_the_same_dsn(
    fresh_data_dir: Path, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fresh_data_dir)
    dsn = bridge.dsn
    query(dsn, "CREATE TABLE survivors (id int)")
    query(dsn, "INSERT INTO survivors SELECT generate_series(1, 100)")
    engine = sqlalchemy.create_engine(bridge.sqlalchemy_url, **PGLITE_ENGINE_DEFAULTS)
    with engine.connect() as conn:  # a pooled connection that the crash will break
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    old = bridge.node_pid
    assert old is not None

    os.kill(old, signal.SIGKILL)
    new = wait_restarted(bridge, old)

    assert bridge.dsn == dsn  # same port, same password
    assert query(dsn, "SELECT count(*) FROM survivors") == [(100,)]
    with engine.connect() as conn:  # pre-ping replaced the broken pooled connection
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM survivors")).scalar() == 100
    engine.dispose()
    assert bridge.status()["restarts"] == 1
    assert pid_gone(old)
    assert node_pids_for(fresh_data_dir) == [new]


def test_hang_is_detected_by_the_health_check(
    fresh_data_dir: Path, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fresh_data_dir)
    dsn = bridge.dsn
    query(dsn, "CREATE TABLE before_hang (id int)")
    old = bridge.node_pid
    assert old is not None

    os.kill(old, signal.SIGSTOP)  # port stays open, SQL is dead
    new = wait_restarted(bridge, old)

    assert pid_gone(old)
    assert bridge.dsn == dsn
    assert query(dsn, "SELECT count(*) FROM before_hang") == [(0,)]
    assert node_pids_for(fresh_data_dir) == [new]


# ----------------------------------------------------------------------------- orphans

PARENT = textwrap.dedent(
    """
    import os, sys, time
    from hive_bridge import Bridge
    bridge = Bridge(sys.argv[1]).start()
    if sys.argv[2] == "fork" and os.fork() == 0:
        time.sleep(600)  # a forked worker that outlives its parent
    print(bridge.node_pid, bridge.dsn, flush=True)
    if sys.argv[2] in ("sleep", "fork"):
        time.sleep(600)
    else:
        sys.stdin.read()  # until the test closes our stdin
        bridge.stop()
    """
)


def spawn_parent(data_dir: Path, mode: str) -> tuple[subprocess.Popen[str], int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(data_dir), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line, f"the parent script failed (exit {proc.wait()})"
    return proc, int(line[0]), line[1]


@pytest.mark.parametrize("mode", ["sleep", "fork"])
def test_no_orphan_when_the_python_parent_is_killed(fresh_data_dir: Path, mode: str) -> None:
    """Also when the parent forked a worker that lives on (multiprocessing, gunicorn --preload):
    the worker must not hold Node's stdin pipe or the data-dir lock."""
    parent, node_pid, dsn = spawn_parent(fresh_data_dir, mode)
    assert query(dsn, "SELECT 1") == [(1,)]
    workers = psutil.Process(parent.pid).children()
    assert len(workers) == (2 if mode == "fork" else 1)  # node (+ the forked worker)

    parent.kill()  # SIGKILL: no atexit, no finally, nothing runs in Python
    parent.wait()

    wait_until(lambda: pid_gone(node_pid), timeout=30, what=f"node {node_pid} to exit")
    assert node_pids_for(fresh_data_dir) == []
    # and the data dir is free again
    with Bridge(fresh_data_dir, options=FAST) as bridge:
        assert not bridge.attached
        assert query(bridge.dsn, "SELECT 2") == [(2,)]
    for worker in workers:
        if worker.pid != node_pid:
            worker.kill()
            worker.wait(5)


# ------------------------------------------------------------------- one opener per dir


def test_second_process_attaches_and_never_opens_twice(fresh_data_dir: Path) -> None:
    owner, node_pid, owner_dsn = spawn_parent(fresh_data_dir, "stdin")
    try:
        bridge = Bridge(fresh_data_dir, options=FAST).start()
        assert bridge.attached
        assert bridge.dsn == owner_dsn
        assert bridge.node_pid == node_pid
        assert node_pids_for(fresh_data_dir) == [node_pid]
        query(bridge.dsn, "CREATE TABLE shared_by_two (x int)")
        assert query(owner_dsn, "SELECT count(*) FROM shared_by_two") == [(0,)]
        status = bridge.status()
        assert status["attached"] is True
        assert status["pid"] == owner.pid
        bridge.stop()  # only detaches
        assert query(owner_dsn, "SELECT 1") == [(1,)]
        watcher = Bridge(fresh_data_dir, options=FAST).start()
        assert watcher.attached and watcher.running

        with pytest.raises(DataDirLockedError) as info:
            Bridge(fresh_data_dir, attach=False, options=FAST).start()
        assert info.value.owner_pid == owner.pid
        assert f"in use by process {owner.pid}" in str(info.value)

        # the CLI will not stop a server an application runs (it would only be restarted)
        result = run_cli("stop", "--data-dir", str(fresh_data_dir))
        assert result.returncode == 1
        assert f"started by the application in process {owner.pid}" in result.stderr
        assert "hive-bridge stop --force" in result.stderr
        assert not pid_gone(node_pid)
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        assert owner.wait(30) == 0
    assert pid_gone(node_pid)
    assert not watcher.running  # its server went away with the owner


# ------------------------------------------------------------------- ports, addresses


def test_port_in_use_fails_at_once_with_a_clear_error(
    fresh_data_dir: Path, start_bridge: StartBridge
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            start_bridge(fresh_data_dir, port=port)
    error = info.value
    # at once: one attempt, no retries (a taken port does not free itself)
    server_log = (fresh_data_dir.parent / "hive.db.bridge" / "server.log").read_text()
    assert server_log.count('"code":"port_in_use"') == 1
    assert error.port == port
    assert error.code == "port_in_use"
    assert f"port 127.0.0.1:{port} is already in use" in str(error)
    assert '"code":"port_in_use"' in error.log_tail
    assert node_pids_for(fresh_data_dir) == []


def test_a_data_dir_keeps_its_port(fresh_data_dir: Path, start_bridge: StartBridge) -> None:
    first = start_bridge(fresh_data_dir)
    dsn = first.dsn
    port_file = fresh_data_dir.parent / "hive.db.bridge" / "port"
    assert port_file.read_text().strip() == str(first.port)
    first.stop()
    again = start_bridge(fresh_data_dir)
    assert again.dsn == dsn
    assert query(dsn, "SELECT 1") == [(1,)]


def test_a_taken_recorded_port_falls_back_to_a_new_one(
    fresh_data_dir: Path, start_bridge: StartBridge, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented fallback: another program took the port meanwhile; the server starts on a new
    one (recorded from then on) and says so at WARNING."""
    first = start_bridge(fresh_data_dir)
    old = first.port
    first.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        again = start_bridge(fresh_data_dir)
        assert again.port != old
        assert query(again.dsn, "SELECT 1") == [(1,)]
    port_file = fresh_data_dir.parent / "hive.db.bridge" / "port"
    assert port_file.read_text().strip() == str(again.port)
    assert f"port 127.0.0.1:{old}, recorded for data dir" in caplog.text
    assert "is taken" in caplog.text


SHARED_APP = textwrap.dedent(
    """
    import sys
    import hive_bridge
    from sqlalchemy import text, make_url
    engine = hive_bridge.create_engine()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    def port(url):  # TCP (…:PORT/…) or the Unix socket (…?host=DIR&port=PORT)
        return url.port or url.query["port"]
    print(port(engine.url), flush=True)
    sys.stdin.readline()  # the test SIGKILLs the shared supervisor meanwhile
    # what the app does next: its next create_engine()/database_url() starts a new supervisor
    print(port(make_url(hive_bridge.database_url())), flush=True)
    with engine.connect() as conn:  # the engine made before the kill
        print(conn.execute(text("SELECT 42")).scalar(), flush=True)
    """
)


def test_an_engine_survives_a_killed_shared_supervisor(fresh_data_dir: Path) -> None:
    """SIGKILL of the supervisor applications share: the next one gets the same port, so engines
    built before still connect."""
    env = {**os.environ, "HIVE_DATABASE_URL": f"pglite://{fresh_data_dir}"}
    app = subprocess.Popen(
        [sys.executable, "-c", SHARED_APP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert app.stdin is not None and app.stdout is not None
    try:
        port = int(app.stdout.readline())
        state = json.loads((fresh_data_dir.parent / "hive.db.bridge" / "state.json").read_text())
        os.kill(state["supervisor_pid"], signal.SIGKILL)
        wait_until(lambda: pid_gone(state["node_pid"]), timeout=60, what="node to exit")
        app.stdin.write("go\n")
        app.stdin.flush()
        assert int(app.stdout.readline()) == port  # the new supervisor's server
        assert app.stdout.readline().strip() == "42"  # the old engine got through
    finally:
        app.stdin.close()
        assert app.wait(60) == 0


def test_fixed_port(fresh_data_dir: Path, start_bridge: StartBridge) -> None:
    port = free_port()
    bridge = start_bridge(fresh_data_dir, port=port)
    assert bridge.port == port
    assert f"@127.0.0.1:{port}/" in bridge.dsn
    assert query(bridge.dsn, "SELECT 3") == [(3,)]


# ------------------------------------------------------------------------- logging

LOGGING_SCRIPT = textwrap.dedent(
    """
    import sys
    from hive_bridge import Bridge
    with Bridge(sys.argv[1]) as bridge:
        print(bridge.node_pid, flush=True)
    """
)


def run_logging_script(data_dir: Path, level: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HIVE_LOG_LEVEL": level},
    )


def test_debug_logging_shows_node_output_and_readiness(fresh_data_dir: Path) -> None:
    result = run_logging_script(fresh_data_dir, "DEBUG")
    assert result.returncode == 0, result.stderr
    pid = result.stdout.strip()
    log = result.stderr
    assert "spawn argv: " in log and "server.js --data-dir" in log and "--lock-fd" in log
    assert "readiness: ready line after" in log
    assert "readiness: SELECT 1 answered in" in log
    assert "hive-bridge: STOPPED -> STARTING" in log
    assert "success: hive-bridge entered RUNNING state" in log
    assert f"node[{pid}]: " in log
    assert f'node[{pid}]: {{"event":"ready"' in log
    assert f"node[{pid}]: INFO shutting down" in log


def test_info_logging_is_quiet(fresh_data_dir: Path) -> None:
    result = run_logging_script(fresh_data_dir, "INFO")
    assert result.returncode == 0, result.stderr
    assert "spawned: 'hive-bridge' with pid" in result.stderr
    assert "node[" not in result.stderr
    assert "readiness:" not in result.stderr


# ------------------------------------------------------------ failures via a fake node

FAKE_NODE = """#!{python}
import json, os, sys, time
if sys.argv[1:] == ["--version"]:
    print("v20.0.0")
    sys.exit(0)
with open(os.environ["FAKE_NODE_SPAWNS"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
mode = os.environ["FAKE_NODE_MODE"]
print("INFO fake node starting", file=sys.stderr, flush=True)
if mode == "silent":
    time.sleep(600)
if mode == "crash":  # dies before it is ready, without an error line: worth a retry
    print("ERROR fake node crashed", file=sys.stderr, flush=True)
    sys.exit(70)
code = {{"open_failed": 1, "bad_args": 2}}[mode]
print(json.dumps({{"event": "error", "code": mode, "message": "fake " + mode, "hint": "fake hint"}}))
sys.exit(code)
"""


@pytest.fixture
def fake_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    node = tmp_path / "bin" / "node"
    node.parent.mkdir()
    node.write_text(FAKE_NODE.format(python=sys.executable))
    node.chmod(0o755)
    spawns = tmp_path / "spawns.txt"
    monkeypatch.setenv("FAKE_NODE_SPAWNS", str(spawns))
    monkeypatch.setenv("HIVE_BRIDGE_NODE", str(node))

    def use(mode: str) -> Path:
        monkeypatch.setenv("FAKE_NODE_MODE", mode)
        return spawns

    return use


def test_a_failed_first_start_leaves_no_run_dir_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIVE_BRIDGE_NODE", str(tmp_path / "no-such-node"))
    data_dir = tmp_path / "new" / "app.db"
    with pytest.raises(HiveBridgeError):
        Bridge(data_dir, options=FAST).start()
    assert sorted(p.name for p in data_dir.parent.iterdir()) == []


def test_failing_start_is_retried_then_fatal(
    fake_node: Callable[[str], Path], tmp_path: Path
) -> None:
    spawns = fake_node("crash")
    bridge = Bridge(tmp_path / "db", options=replace(FAST, startretries=2))
    with pytest.raises(BridgeFatalError) as info:
        bridge.start()
    error = info.value
    assert len(spawns.read_text().splitlines()) == 3  # first try + 2 retries
    assert error.attempts == 3
    assert error.exit_code == 70
    message = str(error)
    assert "gave up" in message and "too many start retries too quickly" in message
    assert "ERROR fake node crashed" in message  # the log tail
    assert "INFO fake node starting" in error.log_tail
    assert not bridge.running


def test_data_dir_that_cannot_be_opened_fails_at_once(
    fake_node: Callable[[str], Path], tmp_path: Path
) -> None:
    """open_failed on a first start: retrying the same data dir would only cost time."""
    spawns = fake_node("open_failed")
    bridge = Bridge(tmp_path / "db", options=replace(FAST, startretries=2))
    with pytest.raises(DataDirError) as info:
        bridge.start()
    error = info.value
    assert len(spawns.read_text().splitlines()) == 1
    assert (error.exit_code, error.code) == (1, "open_failed")
    message = str(error)
    assert message.startswith(f"hive-bridge: cannot open data dir {tmp_path / 'db'}: ")
    assert "Node said: fake open_failed" in message
    assert "Hint: fake hint" in message
    assert f"Nothing in {tmp_path / 'db'} was changed or deleted." in message
    assert "hive-bridge restore BACKUP --data-dir NEW" in message
    assert not bridge.running


def test_non_retryable_error_is_not_retried(
    fake_node: Callable[[str], Path], tmp_path: Path
) -> None:
    spawns = fake_node("bad_args")
    with pytest.raises(BridgeStartError) as info:
        Bridge(tmp_path / "db", options=FAST).start()
    assert not isinstance(info.value, BridgeFatalError)
    assert len(spawns.read_text().splitlines()) == 1
    assert (info.value.exit_code, info.value.code) == (2, "bad_args")
    assert "the server rejected its command line" in str(info.value)


def test_server_that_never_gets_ready_is_killed(
    fake_node: Callable[[str], Path], tmp_path: Path
) -> None:
    spawns = fake_node("silent")
    options = replace(FAST, start_timeout=1.0, startretries=0)
    with pytest.raises(BridgeFatalError) as info:
        Bridge(tmp_path / "db", options=options).start()
    assert "printed no ready line within 1.0s" in str(info.value)
    argv = spawns.read_text().split()
    assert argv[:2] == ["--liftoff-only", str(REPO / "bridge-js" / "server.js")]  # V8 flag, server
    # the state file is gone: nobody will try to attach to a start that failed
    assert not (tmp_path / "db.bridge" / "state.json").exists()
