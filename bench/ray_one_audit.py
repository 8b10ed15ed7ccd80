"""One audit on a local Ray with 2 CPUs: each check's tasks as one streaming Ray task against every task on its own.

``RayExecutor`` sends a check's tasks together when the cluster has fewer CPUs than the run has checks (they
share what they compute: an attack's adversarial examples feed its plots task, the trojan scan its hazards);
sent one by one, the worker that gets a task recomputes what another worker already has. This bench runs the
default audit (digits-cnn, every check) both ways on one Ray session, in alternating order, and compares wall
time, task-seconds and rows (issue 20).

Run: ``.venv/bin/python bench/ray_one_audit.py [--reps 4]``; writes ``bench/results/ray_one_audit.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results" / "ray_one_audit"


def _warm() -> int:
    import mlsafety.audit  # noqa: F401  (what a worker imports to run its first task)

    time.sleep(1.0)
    return os.getpid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    import ray

    from mlsafety.audit import AuditConfig, RayExecutor, run_audit

    by_check = RayExecutor._groups
    modes = {"per check": by_check, "per task": lambda self, remote: {}}
    load = [os.getloadavg()[0]]
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    pairs: list[dict[str, dict[str, float]]] = []
    rows: dict[str, list[tuple]] = {}
    try:
        ray.get([ray.remote(_warm).remote() for _ in range(args.cpus)])
        with tempfile.TemporaryDirectory() as tmp:
            local_db = Path(tmp) / "local.sqlite"
            t0 = time.perf_counter()
            local = run_audit(AuditConfig(), db=local_db, report="")
            local_s = time.perf_counter() - t0
            local_task_s = _task_seconds(local_db)
            for rep in range(args.reps):
                order = list(modes) if rep % 2 == 0 else list(reversed(modes))
                pair: dict[str, dict[str, float]] = {}
                for mode in order:
                    RayExecutor._groups = modes[mode]  # type: ignore[method-assign]
                    db = Path(tmp) / f"{mode.replace(' ', '-')}-{rep}.sqlite"
                    t0 = time.perf_counter()
                    res = run_audit(AuditConfig(), db=db, report="", executor=RayExecutor())
                    pair[mode] = {"wall_s": time.perf_counter() - t0, "task_s": _task_seconds(db)}
                    rows[mode] = [(r.check, r.hazard, r.metric, r.value, r.ci_low, r.ci_high) for r in res.rows]
                RayExecutor._groups = by_check  # type: ignore[method-assign]
                pairs.append(pair)
                print(json.dumps(pair), flush=True)
                load.append(os.getloadavg()[0])
    finally:
        RayExecutor._groups = by_check  # type: ignore[method-assign]
        ray.shutdown()
    local_rows = [(r.check, r.hazard, r.metric, r.value, r.ci_low, r.ci_high) for r in local.rows]
    out = {
        "cpus": args.cpus, "reps": args.reps, "load_1min": load, "local_s": local_s, "local_task_s": local_task_s,
        "pairs": pairs, "rows_identical": rows["per check"] == rows["per task"] == local_rows,
        "speedups": [p["per task"]["wall_s"] / p["per check"]["wall_s"] for p in pairs],
    }  # fmt: skip
    OUT.with_suffix(".json").write_text(json.dumps(out, indent=1))
    OUT.with_suffix(".md").write_text(_markdown(out))
    print(_markdown(out))


def _task_seconds(db: Path) -> float:
    con = sqlite3.connect(db)
    try:
        return float(con.execute("SELECT sum(seconds) FROM tasks").fetchone()[0])
    finally:
        con.close()


def _markdown(o: dict) -> str:
    lines = [
        "# One audit on Ray: a streaming task per check against every task on its own (`bench/ray_one_audit.py`)",
        "",
        f"The default audit (digits-cnn, every check) on a local Ray with {o['cpus']} CPUs, {o['reps']} pairs in "
        f"alternating order; 1-minute load {', '.join(f'{x:.1f}' for x in o['load_1min'])} (this bench's own "
        f"processes count in it). One process: {o['local_s']:.1f} s, {o['local_task_s']:.1f} task-seconds.",
        "",
        "| pair | per check: wall s | task-seconds | per task: wall s | task-seconds | per task / per check |",
        "|---|---|---|---|---|---|",
    ]
    for i, (p, r) in enumerate(zip(o["pairs"], o["speedups"], strict=True)):
        c, t = p["per check"], p["per task"]
        lines.append(
            f"| {i} | {c['wall_s']:.1f} | {c['task_s']:.1f} | {t['wall_s']:.1f} | {t['task_s']:.1f} | {r:.2f}x |"
        )
    lines += [
        "",
        f"Mean per task / per check: {statistics.mean(o['speedups']):.2f}x (range {min(o['speedups']):.2f}-"
        f"{max(o['speedups']):.2f}). Rows identical (per check, per task and one process): {o['rows_identical']}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
