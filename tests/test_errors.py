"""The error hierarchy: types, structured attributes, messages with a fix, pickling."""

from __future__ import annotations

import pickle

import pytest

from hive_bridge.errors import (
    BridgeFatalError,
    BridgeNotFoundError,
    BridgeNotRunningError,
    BridgeStartError,
    ConfigError,
    DataDirLockedError,
    HiveBridgeError,
    PortInUseError,
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
