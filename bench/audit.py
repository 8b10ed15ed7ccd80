"""How long `mlsafety audit` takes: the embedded image default (the spine's goal: under 60 s on 2 cores)
and the text audit of `minilm-mr` on `mr` with the tweets / nyt / amazon OOD sets (issue 13's goal:
under 3 minutes on 2 cores).

Runs the real command in a subprocess (image: full and --quick profiles; text: the full profile),
several times, and records the median wall time, the per-check time stored in the results database
and the number of stored rows. Image results go to ``bench/results/audit.{json,md}``, text results to
``bench/results/audit_text.{json,md}``.

    .venv/bin/python bench/audit.py [--repeats 3] [--threads 2] [--only image|text]
    .venv/bin/python bench/audit.py --only text --text-model path/to/hf_model_dir   # any text classifier

Issue 22 (the audit's cost on a user's model), results in ``bench/results/audit_budget.{json,md}`` and
``audit_threads.{json,md}``:

    .venv/bin/python bench/audit.py --only budget32     # ResNet-18-style 3x32x32, --budget 1m, every check
    .venv/bin/python bench/audit.py --only budget224    # the same at 224 x 224, --budget 5m
    .venv/bin/python bench/audit.py --only threads      # the default audit next to a competing CPU load

The models are built by :func:`resnet18_style` (random weights, seeded: timing, not accuracy) on
seeded random images (1,000 test, two OOD sets of 500), written to a temporary folder.
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
HERE = Path(__file__).resolve()


def resnet18_style(width: int = 16, classes: int = 10):  # type: ignore[no-untyped-def]
    """A ResNet-18-shaped classifier (4 stages of 2 basic blocks, widths w, 2w, 4w, 8w; global pooling
    and a Linear head), seeded; ``width`` 16 has about 0.7 M parameters. Any input size."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.skip = nn.Sequential()
            if stride != 1 or cin != cout:
                self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):  # type: ignore[no-untyped-def]
            out = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(out)) + self.skip(x))

    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, w in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers).eval()


def resnet18_style_224():  # type: ignore[no-untyped-def]
    """The 224 px variant: a stride-4 stem first (as ResNet's 7x7/2 conv and 3x3/2 max-pool do)."""
    from torch import nn

    body = resnet18_style()
    stem = nn.Sequential(nn.Conv2d(3, 3, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(stem, body).eval()


def _user_data(folder: Path, size: int) -> list[str]:
    """Seeded smooth random images: 1,000 test (10 classes), two OOD sets of 500; the audit's arguments."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)

    def images(n: int) -> np.ndarray:
        low = torch.rand(n, 3, 8, 8, generator=g)
        return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1).numpy()

    rng = np.random.default_rng(0)
    np.savez(folder / "test.npz", x=images(1000), y=rng.integers(0, 10, 1000))
    for name in ("near", "far"):
        np.savez(folder / f"{name}.npz", x=images(500), y=-np.ones(500, dtype=np.int64))
    return ["--data", str(folder / "test.npz"), "--ood", str(folder / "near.npz"), "--ood", str(folder / "far.npz")]


def _headlines(db: Path) -> dict[str, bool]:
    """Per image check that has a headline: whether its stored rows give it one (every check present)."""
    from mlsafety.audit import CHECKS, Store

    with Store(db, create=False, readonly=True) as store:
        run = store.runs()[0]
        rows = store.results(run.run_id)
    out = {}
    for name in ("clean", "adversarial", "certified", "corruptions", "tta", "calibration", "selective", "ood",
                 "transparency", "trojans", "defence-in-depth"):  # fmt: skip
        mine = [r for r in rows if r.check == name and r.metric != "budget_not_measured"]
        out[name] = bool(mine) and bool(CHECKS.get(name).view.headlines(mine))
    return out


def budget_run(size: int, budget: str, factory: str, config: str | None = None) -> dict:
    """One `mlsafety audit --budget` of the ResNet-18-style model on a user's npz data: wall time, the
    estimate, the stored checks, the sizes the budget chose, whether every check stored its headline, and
    what the tasks' deadlines stopped (``config``: an extra ``--config`` TOML)."""
    import re

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = folder / "runs.sqlite"
        cmd = [sys.executable, "-m", "mlsafety.cli", "audit", "--model", f"{HERE}:{factory}", "--budget", budget,
               *_user_data(folder, size), "--db", str(db), "--report", str(folder / "r.html"),
               *(["--config", config] if config else [])]  # fmt: skip
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"audit failed ({proc.returncode}): {proc.stderr[-2000:]}")
        estimate = next((ln for ln in proc.stderr.splitlines() if ln.startswith("estimate:")), "")
        con = sqlite3.connect(db)
        checks = [c for (c,) in con.execute("SELECT DISTINCT check_name FROM tasks ORDER BY check_name")]
        per_check = dict(con.execute("SELECT check_name, SUM(seconds) FROM tasks GROUP BY check_name").fetchall())
        chosen = {m: v for m, v in con.execute(
            "SELECT metric, value FROM results WHERE check_name='audit-plan' AND metric LIKE '%_chosen'")}  # fmt: skip
        skipped = [m for (m,) in con.execute("SELECT metric FROM results WHERE metric='not_applicable'")]
        stopped = con.execute("SELECT COUNT(*) FROM results WHERE metric='budget_not_measured' OR "
                              "params_json LIKE '%budget_stopped%'").fetchone()[0]  # fmt: skip
        con.close()
        headlines = _headlines(db)
    seconds = float(re.sub(r"[^0-9.]", "", budget)) * (60 if budget.endswith("m") else 1)
    return {"size": size, "budget": budget, "budget_s": seconds, "wall_s": wall, "ratio": wall / seconds,
            "estimate": estimate, "checks": checks, "per_check_s": per_check, "chosen": chosen,
            "not_applicable_rows": len(skipped), "headlines": headlines, "rows_stopped_by_deadlines": stopped,
            "load_before": load_before, "config": config}  # fmt: skip


def budget_bench(which: str, config: str | None = None, label: str = "") -> None:
    size, budget, factory = (32, "1m", "resnet18_style") if which == "budget32" else (224, "5m", "resnet18_style_224")
    r = budget_run(size, budget, factory, config)
    out_json = RESULTS / "audit_budget.json"
    data = json.loads(out_json.read_text()) if out_json.exists() else {}
    data[which + label] = {**r, "load_1min": os.getloadavg()[0], "cpus": os.cpu_count()}
    out_json.write_text(json.dumps(data, indent=1))
    lines = ["# `mlsafety audit --budget` on a user's ResNet-18-style model (issue 22)", "",
             "Wall time of the whole command (start-up, probe, report included) against the budget; goal: within "
             "10% of it with every check present. The machine was shared (load average in the table), so the "
             "figures are noisy: one run each.", "",
             "| run | model | budget | wall s | wall / budget | load | headlines present | rows stopped by deadlines | "
             "estimate | sizes chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, e in data.items():
        sizes = ", ".join(f"{k.removesuffix('_chosen')} {int(v)}" for k, v in e["chosen"].items())
        load = e.get("load_1min")
        heads = e.get("headlines")
        present = "not recorded" if heads is None else f"{sum(heads.values())} of {len(heads)}"
        lines.append(f"| {key} | {e['size']} px ResNet-18-style | {e['budget']} | {e['wall_s']:.1f} | "
                     f"{e['ratio']:.2f} | {'?' if load is None else f'{load:.1f}'} | {present} | "
                     f"{e.get('rows_stopped_by_deadlines', '-')} | {e['estimate'].removeprefix('estimate: ')} | "
                     f"{sizes} |")  # fmt: skip
    (RESULTS / "audit_budget.md").write_text("\n".join(lines) + "\n")
    print(lines[-1], flush=True)


def _burn(seconds: float) -> None:  # a competing process: one busy core
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1


def threads_bench(repeats: int) -> None:
    """The default audit with two competing busy processes on the machine: torch's old behaviour (threads =
    all cores, OpenMP threads spinning while they wait) against the new one (threads from the free cores,
    passive waiting). Pairs are run alternately so the machine's other load hits both alike."""
    import multiprocessing as mp

    settings = {
        "before (2 threads, OMP_WAIT_POLICY=ACTIVE)": {"MLSAFETY_THREADS": str(os.cpu_count()),
                                                       "OMP_WAIT_POLICY": "ACTIVE"},
        "after (free cores, PASSIVE)": {},
    }  # fmt: skip
    walls: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(repeats):
        for name, env in settings.items():
            burners = [mp.Process(target=_burn, args=(600,)) for _ in range(2)]
            for b in burners:
                b.start()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [sys.executable, "-m", "mlsafety.cli", "audit", "--quick", "--db", f"{tmp}/r.sqlite",
                           "--report", "", "--json"]  # fmt: skip
                    clean_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True, env={**clean_env, **env}, stdout=subprocess.DEVNULL)
                    walls[name].append(time.perf_counter() - t0)
            finally:
                for b in burners:
                    b.terminate()
                    b.join()
            print(name, walls[name][-1], flush=True)
    before, after = (walls[k] for k in settings)
    ratios = [b / a for b, a in zip(before, after, strict=True)]
    out = {"walls": walls, "ratios_before_over_after": ratios, "cpus": os.cpu_count(),
           "load_1min_at_end": os.getloadavg()[0], "command": "mlsafety audit --quick + 2 busy processes"}  # fmt: skip
    (RESULTS / "audit_threads.json").write_text(json.dumps(out, indent=1))
    lines = ["# `mlsafety audit --quick` next to two busy processes: threads and OpenMP waiting (issue 22)", "",
             f"{os.cpu_count()} cores; the machine was also shared with other work (noisy). Runs alternate "
             "before/after; ratio = before / after of each pair.", "",
             "| setting | wall s per run |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {', '.join(f'{w:.1f}' for w in v)} |" for k, v in walls.items()]
    lines += ["", f"Ratios before/after: {', '.join(f'{r:.2f}' for r in ratios)} (median "
              f"{statistics.median(ratios):.2f})."]  # fmt: skip
    (RESULTS / "audit_threads.md").write_text("\n".join(lines) + "\n")


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
    parser.add_argument(
        "--only", choices=("image", "text", "budget32", "budget224", "threads"), default=None, help="Run one bench."
    )
    parser.add_argument("--audit-config", default=None, help="An extra --config TOML for the budget runs.")
    parser.add_argument("--label", default="", help="Suffix of the budget run's key in audit_budget.json.")
    parser.add_argument("--text-model", default="minilm-mr", help="The text model (zoo name or model folder).")
    parser.add_argument("--text-data", default=None, help="--data of the text audit (default: the model's).")
    args = parser.parse_args()
    if args.only in ("budget32", "budget224"):
        budget_bench(args.only, args.audit_config, args.label)
        return
    if args.only == "threads":
        threads_bench(args.repeats)
        return
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
