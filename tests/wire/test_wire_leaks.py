"""No per-client state leaks through the one shared backend session (issue 14, item 1).

A client changes its session (SET, SET SESSION CHARACTERISTICS, set_config() in a simple or a prepared
statement or inside a function, startup options, SET LOCAL, SET in a transaction it rolls back) and then
leaves in every way a client can (Terminate, socket drop, in a transaction, in a COPY, after an error,
in an unfinished extended-protocol batch) or stays connected. No other client, old or new, may ever see
any of it, and nothing it did not commit may become visible. A randomised run of many clients with
their own settings checks each client sees exactly its own settings at every turn.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from wire_support import RawConn, WireServer, message, query_message

#: what every client must see unless it changed it itself
BASELINE = {
    "default_transaction_read_only": "off",
    "default_transaction_isolation": "read committed",
    "search_path": "public",
    "statement_timeout": "0",
    "work_mem": "4MB",
    "transaction_read_only": "off",
}
CHECK_SQL = "SELECT " + ", ".join(f"current_setting('{k}')" for k in BASELINE)

#: every way to change the session the test knows (name -> SQL run on a raw connection)
POLLUTE_SQL = {
    "set": "SET default_transaction_read_only = on; SET search_path = pg_catalog",
    "characteristics": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, "
    "ISOLATION LEVEL SERIALIZABLE",
    "set_config": "SELECT set_config('default_transaction_read_only', 'on', false), "
    "set_config('work_mem', '7MB', false)",
    "function": "SELECT hb_leak_setter()",
    "commit_set": "BEGIN; SET statement_timeout = '123s'; "
    "SET default_transaction_isolation = 'serializable'; COMMIT",
}


@pytest.fixture(scope="module")
def server(server_factory: Any) -> Iterator[WireServer]:
    """A server of this module's own: a failure here poisons its session settings."""
    server = server_factory.start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE leak_rows (id int)")
        # a function that changes a setting inside: no SET or set_config in the statement it runs
        conn.execute(
            "CREATE FUNCTION hb_leak_setter() RETURNS text LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM set_config('default_transaction_read_only', 'on', false); RETURN 'x'; END $$"
        )
    yield server
    server.stop()


def _check_baseline(conn: psycopg.Connection[Any], where: str) -> None:
    row = conn.execute(CHECK_SQL).fetchone()
    assert row is not None
    seen = dict(zip(BASELINE, row, strict=True))
    assert seen == BASELINE, f"{where}: saw another client's settings {seen}"
    # and it can write: no read-only state of anybody else's reached it
    conn.execute("INSERT INTO leak_rows SELECT NULL WHERE false")


def _raw(server: WireServer, **params: str) -> RawConn:
    raw = RawConn(server.port, timeout=20)
    msgs = raw.start(**params)
    assert msgs[-1][0] == b"Z"
    return raw


def _simple(raw: RawConn, sql: str) -> list[tuple[bytes, bytes]]:
    raw.send(query_message(sql))
    return raw.read_until_ready()


def _parse_bind_execute(sql: str) -> bytes:
    return (
        message(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))
        + message(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0))
        + message(b"E", b"\0" + struct.pack("!i", 0))
    )


def _leave(raw: RawConn, how: str) -> None:
    """Leave the connection in one of the ways a client can."""
    try:
        _prepare_leave(raw, how)
    finally:
        raw.close()


def _prepare_leave(raw: RawConn, how: str) -> None:
    if how == "terminate":
        raw.send(message(b"X"))
        raw.read_to_eof(timeout=20)
    elif how == "drop":
        pass
    elif how == "mid_transaction":
        out = _simple(raw, "BEGIN READ WRITE; INSERT INTO public.leak_rows VALUES (1)")
        assert out[-1] == (b"Z", b"T"), out
    elif how == "after_error":
        assert _simple(raw, "BEGIN; SELECT 1/0")[-1] == (b"Z", b"E")
    elif how == "mid_copy":
        raw.send(query_message("COPY public.leak_rows FROM STDIN"))
        assert raw.read_message()[0] == b"G"
        raw.send(message(b"d", b"1\n"))
    elif how == "terminate_mid_copy":
        raw.send(query_message("COPY public.leak_rows FROM STDIN"))
        assert raw.read_message()[0] == b"G"
        raw.send(message(b"d", b"1\n") + message(b"X"))
        raw.read_to_eof(timeout=20)
    elif how == "mid_batch":
        # Parse/Bind/Execute of an INSERT and no Sync: PostgreSQL rolls it back when the client goes
        raw.send(_parse_bind_execute("INSERT INTO public.leak_rows VALUES (2)"))
    else:  # pragma: no cover - a typo in the parametrisation
        raise AssertionError(how)


LEAVES = [
    "terminate",
    "drop",
    "mid_transaction",
    "after_error",
    "mid_copy",
    "terminate_mid_copy",
    "mid_batch",
]


@pytest.mark.parametrize("method", sorted(POLLUTE_SQL))
def test_a_leaving_client_leaves_nothing(server: WireServer, method: str) -> None:
    restarts = server.stats()["backend_restarts"]
    with psycopg.connect(server.dsn, autocommit=True) as observer:
        _check_baseline(observer, "before")
        for how in LEAVES:
            raw = _raw(server)
            out = _simple(raw, POLLUTE_SQL[method])
            assert not [m for m in out if m[0] == b"E"], out
            # while it is still connected and idle, nobody else sees its settings
            _check_baseline(observer, f"{method}: while the polluter is connected")
            _leave(raw, how)
            _check_baseline(observer, f"{method}, then left by {how}: an old client")
            with psycopg.connect(server.dsn, autocommit=True) as fresh:
                _check_baseline(fresh, f"{method}, then left by {how}: a new client")
        # nothing a leaving client did not commit became visible
        assert observer.execute("SELECT count(*) FROM leak_rows").fetchone() == (0,)
    # and no way of leaving crashed the engine under everyone (a Terminate inside a COPY did)
    assert server.stats()["backend_restarts"] == restarts


def test_prepared_set_config_and_startup_options_stay_with_their_client(
    server: WireServer,
) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as observer:
        # set_config() in a prepared statement: the later executions are a bare Bind/Execute
        with psycopg.connect(server.dsn, autocommit=True, prepare_threshold=0) as prep:
            for value in ("on", "off", "on"):
                prep.execute(
                    "SELECT set_config('default_transaction_read_only', %s, false)", [value]
                )
                _check_baseline(observer, f"prepared set_config({value})")
                seen = prep.execute("SHOW default_transaction_read_only").fetchone()
                assert seen == (value,), "the client lost its own setting"
        _check_baseline(observer, "after the prepared set_config client left")
        options = "-c default_transaction_read_only=on -c work_mem=9MB"
        with psycopg.connect(server.dsn, autocommit=True, options=options) as opt:
            assert opt.execute("SHOW work_mem").fetchone() == ("9MB",)
            _check_baseline(observer, "startup options")
            assert opt.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        _check_baseline(observer, "after the startup-options client left")


def test_transaction_scoped_settings_end_with_the_transaction(server: WireServer) -> None:
    """SET LOCAL, and SET in a transaction rolled back, are not the client's session settings."""
    with (
        psycopg.connect(server.dsn, autocommit=True) as client,
        psycopg.connect(server.dsn, autocommit=True) as other,
    ):
        with client.transaction():
            client.execute("SET LOCAL statement_timeout = '77s'")
            client.execute("SET LOCAL default_transaction_read_only = on")
        client.execute("BEGIN")
        client.execute("SET work_mem = '5MB'")
        client.execute("SET search_path = pg_catalog")
        client.execute("ROLLBACK")
        client.execute("BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE")
        client.execute("SELECT 1")
        client.execute("ROLLBACK")
        for _ in range(3):  # hand the backend back and forth
            _check_baseline(other, "the other client")
            _check_baseline(client, "the client itself after its transactions ended")


def _random_setting(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(
        [
            "default_transaction_read_only",
            "default_transaction_isolation",
            "work_mem",
            "search_path",
        ]
    )
    value = {
        "default_transaction_read_only": rng.choice(["on", "off"]),
        "default_transaction_isolation": rng.choice(
            ["read committed", "repeatable read", "serializable"]
        ),
        "work_mem": f"{rng.randint(1, 64)}MB",
        "search_path": rng.choice(["public", "pg_catalog", "information_schema"]),
    }[name]
    return name, value


def test_many_clients_with_random_settings_each_see_their_own(server: WireServer) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    checked = (
        "default_transaction_read_only",
        "default_transaction_isolation",
        "work_mem",
        "search_path",
    )
    sql = "SELECT " + ", ".join(f"current_setting('{k}')" for k in checked)

    class Client:
        def __init__(self) -> None:
            self.conn = psycopg.connect(server.dsn, autocommit=True)
            self.expected = {k: BASELINE[k] for k in checked}

        def change(self) -> None:
            name, value = _random_setting(rng)
            how = rng.choice(["set", "set_config", "local", "rollback"])
            if how == "set":
                self.conn.execute(f"SET {name} = '{value}'")
                self.expected[name] = value
            elif how == "set_config":
                self.conn.execute("SELECT set_config(%s, %s, false)", [name, value])
                self.expected[name] = value
            else:
                with self.conn.transaction(force_rollback=how == "rollback"):
                    scope = "LOCAL " if how == "local" else ""
                    self.conn.execute(f"SET {scope}{name} = '{value}'")

        def check(self, step: int) -> None:
            row = self.conn.execute(sql).fetchone()
            assert row is not None
            seen = dict(zip(checked, row, strict=True))
            assert seen == self.expected, (
                f"seed {seed}, step {step}: expected {self.expected}, saw {seen}"
            )

    clients = [Client() for _ in range(6)]
    try:
        for step in range(150):
            c = rng.choice(clients)
            roll = rng.random()
            if roll < 0.35:
                c.change()
            elif roll < 0.45:
                c.conn.close()
                clients[clients.index(c)] = Client()
                continue
            c.check(step)
    finally:
        for c in clients:
            c.conn.close()
    with psycopg.connect(server.dsn, autocommit=True) as fresh:
        _check_baseline(fresh, f"seed {seed}: a new client after the run")
