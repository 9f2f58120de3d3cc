"""The error hierarchy: types, structured attributes, messages with a fix, pickling."""

from __future__ import annotations

import json
import pickle

import pytest

from hive_bridge.errors import (
    BackupError,
    BridgeFatalError,
    BridgeNotFoundError,
    BridgeNotRunningError,
    BridgeStartError,
    ConfigError,
    DataDirError,
    DataDirLockedError,
    HiveBridgeError,
    PortInUseError,
    RestoreVersionError,
    StopRefusedError,
    error_from_dict,
    error_to_dict,
)


def examples() -> list[HiveBridgeError]:
    start = BridgeStartError(
        data_dir="/d/db",
        reason="PGlite could not open the database",
        log_path="/d/db.bridge/server.log",
        log_tail="INFO opening\nERROR Aborted()",
        exit_code=1,
        code="open_failed",
        node_message="PGlite could not open /d/db: Aborted()",
        hint="see the server log above",
    )
    return [
        ConfigError(setting="HIVE_LOG_LEVEL", value="loud", problem="unknown", example="X=1"),
        BridgeNotFoundError(cause="node_missing", what="no node", looked_in="PATH=/bin", fix="apt"),
        start,
        PortInUseError(data_dir="/d/db", host="127.0.0.1", port=5432, exit_code=1),
        BridgeFatalError.from_error(start, reason="too many start retries too quickly", attempts=4),
        DataDirLockedError(data_dir="/d/db", lock_path="/d/db.bridge/lock", owner_pid=4242),
        BridgeNotRunningError(data_dir="/d/db", state_path="/d/db.bridge/state.json"),
        DataDirError(
            data_dir="/d/db",
            reason="it was written by another PGlite version",
            code="version_mismatch",
            node_message="data dir /d/db was created by PGlite 0.4.0",
            hint="open it with PGlite 0.4.x",
            fix="upgrade by dump and restore",
            exit_code=1,
        ),
        PortInUseError(
            data_dir="/d/db", host="127.0.0.1", port=5433, owner_pid=77, owner_name="postgres"
        ),
        BackupError(action="restore", path="/b.tar.gz", problem="no PG_VERSION", fix="another"),
        RestoreVersionError(path="/b.tar.gz", backup_version="0.4.2", installed_version="0.5.14"),
        StopRefusedError(data_dir="/d/db", origin="auto", owner_pid=12, users=[34, 56]),
        StopRefusedError(data_dir="/d/db", origin="api", owner_pid=12, owner_cmdline="python app"),
    ]


def test_hierarchy() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(BridgeNotFoundError, FileNotFoundError)
    assert issubclass(BridgeFatalError, BridgeStartError)
    assert issubclass(PortInUseError, BridgeStartError)
    for cls in (ConfigError, BridgeNotFoundError, BridgeStartError, DataDirLockedError):
        assert issubclass(cls, HiveBridgeError)
    assert BridgeNotRunningError.exit_status == 3
    assert ConfigError.exit_status == 1


@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_messages_say_what_where_and_fix(error: HiveBridgeError) -> None:
    message = str(error)
    assert message.startswith("hive-bridge: ")
    assert "Fix: " in message
    assert str(error) == error.args[0]


@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error: HiveBridgeError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)


def test_start_error_carries_node_error_and_log_tail() -> None:
    error = examples()[2]
    assert isinstance(error, BridgeStartError)
    assert (error.exit_code, error.code) == (1, "open_failed")
    message = str(error)
    assert "(exit status 1, code open_failed)" in message
    assert "Node said: PGlite could not open /d/db: Aborted()" in message
    assert (
        "Last lines of /d/db.bridge/server.log:\n    INFO opening\n    ERROR Aborted()" in message
    )


def test_fatal_error_keeps_the_last_error() -> None:
    fatal = examples()[4]
    assert isinstance(fatal, BridgeFatalError)
    assert fatal.attempts == 4
    assert fatal.log_tail.endswith("Aborted()")
    assert "gave up" in str(fatal) and "FATAL" in str(fatal)
    assert "last error: PGlite could not open the database" in str(fatal)


def test_locked_error_names_owner_and_commands() -> None:
    message = str(examples()[5])
    assert "in use by process 4242" in message
    assert "hive-bridge status --data-dir /d/db" in message
    assert "hive-bridge stop --data-dir /d/db" in message


def test_port_in_use_names_port_and_fix() -> None:
    error = examples()[3]
    assert isinstance(error, PortInUseError)
    assert error.port == 5432
    assert "port 127.0.0.1:5432 is already in use" in str(error)
    assert "HIVE_BRIDGE_PORT=0" in str(error)


def test_not_found_is_a_file_not_found_error() -> None:
    error = examples()[1]
    assert isinstance(error, FileNotFoundError)
    assert error.errno == 2
    assert error.filename == "PATH=/bin"


@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_errors_cross_a_process_boundary_as_json(error: HiveBridgeError) -> None:
    """How the detached supervisor hands its start error to the process that started it."""
    copy = error_from_dict(json.loads(json.dumps(error_to_dict(error))))
    assert type(copy) is type(error)
    assert str(copy) == str(error)


def test_unknown_errors_are_not_rebuilt() -> None:
    assert error_from_dict({"type": "NoSuchError", "fields": {}}) is None
    assert error_from_dict({"type": "HiveBridgeError", "fields": {}}) is None
    assert error_from_dict({"type": "ConfigError", "fields": {"unexpected": 1}}) is None
    assert error_from_dict("ConfigError") is None


def test_data_dir_error_says_nothing_was_changed() -> None:
    error = next(e for e in examples() if isinstance(e, DataDirError))
    message = str(error)
    assert message.startswith("hive-bridge: cannot open data dir /d/db: it was written by")
    assert "Node said: data dir /d/db was created by PGlite 0.4.0" in message
    assert "Hint: open it with PGlite 0.4.x" in message
    assert "Nothing in /d/db was changed or deleted.\nFix: upgrade by dump and restore" in message
    assert isinstance(error, BridgeStartError)


def test_port_in_use_names_its_owner() -> None:
    error = next(e for e in examples() if isinstance(e, PortInUseError) and e.owner_pid)
    assert "port 127.0.0.1:5433 is already in use by process 77 (postgres)" in str(error)
    assert "kill 77" in str(error)


def test_restore_version_error_gives_the_upgrade_path() -> None:
    error = next(e for e in examples() if isinstance(e, RestoreVersionError))
    assert (error.backup_version, error.installed_version) == ("0.4.2", "0.5.14")
    assert "PGlite 0.4.x" in str(error) and "pg_dump" in str(error)
    assert "Nothing was overwritten or deleted" in str(error)


def test_stop_refused_names_users_and_force() -> None:
    auto, api = (e for e in examples() if isinstance(e, StopRefusedError))
    assert "processes using it: 34, 56" in str(auto)
    assert "hive-bridge stop --force --data-dir /d/db" in str(auto)
    assert "started by the application in process 12 (python app)" in str(api)
