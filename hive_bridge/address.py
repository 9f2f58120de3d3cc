"""A data dir's stable TCP port: picked at its first start, recorded in ``<run dir>/port``, reused.

A DSN saved in an ``.env`` file, a pgAdmin bookmark or an engine built before a restart keeps working
across ``hive-bridge stop``/``start``, ``make run`` and a new shared supervisor. The first port is a
free one *below* the OS's ephemeral range, so outgoing connections (which take their local ports from
that range) cannot be holding it when the server starts again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import tempfile
from pathlib import Path

__all__ = ["StablePort", "pick_port", "read_port", "record_port"]

log = logging.getLogger("hive_bridge.address")

#: where a first port is looked for, when the ephemeral range cannot be read
_FALLBACK_RANGE = (20000, 32767)


def read_port(path: Path) -> int | None:
    """The recorded port, or ``None`` (no record, or not a port number)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) <= 65535 else None


def record_port(path: Path, port: int) -> None:
    """Write ``port`` atomically (a reader never sees half a number)."""
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(f"{port}\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_RANGE[1] + 1
    return low


def _free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Node binds it
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, attempts: int = 50) -> int:
    """A free port below the ephemeral range (``0`` - the OS picks - if none is found)."""
    high = min(_ephemeral_low() - 1, 65535)
    low = _FALLBACK_RANGE[0] if high > _FALLBACK_RANGE[0] + 1000 else 1024
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.randint(low, high)
        if _free(host, port):
            return port
    return 0


class StablePort:
    """The port of one supervised server: ``configured`` (``HIVE_BRIDGE_PORT``) if not 0, else the
    one recorded in ``port_file`` (``None`` for an in-memory database: nothing is kept)."""

    def __init__(self, configured: int, port_file: Path | None, host: str) -> None:
        self.port_file = port_file
        self.host = host
        self.port = configured
        self.recorded = False
        if not configured and port_file is not None:
            found = read_port(port_file)
            self.port, self.recorded = found or 0, found is not None

    def for_spawn(self) -> int:
        """The port to start on; a data dir's first start picks (and will record) one here."""
        if not self.port and self.port_file is not None:
            self.port = pick_port(self.host)
        return self.port

    def served(self, port: int) -> None:
        """The server listens on ``port``: remember it, and record it for the next start."""
        self.port = port
        if self.port_file is None or self.recorded:
            return
        try:
            record_port(self.port_file, port)
        except OSError as exc:
            log.warning("cannot record the port in %s: %s", self.port_file, exc)
            return
        self.recorded = True

    def taken(self) -> int:
        """The recorded port is taken by another program: forget it (the OS picks a new one, which
        is then recorded instead). Returns the old port."""
        old, self.port, self.recorded = self.port, 0, False
        return old
