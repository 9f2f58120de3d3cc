"""Client of the Node server's loopback admin endpoint (``/health``, ``/stats`` with short timeouts;
``POST /backup``, ``GET /clients`` and ``POST /terminate`` with the password as a bearer token)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "get_clients",
    "get_health",
    "get_health_report",
    "get_stats",
    "post_backup",
    "post_terminate",
]

DEFAULT_TIMEOUT = 1.0

# httpx is imported where it is used: it is ~10 % of what `hive-bridge start` and an app's
# create_engine() would otherwise import, and a healthy start never calls the admin endpoint


def _get(host: str, port: int, path: str, timeout: float) -> tuple[int, dict[str, Any]] | None:
    import httpx

    url = f"http://{_loopback(host)}:{port}{path}"
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = client.get(url)
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return response.status_code, data if isinstance(data, dict) else {}


def _loopback(host: str) -> str:
    # the admin endpoint listens on 127.0.0.1 only
    return "127.0.0.1" if host in ("", "0.0.0.0", "localhost") else host


def get_health(
    port: int, *, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """``"ok"``, ``"starting"``, ``"stopping"`` … as reported by ``/health``; ``None`` if unreachable."""
    result = _get(host, port, "/health", timeout)
    if result is None:
        return None
    status = result[1].get("status")
    return str(status) if status is not None else ("ok" if result[0] == 200 else "unknown")


def get_health_report(
    port: int, *, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any] | None:
    """The whole ``/health`` JSON (``status`` and what the backend is doing: ``backend``,
    ``running_ms``, ``holder`` …) whatever its HTTP status; ``None`` if Node did not answer."""
    result = _get(host, port, "/health", timeout)
    return None if result is None else result[1]


def get_stats(
    port: int, *, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any] | None:
    """The ``/stats`` JSON (connections, queries_served, rss_bytes, …) or ``None`` if unreachable."""
    result = _get(host, port, "/stats", timeout)
    if result is None or result[0] != 200:
        return None
    return result[1]


def post_backup(
    port: int, path: str, password: str | None, *, timeout: float = 600.0
) -> tuple[int, dict[str, Any]]:
    """Ask the server for a consistent snapshot written to ``path`` (absolute).

    Returns ``(HTTP status, JSON body)``: 200 ``{"path","bytes","ms","pglite_version"}``, 401 without
    the right password, 409 ``{"error"}`` on failure. Raises :class:`httpx.HTTPError` if the endpoint
    cannot be reached or does not answer within ``timeout``.
    """
    import httpx

    headers = {"Authorization": f"Bearer {password}"} if password else {}
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=2.0), trust_env=False) as client:
        response = client.post(
            f"http://127.0.0.1:{port}/backup", json={"path": path}, headers=headers
        )
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text[:500]}
    return response.status_code, data if isinstance(data, dict) else {}


def _authorized(
    method: str, port: int, path: str, password: str | None, timeout: float, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    import httpx

    headers = {"Authorization": f"Bearer {password}"} if password else {}
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=2.0), trust_env=False) as client:
        response = client.request(
            method, f"http://127.0.0.1:{port}{path}", headers=headers, **kwargs
        )
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text[:500]}
    return response.status_code, data if isinstance(data, dict) else {}


def get_clients(
    port: int, password: str | None, *, timeout: float = 5.0
) -> tuple[int, dict[str, Any]]:
    """``GET /clients``: ``(200, {"clients": [{pid, application_name, address, state, …}]})``, or 401
    without the right password. Raises :class:`httpx.HTTPError` if the endpoint does not answer."""
    return _authorized("GET", port, "/clients", password, timeout)


def post_terminate(
    port: int, pid: int, password: str | None, *, timeout: float = 5.0
) -> tuple[int, dict[str, Any]]:
    """``POST /terminate {"pid": N}``: 200 ``{"terminated": N}``, 404 no such client, 401 without the
    right password. Raises :class:`httpx.HTTPError` if the endpoint does not answer."""
    return _authorized("POST", port, "/terminate", password, timeout, json={"pid": pid})
