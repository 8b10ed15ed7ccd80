"""How long `mlsafety audit` takes on the embedded default (the spine's goal: under 60 s on 2 cores).

Runs the real command in a subprocess (full and --quick profiles), several times, and records the
median wall time and the per-check time stored in the results database.

    .venv/bin/python bench/audit.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_once(quick: bool, threads: int) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "runs.sqlite"
        cmd = [sys.executable, "-m", "mlsafety.cli", "audit", "--db", str(db), "--report", f"{tmp}/r.html", "--json"]
        if quick:
            cmd.append("--quick")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        con = sqlite3.connect(db)
        per_check = dict(con.execute("SELECT check_name, SUM(seconds) FROM tasks GROUP BY check_name").fetchall())
        con.close()
    return wall, per_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    out: dict[str, object] = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "repeats": args.repeats,
    }
    lines = [
        "# `mlsafety audit` on the embedded default",
        "",
        f"{args.threads} threads, median of {args.repeats} runs (wall time of the whole command, start-up included).",
        "",
        "| profile | median s | slowest checks (s) |",
        "|---|---|---|",
    ]
    for quick in (False, True):
        runs = [run_once(quick, args.threads) for _ in range(args.repeats)]
        walls = [w for w, _ in runs]
        per_check = {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in runs[0][1]}
        name = "quick" if quick else "full"
        out[name] = {"median_s": statistics.median(walls), "all_s": walls, "per_check_s": per_check}
        top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_check.items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"| {name} | {statistics.median(walls):.1f} | {top} |")
        print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audit.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "audit.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
