"""A data dir's stable TCP port: picked at its first start, recorded in ``<run dir>/port``, reused.

A DSN saved in an ``.env`` file, a pgAdmin bookmark or an engine built before a restart keeps working
across ``hive-bridge stop``/``start``, ``make run`` and a new shared supervisor. The first port is a
free one *below* the OS's ephemeral range, so outgoing connections (which take their local ports from
that range) cannot be holding it when the server starts again.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
from pathlib import Path

__all__ = ["pick_port", "read_port", "record_port"]

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
