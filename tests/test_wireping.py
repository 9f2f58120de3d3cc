"""The supervisor's own SELECT 1 probe (hive_bridge.wireping): it authenticates with SCRAM as a
driver would, and a wrong answer is an error, never a false "healthy"."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit, urlunsplit

import pytest

from hive_bridge.bridge import Bridge
from hive_bridge.readiness import ping
from hive_bridge.wireping import PingError, ping_select1


def _with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_ping_answers_through_scram(shared_bridge: Bridge) -> None:
    connect, query = ping_select1(shared_bridge.dsn, 30.0)
    assert connect > 0 and query > 0
    assert ping(shared_bridge.dsn, 30.0) > 0


def test_wrong_password_is_refused_with_postgres_code(shared_bridge: Bridge) -> None:
    with pytest.raises(PingError) as info:
        ping_select1(_with_password(shared_bridge.dsn, "not-the-password"), 30.0)
    assert info.value.sqlstate == "28P01"


def test_a_listener_that_never_answers_times_out() -> None:
    # a hung server accepts the TCP connection (the kernel does) and then says nothing
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        accepted: list[socket.socket] = []
        t = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
        t.start()
        with pytest.raises(TimeoutError):
            ping_select1(f"postgresql://postgres:pw@127.0.0.1:{port}/postgres", 0.5)
        t.join()
        for c in accepted:
            c.close()
