"""``hive-bridge`` / ``python -m hive_bridge``: start, stop, status, url, backup, restore, dump,
migrate, doctor.

Exit status: 0 ok; 1 an expected failure (one clear message on stderr, never a traceback);
3 not running (``status``, ``url``, ``backup``), as LSB init scripts do; 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from . import __version__
from .bridge import Bridge
from .clients import format_clients, list_clients, terminate_client
from .config import BridgeSettings, check_exposure, load_bridge_settings, load_settings
from .daemon import run_daemon
from .dsn import async_sqlalchemy_url, libpq_dsn, sqlalchemy_url, unix_dsn
from .errors import (
    BridgeNotRunningError,
    BridgeStartError,
    ConfigError,
    HiveBridgeError,
    MigrateError,
    StopRefusedError,
    VerifyFailedError,
)
from .launch import DaemonSpec, launch_daemon
from .leases import live_users
from .locate import check_js_dir, default_js_dir, locate
from .lock import is_locked, read_lock_owner
from .logs import configure_logging
from .node import describe_running_node
from .paths import RunPaths, read_password, run_paths_for
from .statefile import BridgeState, process_matches, read_live_state, remove_state
from .status import status_report
from .supervisor import State, SupervisorOptions
from .watchdog import describe_activity

__all__ = ["main"]

# backup, doctor, dump and migrate (psycopg, httpx, tarfile, importlib.metadata) are imported by
# their commands only: `hive-bridge start` pays for what starting needs, nothing else

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_NOT_RUNNING = 3

#: how long `start` waits for an on-demand server to confirm it was pinned
PIN_WAIT = 5.0


def _out(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Target:
    """The data dir a command acts on (``None`` = in-memory) and the bridge settings."""

    data_dir: Path | None
    settings: BridgeSettings

    def paths(self, create: bool = False) -> RunPaths:
        if self.data_dir is None:
            raise ConfigError(
                setting="--data-dir",
                value="memory",
                problem="an in-memory server lives only inside the process that runs it, so other "
                "commands cannot find it",
                example="hive-bridge start --foreground --data-dir memory",
                fix="use `hive-bridge start --foreground --data-dir memory`, or a real data dir",
            )
        return run_paths_for(self.data_dir, run_dir=self.settings.run_dir, create=create)

    @property
    def quoted(self) -> str:
        return shlex.quote(str(self.data_dir))


def _target(args: argparse.Namespace) -> _Target:
    settings = load_bridge_settings()
    if args.data_dir:
        if args.data_dir in ("memory", ":memory:"):
            return _Target(None, settings)
        return _Target(Path(args.data_dir).expanduser().absolute(), settings)
    database = load_settings().database
    if database.backend != "pglite":
        raise ConfigError(
            setting="HIVE_DATABASE_BACKEND",
            value=database.backend,
            problem="the hive-bridge CLI manages PGlite data dirs; pass --data-dir or use pglite",
            example="hive-bridge status --data-dir ./data/automagik_hive.db",
            fix="pass --data-dir PATH, or set HIVE_DATABASE_URL=pglite://./data/automagik_hive.db",
        )
    return _Target(database.data_dir, settings)


def _dsn_of(state: BridgeState, paths: RunPaths, kind: str = "libpq") -> str:
    if state.port is None:
        raise BridgeNotRunningError(
            data_dir=str(paths.data_dir), state_path=str(paths.state), detail=f"state {state.state}"
        )
    if kind == "unix":
        if not state.socket_dir:
            raise ConfigError(
                setting="HIVE_BRIDGE_SOCKET_DIR",
                value="off",
                problem="the running server was started without a Unix socket",
                example="HIVE_BRIDGE_SOCKET_DIR=/tmp/hive-bridge-sock",
                fix="restart it with HIVE_BRIDGE_SOCKET_DIR unset (or set to a directory)",
            )
        return unix_dsn(state.socket_dir, state.port)
    password = read_password(paths.password)
    build = {"libpq": libpq_dsn, "sqlalchemy": sqlalchemy_url, "async": async_sqlalchemy_url}[kind]
    return build(state.host, state.port, password)


def _options(args: argparse.Namespace, settings: BridgeSettings) -> SupervisorOptions:
    """The supervisor's knobs: ``HIVE_BRIDGE_*`` (watchdog, autovacuum) and ``--timeout``."""
    options = SupervisorOptions.from_settings(settings)
    timeout = getattr(args, "timeout", None)
    return replace(options, start_timeout=timeout) if timeout else options


def _cmdline(pid: int) -> str:
    try:
        return shlex.join(psutil.Process(pid).cmdline())[:200]
    except (psutil.Error, ValueError):
        return "?"


# ----------------------------------------------------------------------------------- start


def _describe(state: BridgeState) -> str:
    return (
        f"supervisor pid {state.supervisor_pid}, node pid {state.node_pid}, "
        f"{state.host}:{state.port}, started by {state.origin}"
    )


def _pin(paths: RunPaths, state: BridgeState) -> bool:
    """Ask an on-demand supervisor to run until ``hive-bridge stop`` (SIGUSR1); True once it did."""
    if state.supervisor_log_path is None:
        return False  # not a detached supervisor (one inside an app): SIGUSR1 would kill it
    if not process_matches(state.supervisor_pid, state.supervisor_create_time):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(state.supervisor_pid, signal.SIGUSR1)
    deadline = time.monotonic() + PIN_WAIT
    while time.monotonic() < deadline:
        live = read_live_state(paths.state)
        if live is None or live.supervisor_pid != state.supervisor_pid:
            return False
        if live.origin == "cli":
            return True
        time.sleep(0.05)
    return False


def _already_running(
    target: _Target, paths: RunPaths, state: BridgeState, *, pin: bool = False
) -> int:
    note = ""
    if state.origin == "auto":
        if pin and _pin(paths, state):
            note = "; it was started for applications and now runs until hive-bridge stop"
        else:
            note = "; it was started for applications and stops when they exit"
    elif state.origin == "api":
        note = f"; it runs inside application process {state.supervisor_pid} and stops with it"
    _err(f"hive-bridge: already running for {target.data_dir} ({_describe(state)}){note}")
    _out(_dsn_of(state, paths))
    return EXIT_OK


def cmd_start(args: argparse.Namespace) -> int:
    target = _target(args)
    if args.foreground:
        return _run_foreground(target, args, print_dsn=True)
    settings = target.settings
    settings = replace(
        settings,
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
    )
    check_exposure(
        settings.host,
        settings.allow_remote,
        setting="--host" if args.host else "HIVE_BRIDGE_HOST",
    )
    paths = target.paths(create=True)
    options = _options(args, settings)
    assert target.data_dir is not None
    spec = DaemonSpec(data_dir=target.data_dir, origin="cli", settings=settings, options=options)
    deadline = time.monotonic() + options.start_budget
    ours: int | None = None
    while True:
        state = read_live_state(paths.state)
        if state is not None and state.state == State.RUNNING.value:
            if ours is not None and state.supervisor_pid == ours:
                _err(
                    f"hive-bridge: started for {target.data_dir} ({_describe(state)}); "
                    f"log: {paths.supervisor_log}"
                )
                _out(_dsn_of(state, paths))
                return EXIT_OK
            return _already_running(target, paths, state, pin=True)
        startable = state is None or state.state == State.FATAL.value
        if startable and not is_locked(paths.lock):
            launched = launch_daemon(spec, paths, deadline=deadline)
            ours = launched.pid if launched.outcome == "running" else None
            continue
        if time.monotonic() >= deadline:
            raise BridgeStartError(
                data_dir=str(target.data_dir),
                reason=(
                    f"a server for it is run by process {state.supervisor_pid} but stayed in "
                    f"state {state.state}"
                    if state is not None
                    else "its lock stayed held with no supervisor to report on it"
                ),
                log_path=state.log_path if state is not None else None,
                fix=f"see: hive-bridge status --data-dir {target.quoted}",
            )
        time.sleep(0.05)


def _run_foreground(target: _Target, args: argparse.Namespace, *, print_dsn: bool) -> int:
    if target.data_dir is not None:
        paths = target.paths(create=True)
        state = read_live_state(paths.state)
        if state is not None and state.state == State.RUNNING.value and print_dsn:
            return _already_running(target, paths, state)
    bridge = Bridge(
        target.data_dir,
        memory=target.data_dir is None,
        host=args.host,
        port=args.port,
        origin="cli",
        attach=False,
        options=_options(args, target.settings),
        settings=target.settings,
    )
    signals: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        bridge.request_stop(force=len(signals) > 1)  # only sets flags; the monitor thread acts

    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        try:
            bridge.start()
        except BridgeStartError:
            if not signals:
                raise
            name = signal.Signals(signals[0]).name
            _err(f"hive-bridge: {name} received before the server was ready; stopped")
            return 128 + signals[0]
        if print_dsn:
            _err(
                f"hive-bridge: running for {target.data_dir or 'memory'} (pid {os.getpid()}, "
                f"node pid {bridge.node_pid}); press Ctrl-C to stop"
            )
            _out(bridge.dsn)
        bridge.wait()
    finally:
        bridge.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def cmd_supervise(args: argparse.Namespace) -> int:
    """What ``start`` and applications run detached: the supervisor (see hive_bridge.daemon)."""
    if args.spec:
        spec = DaemonSpec.from_json(args.spec)
    else:
        target = _target(args)
        if target.data_dir is None:
            target.paths()  # raises the "in-memory" ConfigError
        assert target.data_dir is not None
        spec = DaemonSpec(
            data_dir=target.data_dir,
            origin=args.origin,
            settings=target.settings,
            options=SupervisorOptions.from_settings(target.settings),
        )
    return run_daemon(spec, detach=args.detach, notify_fd=args.notify_fd)


# ------------------------------------------------------------------------------------ stop


def cmd_stop(args: argparse.Namespace) -> int:
    target = _target(args)
    paths = target.paths()
    state = read_live_state(paths.state)
    if state is None:
        if is_locked(paths.lock):
            owner = read_lock_owner(paths.lock)
            _err(
                f"hive-bridge: no supervisor is running for {target.data_dir}, but its lock is "
                f"still held (last holder pid {owner}); a Node server whose supervisor died exits "
                f"by itself within seconds"
            )
        else:
            _err(f"hive-bridge: not running for {target.data_dir} (nothing to stop)")
        return EXIT_OK
    if state.origin != "cli" and not args.force:
        raise StopRefusedError(
            data_dir=str(target.data_dir),
            origin=state.origin,
            owner_pid=state.supervisor_pid,
            owner_cmdline=_cmdline(state.supervisor_pid),
            users=[lease.pid for lease in live_users(paths.users_dir)],
        )
    pid = state.supervisor_pid
    _err(f"hive-bridge: stopping supervisor pid {pid} for {target.data_dir} ...")
    _signal(pid, signal.SIGTERM)
    timeout = args.timeout or (SupervisorOptions().stopwaitsecs + 5)
    if not _wait_gone(pid, state.supervisor_create_time, timeout):
        _err(
            f"hive-bridge: supervisor pid {pid} did not stop within {timeout:.0f}s; sending SIGKILL"
        )
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, state.supervisor_create_time, 5)
    if state.node_pid and process_matches(state.node_pid, state.node_create_time):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(state.node_pid, signal.SIGKILL)
        _wait_gone(state.node_pid, state.node_create_time, 5)
    remove_state(paths.state, only_if_pid=pid)
    _err(f"hive-bridge: stopped (data dir {target.data_dir})")
    return EXIT_OK


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, create_time: float | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_matches(pid, create_time):
            return True
        time.sleep(0.05)
    return not process_matches(pid, create_time)


# ---------------------------------------------------------------------------- status, url


def cmd_status(args: argparse.Namespace) -> int:
    target = _target(args)
    paths = target.paths()
    state = read_live_state(paths.state)
    running = state is not None and state.state != State.FATAL.value
    if args.json:
        if state is None:
            report: dict[str, Any] = {
                "state": State.STOPPED.value,
                "data_dir": str(target.data_dir),
            }
        else:
            report = status_report(state, users_dir=paths.users_dir)
        report["running"] = running
        _out(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK if running else EXIT_NOT_RUNNING
    if state is None:
        _out(f"hive-bridge: not running (data dir {target.data_dir})")
        return EXIT_NOT_RUNNING
    report = status_report(state, users_dir=paths.users_dir)
    rss = report.get("rss_bytes")
    uptime = report.get("uptime_s")
    users = report.get("users") or []
    lifetime = {
        "cli": "runs until hive-bridge stop",
        "auto": "stops when its last user exits",
        "api": f"stops with process {state.supervisor_pid}",
    }.get(state.origin, "")
    lines = [
        f"hive-bridge: {state.state} (data dir {state.data_dir})",
        f"  supervisor pid {state.supervisor_pid} (started by {state.origin}), "
        f"node pid {state.node_pid}; {lifetime}",
        f"  listening on {state.host}:{state.port} (admin 127.0.0.1:{state.admin_port})",
        f"  unix socket {state.socket_dir}/.s.PGSQL.{state.port}"
        if state.socket_dir
        else "  unix socket: off",
        f"  users: {len(users)}" + (f" (pids {', '.join(map(str, users))})" if users else ""),
        f"  uptime {uptime:.0f}s" if uptime is not None else "  uptime -",
        f"  restarts {state.restarts}{_last_exit(state)}, node RSS "
        + (f"{rss / 1024 / 1024:.0f} MB" if isinstance(rss, int) else "-"),
        "  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(state.versions.items())),
        "  "
        + describe_running_node(state.node_pid, state.versions.get("node"), target.settings.node),
        f"  server log: {state.log_path}",
    ]
    if state.supervisor_log_path:
        lines.append(f"  supervisor log: {state.supervisor_log_path}")
    stats = report.get("stats")
    if isinstance(stats, dict):
        lines.append(
            f"  connections {stats.get('connections')}, queries served "
            f"{stats.get('queries_served')}, backend restarts {stats.get('backend_restarts')}"
        )
        lines.append(f"  backend: {describe_activity(report.get('activity'))}")
        maintenance = stats.get("maintenance")
        if isinstance(maintenance, dict):
            last = maintenance.get("last_vacuum")
            lines.append(
                f"  autovacuum: {maintenance.get('vacuums')} vacuums"
                + (f", last {last.get('table')} at {last.get('at')}" if last else "")
                + f"; {maintenance.get('checkpoints')} checkpoints"
            )
    if state.error:
        lines.append(f"  error: {state.error}")
    _out("\n".join(lines))
    return EXIT_OK if running else EXIT_NOT_RUNNING


def _last_exit(state: BridgeState) -> str:
    if not state.last_exit:
        return ""
    ago = f" {time.time() - state.last_exit_at:.0f}s ago" if state.last_exit_at else ""
    return f" (last exit{ago}: {state.last_exit})"


def _running_state(target: _Target, paths: RunPaths, fix: str | None = None) -> BridgeState:
    state = read_live_state(paths.state)
    if state is None or state.state != State.RUNNING.value:
        raise BridgeNotRunningError(
            data_dir=str(target.data_dir),
            state_path=str(paths.state),
            detail=None if state is None else f"state {state.state}",
            fix=fix,
        )
    return state


def cmd_url(args: argparse.Namespace) -> int:
    target = _target(args)
    paths = target.paths()
    state = _running_state(target, paths)
    kind = (
        "unix"
        if args.unix
        else "async"
        if args.async_
        else "sqlalchemy"
        if args.sqlalchemy
        else "libpq"
    )
    _out(_dsn_of(state, paths, kind))
    return EXIT_OK


# --------------------------------------------------------------------------- backup, restore


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup_offline, backup_online

    target = _target(args)
    paths = target.paths(create=args.offline)  # the lock file lives in the run dir
    if args.offline:
        result = backup_offline(paths, Path(args.path))
    else:
        q = shlex.quote(os.path.abspath(args.path))
        state = _running_state(
            target,
            paths,
            fix=(
                f"while no server runs, the data dir can simply be copied "
                f"(cp -a {target.quoted} {shlex.quote(str(target.data_dir) + '.copy')}), or "
                f"archived with: hive-bridge backup {q} --offline --data-dir {target.quoted}"
            ),
        )
        result = backup_online(paths, state, Path(args.path), timeout=args.timeout)
    how = "snapshot taken by the running server" if result.online else "offline, under the lock"
    _err(
        f"hive-bridge: backup of {target.data_dir} written to {result.path} "
        f"({result.bytes} bytes in {result.ms:.0f} ms, {how}; PGlite {result.pglite_version})"
    )
    _out(str(result.path))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import restore

    if not args.data_dir:
        raise ConfigError(
            setting="--data-dir",
            value=None,
            problem="restore needs the new data dir to create",
            example="hive-bridge restore backup.tar.gz --data-dir ./data/restored.db",
            fix="pass --data-dir NEW (a path that does not exist yet)",
        )
    target = _target(args)
    if _is_sql_dump(Path(args.backup)):
        return _restore_dump(target, Path(args.backup))
    paths = target.paths(create=True)
    settings = target.settings
    installed = check_js_dir(
        settings.js_dir or default_js_dir(), from_setting=settings.js_dir is not None
    )
    result = restore(Path(args.backup), paths, installed_pglite=installed)
    _err(
        f"hive-bridge: restored {os.path.abspath(args.backup)} into {result.data_dir} "
        f"({result.files} files, PGlite {result.pglite_version}); start it with: "
        f"hive-bridge start --data-dir {shlex.quote(str(result.data_dir))}"
    )
    _out(str(result.data_dir))
    return EXIT_OK


# ---------------------------------------------------------------- dump, migrate (outgrowing)


def _progress(line: str) -> None:
    _err(line)


def _is_sql_dump(path: Path) -> bool:
    """A plain SQL dump (else a .tar.gz backup); pg_dump's custom format is refused with the fix."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False  # restore() reports the missing file
    if head.startswith(b"PGDMP"):
        raise MigrateError(
            action="restore",
            where=str(path),
            problem="it is a pg_dump custom-format archive; restore reads plain SQL dumps",
            fix=f"convert it with a pg_restore at least as new as the pg_dump that wrote it: "
            f"pg_restore -f dump.sql {shlex.quote(str(path))}, then restore dump.sql",
        )
    return not head.startswith(b"\x1f\x8b") and (
        b"PostgreSQL database dump" in head
        or head.lstrip().startswith((b"--", b"SET ", b"CREATE "))
    )


def _restore_dump(target: _Target, dump: Path) -> int:
    from .migrate import restore_dump

    assert target.data_dir is not None
    report = restore_dump(dump.absolute(), target.data_dir, target.settings, progress=_progress)
    _out("\n".join(report.lines()))
    if not report.ok:
        raise VerifyFailedError(
            where=str(target.data_dir), differences=report.comparison.differences
        )
    _err(
        f"hive-bridge: restored {dump} into {target.data_dir}; start it with: "
        f"hive-bridge start --data-dir {target.quoted}"
    )
    return EXIT_OK


def cmd_dump(args: argparse.Namespace) -> int:
    from .dump import dump_pglite, write_new_file

    target = _target(args)
    paths = target.paths(create=True)
    settings = target.settings
    install = locate(node=settings.node, js_dir=settings.js_dir)
    if args.path != "-" and os.path.lexists(args.path):
        write_new_file(Path(args.path), "")  # raises: never overwrite, before the work
    result = dump_pglite(paths, install, timeout=args.timeout)
    how = (
        f"snapshot of the running server, clients held {result.clients_held_ms:.0f} ms"
        if result.online
        else "stopped, under its lock"
    )
    summary = (
        f"hive-bridge: dump of {target.data_dir}: {len(result.fingerprint.tables)} tables, "
        f"{result.fingerprint.rows} rows, {len(result.sql.encode())} bytes in "
        f"{result.ms / 1000:.1f} s ({how}; pg_dump {result.pg_dump_version})"
    )
    if args.path == "-":
        sys.stdout.write(result.sql)
        sys.stdout.flush()
        _err(summary)
    else:
        written = write_new_file(Path(args.path), result.sql)
        _err(f"{summary}; written to {written}")
        _out(str(written))
    return EXIT_OK


def _print_env(lines: list[str], args: argparse.Namespace) -> None:
    from .migrate import update_env

    if args.update_env:
        env_file = Path(args.env_file).absolute()
        backup = update_env(env_file, lines)
        kept = f" (the old one kept as {backup})" if backup else ""
        _err(f"hive-bridge: wrote these lines to {env_file}{kept}:")
    else:
        _err("hive-bridge: to switch, put these lines in .env (or pass --update-env):")
    _out("\n".join(lines))


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import env_lines, migrate_from, migrate_to

    target = _target(args)
    settings = target.settings
    if args.to:
        paths = target.paths(create=True)
        install = locate(node=settings.node, js_dir=settings.js_dir)
        report = migrate_to(paths, install, args.to, progress=_progress, timeout=args.timeout)
        env = env_lines("postgresql", args.to)
    else:
        if not args.data_dir:
            raise ConfigError(
                setting="--data-dir",
                value=None,
                problem="migrate --from needs the new PGlite data dir to create",
                example="hive-bridge migrate --from postgresql://u:pw@host/db --data-dir ./data/x.db",
                fix="pass --data-dir NEW (a path that does not exist yet)",
            )
        assert target.data_dir is not None
        report = migrate_from(
            args.from_, target.data_dir, settings, progress=_progress, timeout=args.timeout
        )
        env = env_lines("pglite", f"pglite://{target.data_dir}")
    _out("\n".join(report.lines()))
    if not report.ok:
        raise VerifyFailedError(where=report.target, differences=report.comparison.differences)
    _print_env(env, args)
    return EXIT_OK


# ------------------------------------------------------------------------ clients, terminate


def cmd_clients(args: argparse.Namespace) -> int:
    target = _target(args)
    paths = target.paths()
    clients = list_clients(paths, _running_state(target, paths))
    _out(json.dumps(clients, indent=2, sort_keys=True) if args.json else format_clients(clients))
    return EXIT_OK


def cmd_terminate(args: argparse.Namespace) -> int:
    target = _target(args)
    paths = target.paths()
    terminate_client(paths, _running_state(target, paths), args.pid)
    _out(f"hive-bridge: terminated client {args.pid} (FATAL 57P01; its transaction rolled back)")
    return EXIT_OK


# ---------------------------------------------------------------------------------- doctor


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    def data_dir() -> Path | None:
        return _target(args).data_dir

    ok = run_doctor(data_dir, port=args.port, out=_out)
    return EXIT_OK if ok else EXIT_FAIL


# ------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hive-bridge",
        description="Run and inspect the PGlite bridge (a PostgreSQL server with no Docker).",
    )
    parser.add_argument("--version", action="version", version=f"hive-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str | None, fn: Callable[[argparse.Namespace], int]) -> Any:
        p = sub.add_parser(name, help=help_text) if help_text else sub.add_parser(name)
        p.set_defaults(fn=fn)
        p.add_argument(
            "--data-dir",
            help="PGlite data dir (default: from HIVE_DATABASE_URL, else ./data/automagik_hive.db); "
            "'memory' for in-memory (start --foreground only)",
        )
        return p

    start = add(
        "start", "start the server (detached unless --foreground) and print its DSN", cmd_start
    )
    start.add_argument("--foreground", action="store_true", help="supervise in this process")
    start.add_argument("--port", type=int, default=None, help="TCP port (default HIVE_BRIDGE_PORT)")
    start.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    start.add_argument("--timeout", type=float, default=None, help="seconds to wait for a start")
    supervise = add("supervise", None, cmd_supervise)
    supervise.add_argument("--origin", choices=("cli", "auto"), default="cli")
    supervise.add_argument("--detach", action="store_true")
    supervise.add_argument("--notify-fd", type=int, default=None)
    supervise.add_argument("--spec", default=None)
    stop = add("stop", "stop the server (exit 0 also when it is not running)", cmd_stop)
    stop.add_argument("--timeout", type=float, default=None, help="seconds before SIGKILL")
    stop.add_argument(
        "--force", action="store_true", help="also stop a server that applications use"
    )
    status = add("status", "show the server state (exit 0 running, 3 not running)", cmd_status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    url = add("url", "print the DSN of the running server (exit 3 if not running)", cmd_url)
    kind = url.add_mutually_exclusive_group()
    kind.add_argument("--async", dest="async_", action="store_true", help="postgresql+asyncpg URL")
    kind.add_argument("--sqlalchemy", action="store_true", help="postgresql+psycopg URL")
    kind.add_argument("--unix", action="store_true", help="libpq DSN over the Unix socket")
    backup = add(
        "backup", "write a .tar.gz snapshot of the data dir (exit 3 if not running)", cmd_backup
    )
    backup.add_argument("path", help="the backup file to create (never overwritten)")
    backup.add_argument(
        "--offline", action="store_true", help="archive a stopped data dir under its lock"
    )
    backup.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the snapshot"
    )
    restore_cmd = add(
        "restore", "restore a backup into a new data dir (never overwrites)", cmd_restore
    )
    restore_cmd.add_argument(
        "backup",
        help="a file written by hive-bridge backup, or a plain SQL dump (hive-bridge dump)",
    )
    dump = add("dump", "write a logical dump (plain SQL) of the database, running or not", cmd_dump)
    dump.add_argument(
        "path", nargs="?", default="-", help="file to create (never overwritten); - for stdout"
    )
    dump.add_argument("--timeout", type=float, default=3600.0, help="seconds for pg_dump")
    migrate = add(
        "migrate",
        "move the database to PostgreSQL (--to) or from it (--from), verified",
        cmd_migrate,
    )
    direction = migrate.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--to", metavar="URL", help="an empty PostgreSQL 15+ database to copy into"
    )
    direction.add_argument(
        "--from",
        dest="from_",
        metavar="URL",
        help="a PostgreSQL database to copy into a new --data-dir",
    )
    migrate.add_argument(
        "--update-env", action="store_true", help="write the two lines into .env (old one kept)"
    )
    migrate.add_argument("--env-file", default=".env", help="the .env file for --update-env")
    migrate.add_argument("--timeout", type=float, default=3600.0, help="seconds for pg_dump")
    clients = add("clients", "list connected clients by pid (exit 3 if not running)", cmd_clients)
    clients.add_argument("--json", action="store_true", help="machine-readable output")
    terminate = add(
        "terminate", "end one client as pg_terminate_backend() would (57P01)", cmd_terminate
    )
    terminate.add_argument("pid", type=int, help="the client's pid, from hive-bridge clients")
    doctor = add("doctor", "check the environment; exit 1 if anything fails", cmd_doctor)
    doctor.add_argument("--port", type=int, default=None, help="check this port is free")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(load_bridge_settings().log_level)
    except ConfigError as exc:
        if args.command != "doctor":
            _err(str(exc))
            return EXIT_FAIL
    try:
        result: int = args.fn(args)
    except HiveBridgeError as exc:
        _err(str(exc))
        return exc.exit_status
    except KeyboardInterrupt:
        _err("hive-bridge: interrupted")
        return 130
    return result
