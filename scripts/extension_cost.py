"""What offering every PGlite extension costs: start time and RSS, eager (PGlite's own loading) vs
linked (bridge-js/src/extensions.js), in process and through the real server.

    .venv/bin/python scripts/extension_cost.py [--runs 5] [--json out.json]

In process (one Node process per run, PGlite opened on a copy of the data-dir template, `--liftoff-only`
as the server runs it): time from PGlite.create() to the first SELECT 1 answered, RSS after it, and the
first use of pgcrypto (CREATE EXTENSION + digest(): with linked extensions its library is compiled then).
Through the server (`node server.js`, as hive-bridge spawns it): time to the ready line and RSS, warm
(existing data dir) and cold (new data dir, a template copy), for `--extensions none` and the default
`all`. Medians; the machine's load average is printed, since all of this is CPU bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
JS = REPO / "bridge-js"

# One PGlite open in this Node process; prints one JSON line. argv: mode data_dir cache_dir
IN_PROCESS = r"""
import v8 from 'node:v8';
v8.setFlagsFromString('--liftoff-only');
const [mode, dataDir, cacheDir] = process.argv.slice(1);
const js = process.env.BRIDGE_JS;
const { PGlite } = await import(`${js}/node_modules/@electric-sql/pglite/dist/index.js`);
const X = await import(`${js}/src/extensions.js`);
const log = { info() {}, warn() {}, debug() {} };
const t0 = performance.now();
let extensions = {};
if (mode === 'vector-eager') {
  extensions.vector = (await import(`${js}/node_modules/@electric-sql/pglite-pgvector/dist/index.js`)).vector;
} else if (mode === 'all-eager') {
  const files = X.findBundles().map((b) => b.file);
  extensions = X.pgliteExtensions({ offered: ['*'], mode: 'bundles', files });
} else if (mode === 'all-linked') {
  extensions = X.pgliteExtensions(X.plan(['all'], { cacheDir, log }));
}
const db = await PGlite.create({ dataDir, extensions });
await db.query('SELECT 1');
const open_ms = performance.now() - t0;
const rss_mb = process.memoryUsage().rss / 1e6;
let first_use_ms = null;
if (mode !== 'none' && mode !== 'vector-eager') {
  const t1 = performance.now();
  await db.exec("CREATE EXTENSION pgcrypto; SELECT digest('abc', 'sha256')");
  first_use_ms = performance.now() - t1;
}
await db.close();
console.log(JSON.stringify({ open_ms, rss_mb, first_use_ms }));
"""

MODES = ["none", "vector-eager", "all-eager", "all-linked"]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def in_process(template: Path, cache: Path, work: Path, runs: int) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    for i in range(runs):
        for mode in MODES:  # interleaved, so load drifts hit every mode alike
            data_dir = work / f"ip-{mode}-{i}"
            shutil.copytree(template, data_dir)
            out = subprocess.run(
                ["node", "--input-type=module", "-e", IN_PROCESS, mode, str(data_dir), str(cache)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "BRIDGE_JS": str(JS)},
                timeout=300,
            )
            shutil.rmtree(data_dir)
            for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                if value is not None:
                    samples[mode].setdefault(key, []).append(float(value))
    return {m: {k: median(v) for k, v in s.items()} for m, s in samples.items()}


def server_start(data_dir: Path, cache: Path, extensions: str) -> tuple[float, float]:
    """Seconds from spawn to the ready line, and the server's RSS (MB) right after it."""
    argv = ["node", str(JS / "server.js"), "--data-dir", str(data_dir), "--no-lock"]
    argv += ["--port", "0", "--admin-port", "-1", "--cache-dir", str(cache)]
    argv += ["--extensions", extensions]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "ready":
                    elapsed = time.perf_counter() - t0
                    rss = psutil.Process(proc.pid).memory_info().rss / 1e6
                    return elapsed, rss
                raise RuntimeError(f"server failed: {line.strip()}")
        raise RuntimeError(f"server exited with {proc.wait()} before it was ready")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def through_server(cache: Path, work: Path, runs: int) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {}
    for i in range(runs):
        for ext in ["none", "all"]:
            cold_dir = work / f"srv-{ext}-{i}"
            for kind, data_dir in (("cold", cold_dir), ("warm", cold_dir)):
                seconds, rss = server_start(data_dir, cache, ext)
                row = samples.setdefault(f"{kind} start, --extensions {ext}", {})
                row.setdefault("start_ms", []).append(seconds * 1000)
                row.setdefault("rss_mb", []).append(rss)
            shutil.rmtree(cold_dir)
    return {k: {m: median(v) for m, v in s.items()} for k, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hive-ext-cost-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        subprocess.run(
            ["node", str(JS / "server.js"), "--prepare-template", "--cache-dir", str(cache)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        template = next((cache / "templates").iterdir())
        extracted = next((cache / "extensions").iterdir())
        size = sum(f.stat().st_size for f in extracted.rglob("*") if f.is_file())
        load_before = os.getloadavg()[0]
        results: dict[str, Any] = {
            "in_process": in_process(template, cache, work, args.runs),
            "server": through_server(cache, work, args.runs),
            "extracted_mb": size / 1e6,
            "runs": args.runs,
            "load_average": [load_before, os.getloadavg()[0]],
            "cpus": os.cpu_count(),
        }
    print(
        f"{args.runs} runs each, medians; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(
        f"extracted bundles in the cache: {results['extracted_mb']:.1f} MB (once per PGlite version)"
    )
    print("in process: PGlite.create() -> first SELECT 1")
    for mode, row in results["in_process"].items():
        first = row.get("first_use_ms")
        extra = f", first pgcrypto use {first:.0f} ms" if first is not None else ""
        print(f"  {mode:13} {row['open_ms']:6.0f} ms, RSS {row['rss_mb']:4.0f} MB{extra}")
    print("through the server: spawn -> ready line")
    for name, row in results["server"].items():
        print(f"  {name:30} {row['start_ms']:6.0f} ms, RSS {row['rss_mb']:4.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
