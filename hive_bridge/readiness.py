"""Is the Node server really up? One deadline, three checks, polled every ~15 ms.

Before every probe: did the child die? (then raise with its exit status, its error JSON and the log
tail). Then: has it printed ``{"event":"ready",…}`` (read from this spawn's offset in the log)? Then:
does ``SELECT 1`` through the wire answer? :func:`ping` is also the supervisor's health check, so it
is built to never hang: a blocking standard-library client with one deadline (:mod:`.wireping`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import BridgeStartError, DataDirError, PortInUseError, display_path
from .ports import port_owner
from .process import NodeProcess, read_log_tail
from .wireping import TooManyClients, ping_select1

__all__ = [
    "DATA_DIR_CODES",
    "NON_RETRYABLE_CODES",
    "ReadyInfo",
    "StartCancelled",
    "parse_events",
    "ping",
    "wait_ready",
]

log = logging.getLogger("hive_bridge.readiness")

POLL_INTERVAL = 0.015
#: after the ready line, SELECT 1 must answer within this many seconds
ANSWER_WITHIN = 10.0
#: node error codes a retry cannot fix (see bridge-js/README.md)
NON_RETRYABLE_CODES = frozenset(
    {"bad_args", "data_dir_invalid", "lock_required", "version_mismatch", "extension_missing"}
)
#: node error codes that mean "this data dir cannot be opened" (a DataDirError)
DATA_DIR_CODES = frozenset(
    {"data_dir_invalid", "version_mismatch", "extension_missing", "open_failed"}
)

_REASONS = {
    "bad_args": "the server rejected its command line",
    "port_in_use": "the port is already in use",
    "data_dir_invalid": "the path cannot be used as a data dir",
    "lock_required": "the server does not hold the data dir lock",
    "version_mismatch": "it was written by another PGlite version",
    "extension_missing": "it uses extensions the server was not started with",
    "open_failed": "PGlite failed to open the database in it",
}
_FIXES = {
    "version_mismatch": (
        "keep it as it is; upgrade by dump and restore: open it with the hive-bridge / PGlite "
        "version that made it, dump it with a pg_dump at least as new as its PostgreSQL "
        '(pg_dump "$(hive-bridge url --data-dir OLD)" > dump.sql) and load the dump into a new '
        'data dir of this version (psql "$(hive-bridge url --data-dir NEW)" -f dump.sql); or '
        "point HIVE_DATABASE_URL at another data dir"
    ),
    "open_failed": (
        "read the server log for PGlite's reason; if the data dir is damaged, restore your last "
        "backup into a new data dir (hive-bridge restore BACKUP --data-dir NEW) and point "
        "HIVE_DATABASE_URL at it. Do not delete the old one until the new one works"
    ),
}


class StartCancelled(Exception):
    """The start was abandoned because a stop was requested."""


@dataclass(frozen=True)
class ReadyInfo:
    """The server's ready line, as parsed."""

    pid: int
    host: str
    port: int
    admin_port: int | None
    pglite_version: str | None
    postgres_version: str | None
    extensions: tuple[str, ...]
    startup_ms: float | None
    socket_dir: str | None = None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ReadyInfo:
        admin = event.get("admin_port")
        startup = event.get("startup_ms")
        return cls(
            pid=int(event.get("pid") or 0),
            host=str(event.get("host") or "127.0.0.1"),
            port=int(event["port"]),
            admin_port=int(admin) if isinstance(admin, int) and admin > 0 else None,
            pglite_version=_opt_str(event.get("pglite_version")),
            postgres_version=_opt_str(event.get("postgres_version")),
            extensions=tuple(str(e) for e in event.get("extensions") or ()),
            startup_ms=float(startup) if isinstance(startup, int | float) else None,
            socket_dir=_opt_str(event.get("socket_dir")),
            raw=event,
        )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def parse_events(text: str) -> list[dict[str, Any]]:
    """The ``{"event": …}`` JSON lines in server output (other lines are ignored)."""
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            events.append(obj)
    return events


# ------------------------------------------------------------------------------------ ping


def ping(dsn: str, timeout: float = 2.0) -> float:
    """Connect, run ``SELECT 1``, disconnect; return the seconds it took.

    Raises whatever failed (``TimeoutError``, ``OSError``, :class:`~.wireping.PingError`). Blocking,
    works from any thread, and never takes much longer than ``timeout`` (one deadline for the whole
    exchange). All connection slots taken (53300) counts as an answer: the server is alive and busy,
    not hung, and restarting it would drop every one of those connections.
    """
    start = time.monotonic()
    parts = urlsplit(dsn)
    try:
        connect, query = ping_select1(dsn, timeout)
    except TooManyClients:
        log.debug(
            "ping %s:%s: all connection slots in use (53300); the server answers",
            parts.hostname,
            parts.port,
        )
        return time.monotonic() - start
    log.debug(
        "ping %s:%s: connect %.1f ms, SELECT 1 %.1f ms",
        parts.hostname,
        parts.port,
        connect * 1000,
        query * 1000,
    )
    return connect + query


# ------------------------------------------------------------------------------- readiness


def start_error(
    proc: NodeProcess,
    *,
    reason: str | None = None,
    exit_code: int | None = None,
) -> BridgeStartError:
    """Build the error for a failed start from the child's exit status, error JSON and log tail."""
    spec = proc.spec
    data_dir = display_path(spec.data_dir)
    tail = read_log_tail(spec.log_path, 40, proc.log_offset)
    error_event = next(
        (e for e in reversed(parse_events(proc.read_output())) if e.get("event") == "error"), None
    )
    code = _opt_str(error_event.get("code")) if error_event else None
    message = _opt_str(error_event.get("message")) if error_event else None
    hint = _opt_str(error_event.get("hint")) if error_event else None
    if code == "port_in_use":
        owner = port_owner(spec.host, spec.port) if spec.port else None
        return PortInUseError(
            data_dir=data_dir,
            host=spec.host,
            port=spec.port,
            log_path=str(spec.log_path),
            log_tail=tail,
            exit_code=exit_code,
            node_message=message,
            owner_pid=owner[0] if owner else None,
            owner_name=owner[1] if owner else None,
        )
    if reason is None:
        reason = _REASONS.get(code or "") or (
            f"the server exited before it was ready (status {exit_code})"
        )
    cls = DataDirError if code in DATA_DIR_CODES and spec.data_dir is not None else BridgeStartError
    return cls(
        data_dir=data_dir,
        reason=reason,
        log_path=str(spec.log_path),
        log_tail=tail,
        exit_code=exit_code,
        code=code,
        node_message=message,
        hint=hint,
        fix=_FIXES.get(code or "") or hint,
    )


def wait_ready(
    proc: NodeProcess,
    *,
    dsn_for: Callable[[str, int], str],
    deadline: float,
    cancelled: Callable[[], bool] = lambda: False,
    poll_interval: float = POLL_INTERVAL,
    answer_within: float = ANSWER_WITHIN,
) -> ReadyInfo:
    """Wait until ``proc`` printed its ready line and answers ``SELECT 1``, all before ``deadline``.

    ``deadline`` is a :func:`time.monotonic` value; ``dsn_for(host, port)`` builds the DSN to ping.
    Once the ready line is out, ``SELECT 1`` must answer within ``answer_within`` seconds (a server
    that listens but does not answer is hung, waiting longer would not help).
    Raises :class:`BridgeStartError` (or :class:`PortInUseError`) on death or timeout and
    :class:`StartCancelled` when ``cancelled()`` turns true. The caller kills the child on failure.
    """
    start = time.monotonic()
    ready: ReadyInfo | None = None
    ready_at: float | None = None
    offset = proc.log_offset
    pending = b""
    last_ping_error: BaseException | None = None
    log.debug("readiness: waiting for pid %d (deadline in %.1fs)", proc.pid, deadline - start)
    while True:
        if cancelled():
            raise StartCancelled()
        status = proc.poll()
        if status is not None:
            log.debug("readiness: pid %d exited with status %s", proc.pid, status)
            raise start_error(proc, exit_code=status)
        now = time.monotonic()
        if ready_at is not None and now - ready_at >= answer_within:
            raise start_error(
                proc,
                reason=(
                    f"it printed its ready line but did not answer SELECT 1 within "
                    f"{answer_within:.1f}s (last error: {last_ping_error!r})"
                ),
            )
        if now >= deadline:
            waited = now - start
            if ready is None:
                reason = f"it printed no ready line within {waited:.1f}s"
            else:
                reason = (
                    f"it printed its ready line but did not answer SELECT 1 within {waited:.1f}s "
                    f"(last error: {last_ping_error!r})"
                )
            raise start_error(proc, reason=reason)
        if ready is None:
            chunk, offset = _read_from(proc.spec.log_path, offset)
            pending += chunk
            lines, _, pending = pending.rpartition(b"\n")
            for event in parse_events(lines.decode("utf-8", "replace")):
                if event.get("event") == "ready" and "port" in event:
                    ready = ReadyInfo.from_event(event)
                    ready_at = time.monotonic()
                    log.debug(
                        "readiness: ready line after %.0f ms (port %d, admin %s, node startup %s ms)",
                        (time.monotonic() - start) * 1000,
                        ready.port,
                        ready.admin_port,
                        ready.startup_ms,
                    )
                    break
        if ready is not None:
            try:
                budget = min(2.0, deadline - now, answer_within - (now - (ready_at or now)))
                took = ping(dsn_for(ready.host, ready.port), max(0.1, budget))
            except Exception as exc:  # any failure means "not yet"
                last_ping_error = exc
                log.debug("readiness: SELECT 1 not answered yet: %r", exc)
            else:
                log.debug(
                    "readiness: SELECT 1 answered in %.1f ms; ready after %.0f ms",
                    took * 1000,
                    (time.monotonic() - start) * 1000,
                )
                return ready
        time.sleep(poll_interval)


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)
