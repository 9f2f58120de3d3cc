"""Sessions for operators (issue 14, item 6): every client has a stable pid (its BackendKeyData), the
admin endpoint lists clients (GET /clients) and terminates one (POST /terminate) as PostgreSQL's
pg_terminate_backend() does: FATAL 57P01 for that client, its transaction rolled back, others go on."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from wire_support import WireServer, wait_until

PASSWORD = "operator-secret"


@pytest.fixture(scope="module")
def server(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireServer]:
    pw_file = tmp_path_factory.mktemp("clients") / "password"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    server = server_factory.start(password_file=pw_file)
    yield server
    server.stop()


def _dsn(server: WireServer, app: str) -> str:
    return server.dsn_for(password=PASSWORD, application_name=app)


def _admin(
    server: WireServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: bool = True,
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {PASSWORD}"} if token else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _clients(server: WireServer) -> dict[int, dict[str, Any]]:
    status, body = _admin(server, "GET", "/clients")
    assert status == 200, body
    return {c["pid"]: c for c in body["clients"]}


def test_clients_need_the_password(server: WireServer) -> None:
    assert _admin(server, "GET", "/clients", token=False)[0] == 401
    assert _admin(server, "POST", "/terminate", {"pid": 1}, token=False)[0] == 401


def test_clients_list_each_client_by_its_backend_pid(server: WireServer, unique: Any) -> None:
    table = unique("clients_list")
    with (
        psycopg.connect(_dsn(server, "alpha"), autocommit=True) as alpha,
        psycopg.connect(_dsn(server, "beta")) as beta,
    ):
        alpha.execute(f"CREATE TABLE {table} (id int)")
        beta.execute(f"INSERT INTO {table} VALUES (1)")  # beta stays inside its transaction
        a_pid, b_pid = alpha.info.backend_pid, beta.info.backend_pid
        assert a_pid != b_pid
        clients = _clients(server)
        a, b = clients[a_pid], clients[b_pid]
        assert a["application_name"] == "alpha"
        assert b["application_name"] == "beta"
        assert a["address"].startswith("127.0.0.1:")
        assert f"CREATE TABLE {table}" in a["last_statement"]
        assert f"INSERT INTO {table}" in b["last_statement"]
        assert a["state"] == "idle" and not a["holding"]
        assert b["state"] == "idle in transaction" and b["holding"]
        assert b["since"] is not None
        beta.commit()
        assert _clients(server)[b_pid]["state"] == "idle"
        # the pid is stable: the same connection keeps it
        alpha.execute("SELECT 1")
        assert alpha.info.backend_pid == a_pid
        assert _clients(server)[a_pid]["last_statement"] == "SELECT 1"
        alpha.execute(f"DROP TABLE {table}")
    wait_until(lambda: a_pid not in _clients(server), what="closed clients to leave the list")


def test_terminate_idle_in_transaction_rolls_back_and_spares_others(
    server: WireServer, unique: Any
) -> None:
    table = unique("terminated")
    with psycopg.connect(_dsn(server, "other"), autocommit=True) as other:
        other.execute(f"CREATE TABLE {table} (id int)")
        victim = psycopg.connect(_dsn(server, "victim"))
        try:
            victim.execute(f"INSERT INTO {table} VALUES (1)")
            pid = victim.info.backend_pid
            status, body = _admin(server, "POST", "/terminate", {"pid": pid})
            assert (status, body) == (200, {"terminated": pid})
            with pytest.raises(errors.AdminShutdown) as info:
                victim.execute("SELECT 1")
            assert info.value.sqlstate == "57P01"
            assert "terminating connection due to administrator command" in str(info.value)
            assert victim.closed or victim.broken
        finally:
            victim.close()
        # its transaction was rolled back; the others go on
        assert other.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        other.execute(f"DROP TABLE {table}")
        assert pid not in _clients(server)
        status, body = _admin(server, "POST", "/terminate", {"pid": pid})
        assert status == 404 and str(pid) in body["error"]
        assert _admin(server, "POST", "/terminate", {"pid": "x"})[0] == 400


def test_terminate_a_running_statement(server: WireServer) -> None:
    restarts = server.stats()["backend_restarts"]
    victim = psycopg.connect(_dsn(server, "sleeper"), autocommit=True)
    outcome: list[BaseException] = []

    def sleep() -> None:
        try:
            victim.execute("SELECT pg_sleep(60)")
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=sleep)
    thread.start()
    try:
        pid = victim.info.backend_pid
        wait_until(lambda: _clients(server).get(pid, {}).get("state") == "active", timeout=20)
        assert _admin(server, "POST", "/terminate", {"pid": pid})[0] == 200
        thread.join(30)
        assert not thread.is_alive(), "the terminated statement was not stopped"
    finally:
        victim.close()
        thread.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.AdminShutdown), outcome
    # the worker was replaced to stop pg_sleep; everyone else still gets answers
    assert server.stats()["backend_restarts"] == restarts + 1
    with psycopg.connect(_dsn(server, "after")) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
