"""Logging for the ``hive_bridge`` loggers only (the root logger is never touched).

``HIVE_LOG_LEVEL`` sets the level of the ``hive_bridge`` logger. If neither it nor the root logger
has a handler (the application has not configured logging), a stderr handler is attached to
``hive_bridge`` so its messages are visible; otherwise records simply propagate to the app's handlers.
At DEBUG a :class:`LogTailer` thread re-logs every line the Node server prints as ``node[pid]: …``.

``server.log`` and ``supervisor.log`` are size-capped (:func:`rotate_log`): past ``LOG_MAX_BYTES``
they become ``.1`` (older ones ``.2``, ``.3``; the oldest is dropped), by copy-and-truncate, because
the writers (Node, a detached supervisor) keep the file open in append mode and simply go on at its
new end.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "LOGGER_NAME",
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "LogTailer",
    "configure_logging",
    "rotate_log",
]

LOGGER_NAME = "hive_bridge"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_handler: logging.Handler | None = None

#: a log is rotated once it is larger than this; ``LOG_BACKUPS`` generations are kept
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> bool:
    """If ``path`` is larger than ``max_bytes``: shift ``.1``… up one (dropping the oldest), copy it
    to ``.1`` and truncate it in place (writers appending to it go on at offset 0). Returns whether it
    rotated. Never raises for a missing file or an I/O error (logging must not stop a server)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        for n in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        with open(path, "r+b") as fh:
            fh.truncate(0)
    except OSError:
        return False
    return True


def configure_logging(level: str | int) -> logging.Logger:
    """Apply ``level`` to the ``hive_bridge`` logger (adding a stderr handler only if none exists)."""
    global _handler
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if _handler is None and not logger.handlers and not logging.getLogger().handlers:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(_handler)
    return logger


class LogTailer(threading.Thread):
    """Follow ``server.log`` from an offset and log each new line at DEBUG as ``node[pid]: line``."""

    def __init__(
        self,
        path: Path,
        offset: int,
        pid: Callable[[], int | None],
        *,
        interval: float = 0.05,
    ) -> None:
        super().__init__(name="hive-bridge-log-tail", daemon=True)
        self.path = path
        self.offset = offset
        self._pid = pid
        self._interval = interval
        self._stop_event = threading.Event()
        self._log = logging.getLogger(LOGGER_NAME + ".node")

    def stop(self) -> None:
        """Stop following after logging what is already in the file."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2)

    def run(self) -> None:
        pending = b""
        last_pid: int | None = None
        while True:
            stopping = self._stop_event.is_set()
            try:
                with open(self.path, "rb") as fh:
                    size = fh.seek(0, os.SEEK_END)
                    if size < self.offset:  # rotated
                        self.offset = 0
                    fh.seek(self.offset)
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            if data:
                self.offset += len(data)
                pending += data
                *lines, pending = pending.split(b"\n")
                # lines read after Node exited were still printed by it: keep the last pid known
                pid = self._pid() or last_pid
                last_pid = pid
                for line in lines:
                    text = line.decode("utf-8", "replace").rstrip()
                    if text:
                        self._log.debug("node[%s]: %s", pid if pid is not None else "?", text)
            if stopping:
                return
            self._stop_event.wait(self._interval)
