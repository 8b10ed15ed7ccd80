"""How long `mlsafety audit` takes: the embedded image default (the spine's goal: under 60 s on 2 cores)
and the text audit of `minilm-mr` on `mr` with the tweets / nyt / amazon OOD sets (issue 13's goal:
under 3 minutes on 2 cores).

Runs the real command in a subprocess (image: full and --quick profiles; text: the full profile),
several times, and records the median wall time, the per-check time stored in the results database
and the number of stored rows. Image results go to ``bench/results/audit.{json,md}``, text results to
``bench/results/audit_text.{json,md}``.

    .venv/bin/python bench/audit.py [--repeats 3] [--threads 2] [--only image|text]
    .venv/bin/python bench/audit.py --only text --text-model path/to/hf_model_dir   # any text classifier
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


def run_once(quick: bool, threads: int, extra: tuple[str, ...] = ()) -> tuple[float, dict[str, float], int]:
    """One ``mlsafety audit`` in a subprocess: wall seconds, seconds per check, rows stored."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "runs.sqlite"
        cmd = [sys.executable, "-m", "mlsafety.cli", "audit", "--db", str(db), "--report", f"{tmp}/r.html", "--json"]
        if quick:
            cmd.append("--quick")
        cmd += extra
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        con = sqlite3.connect(db)
        per_check = dict(con.execute("SELECT check_name, SUM(seconds) FROM tasks GROUP BY check_name").fetchall())
        (rows,) = con.execute("SELECT COUNT(*) FROM results").fetchone()
        con.close()
    return wall, per_check, int(rows)


def profile(name: str, quick: bool, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Median over ``args.repeats`` runs: the JSON entry and the Markdown table line."""
    runs = [run_once(quick, args.threads, extra) for _ in range(args.repeats)]
    walls = [w for w, _, _ in runs]
    per_check = {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in runs[0][1]}
    entry = {"median_s": statistics.median(walls), "all_s": walls, "per_check_s": per_check, "rows": runs[0][2]}
    top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_check.items(), key=lambda kv: -kv[1])[:5])
    line = f"| {name} | {statistics.median(walls):.1f} | {runs[0][2]} | {top} |"
    print(line, flush=True)
    return entry, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("image", "text"), default=None, help="Run one audit only.")
    parser.add_argument("--text-model", default="minilm-mr", help="The text model (zoo name or model folder).")
    parser.add_argument("--text-data", default=None, help="--data of the text audit (default: the model's).")
    args = parser.parse_args()
    machine: dict[str, object] = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "repeats": args.repeats,
    }
    header = ["| profile | median s | rows | slowest checks (s) |", "|---|---|---|---|"]
    note = f"{args.threads} threads, median of {args.repeats} runs (wall time of the whole command, start-up included)."
    RESULTS.mkdir(exist_ok=True)
    if args.only in (None, "image"):
        out = dict(machine)
        lines = ["# `mlsafety audit` on the embedded default", "", note, "", *header]
        for quick in (False, True):
            name = "quick" if quick else "full"
            out[name], line = profile(name, quick, args)
            lines.append(line)
        (RESULTS / "audit.json").write_text(json.dumps(out, indent=1))
        (RESULTS / "audit.md").write_text("\n".join(lines) + "\n")
    if args.only in (None, "text"):
        extra = ("--model", args.text_model) + (("--data", args.text_data) if args.text_data else ())
        out = {**machine, "command": "mlsafety audit " + " ".join(extra), "goal_s": 180}
        lines = [f"# `mlsafety audit {' '.join(extra)}` (text)", "", note, "Goal: under 180 s on 2 cores.", "", *header]
        out["full"], line = profile("text full", False, args, extra)
        lines.append(line)
        (RESULTS / "audit_text.json").write_text(json.dumps(out, indent=1))
        (RESULTS / "audit_text.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
