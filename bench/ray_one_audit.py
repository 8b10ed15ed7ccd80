"""One audit on a local Ray with 2 CPUs: how the tasks travel (``RayExecutor._units``), three ways.

``RayExecutor`` sends a check's tasks together when the cluster has fewer CPUs than the run has checks (they
share what they compute: the trojan scan feeds its hazards). A check whose tasks are independent (the attacks:
the plots task reads their rows) goes task by task, unless another check reads its hazards: defence in depth
judges the attacks, as in the default audit, so there every check goes whole. Compared here: that default, the
attacks split anyway, and every task on its own (a worker that gets one recomputes what another worker already
has). This bench runs the default audit (digits-cnn, every check) each
way on one Ray session, in rotating order, and compares wall time, task-seconds and rows (issue 20).

Run: ``.venv/bin/python bench/ray_one_audit.py [--reps 3]``; writes ``bench/results/ray_one_audit.{md,json}``.
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
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    import ray

    from mlsafety.audit import AuditConfig, RayExecutor, run_audit

    default = RayExecutor._units

    def split_attacks(self: object, remote: list) -> list:
        units: list = []
        for item in remote:
            if item[1].independent_tasks or not units or units[-1][0][1] is not item[1]:
                units.append([item])
            else:
                units[-1].append(item)
        return units

    modes = {"default": default, "attacks split": split_attacks, "per task": lambda self, remote: [[t] for t in remote]}
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
                order = list(modes)[rep % 3 :] + list(modes)[: rep % 3]
                pair: dict[str, dict[str, float]] = {}
                for mode in order:
                    RayExecutor._units = modes[mode]  # type: ignore[method-assign]
                    db = Path(tmp) / f"{mode.replace(' ', '-')}-{rep}.sqlite"
                    t0 = time.perf_counter()
                    res = run_audit(AuditConfig(), db=db, report="", executor=RayExecutor())
                    pair[mode] = {"wall_s": time.perf_counter() - t0, "task_s": _task_seconds(db)}
                    rows[mode] = [(r.check, r.hazard, r.metric, r.value, r.ci_low, r.ci_high) for r in res.rows]
                RayExecutor._units = default  # type: ignore[method-assign]
                pairs.append(pair)
                print(json.dumps(pair), flush=True)
                load.append(os.getloadavg()[0])
    finally:
        RayExecutor._units = default  # type: ignore[method-assign]
        ray.shutdown()
    local_rows = [(r.check, r.hazard, r.metric, r.value, r.ci_low, r.ci_high) for r in local.rows]
    out = {
        "cpus": args.cpus, "reps": args.reps, "load_1min": load, "local_s": local_s, "local_task_s": local_task_s,
        "pairs": pairs, "rows_identical": all(r == local_rows for r in rows.values()),
        "speedups": [p["attacks split"]["wall_s"] / p["default"]["wall_s"] for p in pairs],
        "speedups_per_task": [p["per task"]["wall_s"] / p["default"]["wall_s"] for p in pairs],
    }  # fmt: skip
    Path(args.out).with_suffix(".json").write_text(json.dumps(out, indent=1))
    Path(args.out).with_suffix(".md").write_text(_markdown(out))
    print(_markdown(out))


def _task_seconds(db: Path) -> float:
    con = sqlite3.connect(db)
    try:
        return float(con.execute("SELECT sum(seconds) FROM tasks").fetchone()[0])
    finally:
        con.close()


def _markdown(o: dict) -> str:
    lines = [
        "# One audit on Ray: how the tasks travel (`bench/ray_one_audit.py`)",
        "",
        f"The default audit (digits-cnn, every check) on a local Ray with {o['cpus']} CPUs, {o['reps']} rounds in "
        f"rotating order; 1-minute load {', '.join(f'{x:.1f}' for x in o['load_1min'])} (this bench's own "
        f"processes count in it). One process: {o['local_s']:.1f} s, {o['local_task_s']:.1f} task-seconds.",
        "",
        "- default: a streaming Ray task per check (defence in depth reads the attacks, so they stay together);",
        "- attacks split: the same, but each attack task its own Ray task (the plots task reads their rows);",
        "- per task: every task its own Ray task.",
        "",
        "| round | default: wall s | task-s | attacks split: wall s | task-s | per task: wall s | task-s "
        "| attacks split / default | per task / default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (p, r, t) in enumerate(zip(o["pairs"], o["speedups"], o["speedups_per_task"], strict=True)):
        d, w, e = p["default"], p["attacks split"], p["per task"]
        lines.append(
            f"| {i} | {d['wall_s']:.1f} | {d['task_s']:.1f} | {w['wall_s']:.1f} | {w['task_s']:.1f} | "
            f"{e['wall_s']:.1f} | {e['task_s']:.1f} | {r:.2f}x | {t:.2f}x |"
        )
    s, t = o["speedups"], o["speedups_per_task"]
    lines += [
        "",
        f"Mean attacks split / default: {statistics.mean(s):.2f}x (range {min(s):.2f}-{max(s):.2f}); per task / "
        f"default: {statistics.mean(t):.2f}x (range {min(t):.2f}-{max(t):.2f}). Rows identical (every way and one "
        f"process): {o['rows_identical']}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
