"""``hive-bridge clients`` and ``hive-bridge terminate PID``: the clients of a running server.

PGlite is one backend session, so ``pg_stat_activity`` and ``pg_terminate_backend()`` only see that
one session. The Node front end knows each client by the pid it gave it in BackendKeyData (what
``PQbackendPID()``, psycopg's ``conn.info.backend_pid`` and asyncpg's ``get_server_pid()`` return);
its admin endpoint lists them (``GET /clients``) and ends one (``POST /terminate``) as
``pg_terminate_backend()`` would: FATAL 57P01, its transaction rolled back, others unaffected.
"""

from __future__ import annotations

import shlex
import time
from datetime import datetime
from typing import Any

from .admin import get_clients, post_terminate
from .errors import ClientError
from .paths import RunPaths, read_password
from .statefile import BridgeState

__all__ = ["format_clients", "list_clients", "terminate_client"]


def _call(action: str, paths: RunPaths, state: BridgeState, fn: Any, *args: Any) -> Any:
    import httpx  # only when asked: the CLI imports this module for every command

    q = shlex.quote(str(paths.data_dir))
    if state.admin_port is None:
        raise ClientError(
            action=action,
            data_dir=str(paths.data_dir),
            problem=f"the server (pid {state.node_pid}) has no admin endpoint to ask",
            fix=f"restart it with hive-bridge (hive-bridge stop/start --data-dir {q})",
        )
    try:
        status, body = fn(state.admin_port, *args, read_password(paths.password))
    except httpx.HTTPError as exc:
        raise ClientError(
            action=action,
            data_dir=str(paths.data_dir),
            problem=f"the admin endpoint 127.0.0.1:{state.admin_port} did not answer "
            f"({type(exc).__name__}: {exc})",
            fix=f"check the server with: hive-bridge status --data-dir {q}",
        ) from exc
    if status == 401:
        raise ClientError(
            action=action,
            data_dir=str(paths.data_dir),
            problem=f"the server refused the password in {paths.password} (HTTP 401)",
            fix=f"the password file changed after the server started; restart it "
            f"(hive-bridge stop/start --data-dir {q})",
        )
    return status, body


def list_clients(paths: RunPaths, state: BridgeState) -> list[dict[str, Any]]:
    """Every connected client (``GET /clients``), by pid."""
    status, body = _call("clients", paths, state, get_clients)
    clients = body.get("clients")
    if status != 200 or not isinstance(clients, list):
        raise ClientError(
            action="clients",
            data_dir=str(paths.data_dir),
            problem=f"the server answered HTTP {status}: {body.get('error', body)}",
            fix=f"see its log {paths.server_log}",
        )
    return [c for c in clients if isinstance(c, dict)]


def terminate_client(paths: RunPaths, state: BridgeState, pid: int) -> None:
    """End client ``pid`` as ``pg_terminate_backend()`` would; :class:`ClientError` if none."""
    status, body = _call("terminate", paths, state, post_terminate, pid)
    if status == 404:
        raise ClientError(
            action="terminate",
            data_dir=str(paths.data_dir),
            problem=f"no client with pid {pid} is connected",
            fix=f"list the clients and their pids with: hive-bridge clients --data-dir "
            f"{shlex.quote(str(paths.data_dir))}",
        )
    if status != 200:
        raise ClientError(
            action="terminate",
            data_dir=str(paths.data_dir),
            problem=f"the server answered HTTP {status}: {body.get('error', body)}",
            fix=f"see its log {paths.server_log}",
        )


def _ago(iso: object, now: float) -> str:
    if not isinstance(iso, str):
        return "-"
    try:
        seconds = now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "-"
    return f"{max(seconds, 0):.1f}s"


def _role(client: dict[str, Any]) -> str:
    if client.get("holding"):
        return "holding"
    if client.get("parked"):
        return "parked"
    if client.get("waiting"):
        return "waiting"
    return "-"


def format_clients(clients: list[dict[str, Any]], now: float | None = None) -> str:
    """A table: pid, application_name, address, state, holding/parked/waiting, since, last statement."""
    now = time.time() if now is None else now
    header = ("PID", "APPLICATION", "ADDRESS", "STATE", "BACKEND", "SINCE", "LAST STATEMENT")
    rows = [header]
    for c in clients:
        last = " ".join(str(c.get("last_statement") or "").split())
        rows.append(
            (
                str(c.get("pid")),
                str(c.get("application_name") or "-"),
                str(c.get("address") or "-"),
                str(c.get("state") or "-"),
                _role(c),
                _ago(c.get("since") or c.get("connected_at"), now),
                (last[:60] + "…") if len(last) > 60 else (last or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1]
        for r in rows
    ]
    lines.append(f"{len(clients)} client(s)")
    return "\n".join(lines)
