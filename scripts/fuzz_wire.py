#!/usr/bin/env python3
"""Fuzz the wire front end for longer than CI does.

Runs tests/wire/test_wire_fuzz.py with many random examples (default 5000; a few minutes on 2 cores):
every example is a random sequence of frontend messages from one client; the test asserts that client
never hangs and that other clients and the server are unaffected.

    .venv/bin/python scripts/fuzz_wire.py [--examples N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--examples", type=int, default=5000, help="random message sequences to try"
    )
    args = parser.parse_args()
    env = dict(os.environ, FUZZ_EXAMPLES=str(args.examples), FUZZ_RANDOM="1")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
        str(ROOT / "tests" / "wire" / "test_wire_fuzz.py"),
    ]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
