"""Every failure hive-bridge expects, as typed exceptions.

Each error keeps what it knows as attributes and builds its message from them, so a message always
says what happened, where (paths, ports, pids) and the exact command that fixes it. The CLI prints
``str(error)`` and exits with ``error.exit_status``; nothing here ever needs a traceback to be useful.
"""

from __future__ import annotations

import errno
import shlex
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "BackupError",
    "BridgeFatalError",
    "BridgeNotFoundError",
    "BridgeNotRunningError",
    "BridgeStartError",
    "ClientError",
    "ConfigError",
    "DataDirError",
    "DataDirLockedError",
    "HiveBridgeError",
    "MigrateError",
    "PortInUseError",
    "RestoreVersionError",
    "StopRefusedError",
    "TargetNotEmptyError",
    "VerifyFailedError",
    "error_from_dict",
    "error_to_dict",
]


def _q(value: object) -> str:
    """Shell-quote a value so a printed command can be pasted as is."""
    return shlex.quote(str(value))


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def _rebuild(cls: type[HiveBridgeError], fields: dict[str, Any]) -> HiveBridgeError:
    return cls(**fields)


class HiveBridgeError(Exception):
    """Base class of every error hive-bridge raises on purpose."""

    #: exit status of the CLI when this error ends a command
    exit_status: ClassVar[int] = 1

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        super().__init__(self._message())

    def _message(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword-only constructors do not survive the default Exception pickling
        return (_rebuild, (type(self), self._fields))


class ConfigError(HiveBridgeError, ValueError):
    """A setting (environment variable, .env entry, CLI flag) has a value that cannot work."""

    def __init__(
        self,
        *,
        setting: str,
        value: str | None,
        problem: str,
        example: str,
        fix: str | None = None,
    ) -> None:
        self.setting = setting
        self.value = value
        self.problem = problem
        self.example = example
        self.fix = fix
        super().__init__(setting=setting, value=value, problem=problem, example=example, fix=fix)

    def _message(self) -> str:
        shown = "is not set" if self.value is None else f"= {self.value!r}"
        fix = self.fix or f"set it in the environment or in .env, for example: {self.example}"
        return f"hive-bridge: {self.setting} {shown}: {self.problem}. Fix: {fix}"


class BridgeNotFoundError(HiveBridgeError, FileNotFoundError):
    """Node.js or the bundled bridge-js server (or its node_modules) cannot be found or used.

    ``cause`` is one of ``node_missing``, ``node_not_executable``, ``node_too_old``, ``node_broken``,
    ``js_dir_missing``, ``server_js_missing``, ``lockfile_missing``, ``node_modules_missing``,
    ``node_modules_mismatch``, ``pglite_missing``.
    """

    def __init__(self, *, cause: str, what: str, looked_in: str, fix: str) -> None:
        self.cause = cause
        self.what = what
        self.looked_in = looked_in
        self.fix = fix
        super().__init__(cause=cause, what=what, looked_in=looked_in, fix=fix)
        self.errno = errno.ENOENT
        self.filename = looked_in

    def _message(self) -> str:
        return f"hive-bridge: {self.what} (looked in {self.looked_in}). Fix: {self.fix}"


class BridgeStartError(HiveBridgeError):
    """The Node server did not come up: it exited, printed an error, or never answered SQL in time.

    ``code`` and ``node_message``/``hint`` come from the server's ``{"event":"error",…}`` line when it
    printed one; ``log_tail`` holds the last lines of ``log_path`` at the time of the failure.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        reason: str,
        log_path: str | None = None,
        log_tail: str = "",
        exit_code: int | None = None,
        code: str | None = None,
        node_message: str | None = None,
        hint: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.reason = reason
        self.log_path = log_path
        self.log_tail = log_tail
        self.exit_code = exit_code
        self.code = code
        self.node_message = node_message
        self.hint = hint
        self.fix = fix
        super().__init__(**self._base_fields())

    def _base_fields(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "reason": self.reason,
            "log_path": self.log_path,
            "log_tail": self.log_tail,
            "exit_code": self.exit_code,
            "code": self.code,
            "node_message": self.node_message,
            "hint": self.hint,
            "fix": self.fix,
        }

    def _headline(self) -> str:
        return f"hive-bridge: the Node server for {self.data_dir} failed to start: {self.reason}"

    def _message(self) -> str:
        facts = []
        if self.exit_code is not None:
            facts.append(f"exit status {self.exit_code}")
        if self.code:
            facts.append(f"code {self.code}")
        parts = [self._headline() + (f" ({', '.join(facts)})" if facts else "") + "."]
        if self.node_message:
            parts.append(f"Node said: {self.node_message}")
        if self.hint and self.hint != self.fix:
            parts.append(f"Hint: {self.hint}")
        fix = self.fix or (
            f"read the server log {self.log_path}, then check the environment with: "
            f"hive-bridge doctor --data-dir {_q(self.data_dir)}"
            if self.log_path
            else f"check the environment with: hive-bridge doctor --data-dir {_q(self.data_dir)}"
        )
        parts.append(f"Fix: {fix}")
        text = "\n".join(parts)
        if self.log_tail.strip():
            text += f"\nLast lines of {self.log_path}:\n{_indent(self.log_tail)}"
        elif self.log_path:
            text += f"\nServer log: {self.log_path} (empty)"
        return text


class PortInUseError(BridgeStartError):
    """The port the server must listen on is taken by another process.

    ``owner_pid``/``owner_name`` name the process that listens there, when psutil can see it.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        host: str,
        port: int,
        log_path: str | None = None,
        log_tail: str = "",
        exit_code: int | None = None,
        node_message: str | None = None,
        owner_pid: int | None = None,
        owner_name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.owner_pid = owner_pid
        self.owner_name = owner_name
        owner = ""
        if owner_pid is not None:
            owner = f" by process {owner_pid}" + (f" ({owner_name})" if owner_name else "")
        stop = (
            f"stop process {owner_pid} (kill {owner_pid})"
            if owner_pid is not None
            else f"stop whatever listens there (see: ss -ltnp 'sport = :{port}')"
        )
        super().__init__(
            data_dir=data_dir,
            reason=f"port {host}:{port} is already in use{owner}",
            log_path=log_path,
            log_tail=log_tail,
            exit_code=exit_code,
            code="port_in_use",
            node_message=node_message,
            fix=(f"{stop} or choose another port: HIVE_BRIDGE_PORT=0 lets the OS pick a free one"),
        )
        self._fields = {
            "data_dir": data_dir,
            "host": host,
            "port": port,
            "log_path": log_path,
            "log_tail": log_tail,
            "exit_code": exit_code,
            "node_message": node_message,
            "owner_pid": owner_pid,
            "owner_name": owner_name,
        }


class DataDirError(BridgeStartError):
    """The server could not open the data dir (``code``: ``data_dir_invalid``, ``version_mismatch``,
    ``extension_missing``, ``open_failed``). Nothing in the data dir was changed or deleted.

    ``node_message`` is the cause as the server stated it, ``hint`` its safe next step.
    """

    def _headline(self) -> str:
        return f"hive-bridge: cannot open data dir {self.data_dir}: {self.reason}"

    def _message(self) -> str:
        text = super()._message()
        head, sep, rest = text.partition("\nFix: ")
        return f"{head}\nNothing in {self.data_dir} was changed or deleted.{sep}{rest}"


class BridgeFatalError(BridgeStartError):
    """The supervisor gave up: too many failed starts, or too many crashes within a time window."""

    def __init__(
        self,
        *,
        data_dir: str,
        reason: str,
        attempts: int,
        log_path: str | None = None,
        log_tail: str = "",
        exit_code: int | None = None,
        code: str | None = None,
        node_message: str | None = None,
        hint: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.attempts = attempts
        super().__init__(
            data_dir=data_dir,
            reason=reason,
            log_path=log_path,
            log_tail=log_tail,
            exit_code=exit_code,
            code=code,
            node_message=node_message,
            hint=hint,
            fix=fix,
        )
        self._fields = {**self._base_fields(), "attempts": attempts}

    def _headline(self) -> str:
        return (
            f"hive-bridge: gave up on the Node server for {self.data_dir} after {self.attempts} "
            f"attempt(s), it entered FATAL state: {self.reason}"
        )

    @classmethod
    def from_error(cls, err: BridgeStartError, *, reason: str, attempts: int) -> BridgeFatalError:
        """Wrap the last start error, keeping its log tail, exit code and node error."""
        return cls(
            data_dir=err.data_dir,
            reason=f"{reason}; last error: {err.reason}",
            attempts=attempts,
            log_path=err.log_path,
            log_tail=err.log_tail,
            exit_code=err.exit_code,
            code=err.code,
            node_message=err.node_message,
            hint=err.hint,
            fix=err.fix,
        )


class DataDirLockedError(HiveBridgeError):
    """Another process holds the exclusive lock of this data dir (two openers would corrupt it)."""

    def __init__(self, *, data_dir: str, lock_path: str, owner_pid: int | None) -> None:
        self.data_dir = data_dir
        self.lock_path = lock_path
        self.owner_pid = owner_pid
        super().__init__(data_dir=data_dir, lock_path=lock_path, owner_pid=owner_pid)

    def _message(self) -> str:
        owner = f"process {self.owner_pid}" if self.owner_pid else "another process"
        d = _q(self.data_dir)
        return (
            f"hive-bridge: data dir {self.data_dir} is already in use by {owner} "
            f"(lock {self.lock_path}); only one server may open a data dir. "
            f"Fix: use that server (see it with: hive-bridge status --data-dir {d}) "
            f"or stop it with: hive-bridge stop --data-dir {d}"
        )


class BridgeNotRunningError(HiveBridgeError):
    """No live server exists for this data dir (the CLI exits 3, as LSB status does)."""

    exit_status: ClassVar[int] = 3

    def __init__(
        self,
        *,
        data_dir: str,
        state_path: str,
        detail: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.state_path = state_path
        self.detail = detail
        self.fix = fix
        super().__init__(data_dir=data_dir, state_path=state_path, detail=detail, fix=fix)

    def _message(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        fix = self.fix or f"start one with: hive-bridge start --data-dir {_q(self.data_dir)}"
        return (
            f"hive-bridge: no server is running for data dir {self.data_dir}{detail}; "
            f"its state file is {self.state_path}. Fix: {fix}"
        )


class StopRefusedError(HiveBridgeError):
    """``hive-bridge stop`` will not stop a server that applications use (without ``--force``).

    ``origin`` is ``api`` (it runs inside application process ``owner_pid``) or ``auto`` (a shared
    on-demand server; ``users`` are the pids of the processes using it).
    """

    def __init__(
        self,
        *,
        data_dir: str,
        origin: str,
        owner_pid: int,
        owner_cmdline: str = "?",
        users: list[int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.origin = origin
        self.owner_pid = owner_pid
        self.owner_cmdline = owner_cmdline
        self.users = list(users or [])
        super().__init__(
            data_dir=data_dir,
            origin=origin,
            owner_pid=owner_pid,
            owner_cmdline=owner_cmdline,
            users=self.users,
        )

    def _message(self) -> str:
        d = _q(self.data_dir)
        if self.origin == "auto":
            who = ", ".join(str(u) for u in self.users) or "none right now"
            why = (
                f"it was started on demand for applications (supervisor pid {self.owner_pid}; "
                f"processes using it: {who}) and stops by itself shortly after the last of them "
                f"exits"
            )
            fix = (
                f"stop those applications, or stop it now anyway (their connections will fail) "
                f"with: hive-bridge stop --force --data-dir {d}"
            )
        else:
            why = (
                f"the server was started by the application in process {self.owner_pid} "
                f"({self.owner_cmdline}), which would only restart it"
            )
            fix = (
                f"stop that application, or send it SIGTERM with: hive-bridge stop --force "
                f"--data-dir {d}"
            )
        return (
            f"hive-bridge: not stopping the server of data dir {self.data_dir}: {why}. Fix: {fix}"
        )


class BackupError(HiveBridgeError):
    """A backup or restore could not be made. Nothing was overwritten or deleted.

    ``action`` is ``backup`` or ``restore``; ``path`` the file or directory concerned.
    """

    def __init__(self, *, action: str, path: str, problem: str, fix: str) -> None:
        self.action = action
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(action=action, path=path, problem=problem, fix=fix)

    def _message(self) -> str:
        return (
            f"hive-bridge: {self.action} failed for {self.path}: {self.problem}. "
            f"Nothing was overwritten or deleted. Fix: {self.fix}"
        )


class RestoreVersionError(BackupError):
    """The backup holds a data dir of another PGlite minor version than the one installed."""

    def __init__(self, *, path: str, backup_version: str, installed_version: str) -> None:
        self.backup_version = backup_version
        self.installed_version = installed_version
        old = _minor(backup_version)
        super().__init__(
            action="restore",
            path=path,
            problem=(
                f"it holds a data dir made by PGlite {backup_version}, but this installation runs "
                f"PGlite {installed_version}, and PGlite data dirs are not compatible across "
                f"minor versions"
            ),
            fix=(
                f"upgrade by dump and restore: restore it with a hive-bridge whose bridge-js has "
                f"PGlite {old}.x, start it and dump it with a pg_dump at least as new as its "
                f"PostgreSQL "
                f'(pg_dump "$(hive-bridge url --data-dir OLD)" > dump.sql), then load the dump '
                f"into a new data dir of this version "
                f'(hive-bridge start --data-dir NEW; psql "$(hive-bridge url --data-dir NEW)" '
                f"-f dump.sql)"
            ),
        )
        self._fields = {
            "path": path,
            "backup_version": backup_version,
            "installed_version": installed_version,
        }


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def display_path(path: Path | str | None) -> str:
    """How a data dir is named in messages (``memory`` for an in-memory database)."""
    return "memory (in-memory database)" if path is None else str(path)


# ------------------------------------------------------------- across a process boundary


def _subclasses(cls: type[HiveBridgeError]) -> dict[str, type[HiveBridgeError]]:
    found: dict[str, type[HiveBridgeError]] = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        found.update(_subclasses(sub))
    return found


def error_to_dict(error: HiveBridgeError) -> dict[str, Any]:
    """A JSON-able form of ``error`` (its class name and constructor fields)."""
    return {"type": type(error).__name__, "fields": dict(error._fields)}


def error_from_dict(data: object) -> HiveBridgeError | None:
    """Rebuild an error written by :func:`error_to_dict` (in another process); ``None`` if unknown."""
    if not isinstance(data, dict):
        return None
    cls = _subclasses(HiveBridgeError).get(str(data.get("type")))
    fields = data.get("fields")
    if cls is None or not isinstance(fields, dict):
        return None
    try:
        return cls(**fields)
    except (TypeError, NotImplementedError):  # fields of another version, or the abstract base
        return None


# ------------------------------------------------------------- dump, migrate (the outgrow path)


class MigrateError(HiveBridgeError):
    """A dump, migration or load of a dump failed.

    ``action`` is ``dump``, ``migrate`` or ``restore``; ``where`` the database, URL (password hidden)
    or file concerned; ``problem`` what happened, including what was (not) written.
    """

    def __init__(self, *, action: str, where: str, problem: str, fix: str) -> None:
        self.action = action
        self.where = where
        self.problem = problem
        self.fix = fix
        super().__init__(action=action, where=where, problem=problem, fix=fix)

    def _message(self) -> str:
        return (
            f"hive-bridge: {self.action} failed for {self.where}: {self.problem}. Fix: {self.fix}"
        )


class TargetNotEmptyError(MigrateError):
    """``migrate`` refuses a target database that already holds objects; it wrote nothing."""

    def __init__(self, *, where: str, objects: list[str]) -> None:
        self.objects = list(objects)
        shown = ", ".join(self.objects[:10]) + (" …" if len(self.objects) > 10 else "")
        super().__init__(
            action="migrate",
            where=where,
            problem=(
                f"the target database is not empty ({len(self.objects)} object(s): {shown}); "
                "nothing was written to it"
            ),
            fix=(
                "migrate into a new, empty database (createdb NEW, or CREATE DATABASE new_db), "
                "or drop those objects first if they are leftovers"
            ),
        )
        self._fields = {"where": where, "objects": self.objects}


class VerifyFailedError(MigrateError):
    """The copy was made, but source and target differ (the report lists every difference)."""

    def __init__(self, *, where: str, differences: list[str]) -> None:
        self.differences = list(differences)
        shown = "; ".join(self.differences[:5]) + (" …" if len(self.differences) > 5 else "")
        super().__init__(
            action="migrate",
            where=where,
            problem=f"the copy differs from the source in {len(self.differences)} place(s): {shown}",
            fix=(
                "do not switch to it: see the report above; if the source was written to during "
                "the move, stop the application and migrate again into a new empty database"
            ),
        )
        self._fields = {"where": where, "differences": self.differences}


class ClientError(HiveBridgeError):
    """Listing or terminating the clients of a running server failed (``hive-bridge clients`` /
    ``hive-bridge terminate``); ``exit_status`` 1. Nothing on the server was changed."""

    def __init__(self, *, action: str, data_dir: str, problem: str, fix: str) -> None:
        self.action = action
        self.data_dir = data_dir
        self.problem = problem
        self.fix = fix
        super().__init__(action=action, data_dir=data_dir, problem=problem, fix=fix)

    def _message(self) -> str:
        return f"hive-bridge: {self.action} failed for {self.data_dir}: {self.problem}. Fix: {self.fix}"
