"""Child worker processes for the scripts that load a server from several processes (soak, torture)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def spawn_worker(script: str, flag: str, cfg: dict[str, Any]) -> subprocess.Popen[str]:
    """Run ``script flag`` in a child Python that reads its JSON config from the first line of stdin.

    stdout is a pipe the caller reads (one JSON line per report); stdin stays open, so the child can
    treat its EOF as "the parent is gone".
    """
    proc = subprocess.Popen(
        [sys.executable, str(Path(script).resolve()), flag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(cfg) + "\n")
    proc.stdin.flush()
    return proc
