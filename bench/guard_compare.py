"""The guard's overhead, this source tree against another one (e.g. the commit before a change), side by side.

Runs ``bench/guard.py --overhead-only`` in fresh processes, alternating the other tree (``--old-src``, put
first on ``PYTHONPATH``) and this one, ``--rounds`` times; each run audits, exports and times the zoo
models as ``bench/guard.py`` does (interleaved model / guard repeats on one torch thread, thread CPU time).
Writes ``bench/results/guard_compare.{json,md}``: every run's medians and, per model and batch size, the
median over rounds of the guard / model ratio and of the microseconds the guard adds.

Run: ``.venv/bin/python bench/guard_compare.py [--old-commit C | --old-src DIR]``; the other tree defaults
to commit ``8aa2d9e``, the last one before the guard's per-call path was cut down (its ``src/`` is taken
out of git into a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OLD_COMMIT = "8aa2d9e"


def one_run(src: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(ROOT / "bench" / "guard.py"), "--overhead-only", "--json-out", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-commit", default=OLD_COMMIT, help="the commit to compare against (default %(default)s)")
    ap.add_argument("--old-src", type=Path, help="the other tree's src/ folder (instead of --old-commit)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.old_src is None:
            archive = subprocess.run(["git", "archive", args.old_commit, "src"], cwd=ROOT, capture_output=True)
            if archive.returncode != 0:
                ap.error(f"git archive {args.old_commit} failed: {archive.stderr.decode().strip()}")
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            old, label = Path(tmp) / "src", args.old_commit
        else:
            old, label = args.old_src.resolve(), str(args.old_src)
        if not (old / "mlsafety" / "guard").is_dir():
            ap.error(f"{old} has no mlsafety/guard: pass the src/ folder of a checkout")
        trees = {label: old, "this tree": ROOT / "src"}
        result = compare(trees, args.rounds, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guard_compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "guard_compare.md").write_text(markdown(result, list(trees)))
    print((RESULTS / "guard_compare.md").read_text())


def compare(trees: dict[str, Path], rounds: int, tmp: Path) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for i in range(rounds):
        for label, src in trees.items():
            r = one_run(src, tmp / f"{i}.json")
            runs.append({"round": i, "tree": label, "load_1min": os.getloadavg()[0], "models": r["models"]})
            ratios = {m: [round(o["ratio_median"], 3) for o in e["overhead"]] for m, e in r["models"].items()}
            print(label, i, ratios, flush=True)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": r["machine"],
        "trees": {k: str(v) for k, v in trees.items()},
        "runs": runs,
    }


def markdown(r: dict[str, Any], labels: list[str]) -> str:
    out = ["# Guard overhead: two source trees side by side (issue 20)", ""]
    out += [f"Machine: {r['machine']}. Measured {r['when']}; the runs alternate between the trees "
            f"({len(r['runs'])} runs in all).", ""]  # fmt: skip
    out += ["Per model and batch size, the median over rounds of each run's median guard / model ratio and of "
            "the microseconds the guard adds (each run: interleaved repeats, thread CPU time). "
            "Goal: <= 1.15x.", ""]  # fmt: skip
    models = list(r["runs"][0]["models"])
    for m in models:
        out += [f"## {m} (monitor `{r['runs'][0]['models'][m]['monitor']}`)", ""]
        out += ["| batch | " + " | ".join(f"{t}: ratio | {t}: added us" for t in labels) + " | runs' ratios |",
                "|---" * (2 * len(labels) + 2) + "|"]  # fmt: skip
        batches = [o["batch"] for o in r["runs"][0]["models"][m]["overhead"]]
        for j, b in enumerate(batches):
            cells, spread = [], []
            for t in labels:
                os_ = [run["models"][m]["overhead"][j] for run in r["runs"] if run["tree"] == t]
                ratio = statistics.median(o["ratio_median"] for o in os_)
                added = statistics.median(1000 * (o["guard_ms_median"] - o["model_ms_median"]) for o in os_)
                cells += [f"{ratio:.2f}", f"{added:.0f}"]
                spread.append(f"{t}: " + ", ".join(f"{o['ratio_median']:.2f}" for o in os_))
            out.append(f"| {b} | " + " | ".join(cells) + " | " + "; ".join(spread) + " |")
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
