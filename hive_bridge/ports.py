"""Who listens on a TCP port (for the "port already in use" error), as far as psutil can see."""

from __future__ import annotations

import contextlib
import ipaddress

import psutil

__all__ = ["port_owner"]

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _same_host(listening: str, wanted: str) -> bool:
    if listening in _WILDCARDS or wanted in _WILDCARDS or listening == wanted:
        return True
    with contextlib.suppress(ValueError):
        a, b = ipaddress.ip_address(listening), ipaddress.ip_address(wanted)
        if a == b:
            return True
        mapped = getattr(a, "ipv4_mapped", None)
        return mapped is not None and mapped == b
    return wanted == "localhost" and listening in ("127.0.0.1", "::1")


def port_owner(host: str, port: int) -> tuple[int, str | None] | None:
    """``(pid, process name)`` of a process listening on ``host:port``; ``None`` if not visible
    (nobody listens, or the owner belongs to another user and we are not root)."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return None
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.pid is None:
            continue
        if conn.laddr.port == port and _same_host(conn.laddr.ip, host):
            try:
                name: str | None = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = None
            return conn.pid, name
    return None
