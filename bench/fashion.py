"""``fashion-cnn`` on Fashion-MNIST next to ``digits-cnn`` on the 8x8 digits: the figures of issue 22.

Parts (each can be skipped), written to ``bench/results/fashion.{json,md}``:

1. **clean**: test accuracy on the whole test split (10,000 / 360 images) with its exact
   Clopper-Pearson 95% interval, and the weights' size.
2. **figures**: one ``mlsafety audit`` per model (a subprocess, ``--max-samples`` inputs of each data
   source, seeded) with the checks a reader compares across models: OOD AUROC of every detector on
   each of the model's default OOD sets (the best three per set are listed), robust accuracy under
   mlsafety's standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at Linf eps 0.1, 0.2, 0.3 (the
   MNIST family's budgets) on ``--n-adv`` test images, corruption accuracy and mCE, and the
   randomized-smoothing certificates. Values come from the results database, with their intervals.
3. **time**: the default full-profile audit of each model (``mlsafety audit --model NAME``, no
   options) timed end to end, with the time per check from the database and the load average
   before and after (the machine may be shared: say so when reading the figures).
4. **reproduce** (``--retrain``): ``mlsafety zoo train fashion-cnn``'s recipe run again (into a
   temporary file, with ``--retrain-threads`` threads: another thread count changes the float sums
   as another CPU would), compared with the shipped weights: both test accuracies with intervals,
   their difference and the share of test images on which the two models agree.

    .venv/bin/python bench/fashion.py [--models fashion-cnn digits-cnn] [--n-adv 500] [--max-samples 1000]
        [--threads 2] [--skip clean figures time] [--retrain] [--retrain-threads 2] [--merge]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
EPS = (0.1, 0.2, 0.3)


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _load() -> float:
    return os.getloadavg()[0]


def clean(name: str) -> dict[str, Any]:
    """Accuracy of zoo model ``name`` on its dataset's whole test split, with the exact interval."""
    from mlsafety import zoo
    from mlsafety.metrics import clopper_pearson

    model = zoo.load_model(name)
    test = zoo.load_dataset(zoo.model_info(name).dataset, "test")
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb, _ in test.batches(1000)])
    k, n = int((pred == test.y).sum()), len(test)
    low, high = clopper_pearson(k, n)
    size = zoo.weights_path(name).stat().st_size
    params = sum(p.numel() for p in model.parameters())
    return {"accuracy": k / n, "ci": [low, high], "n": n, "weights_bytes": size, "parameters": params}


def _rows(db: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    cols = ("check_name", "hazard", "metric", "value", "ci_low", "ci_high", "n")
    rows = [dict(zip(cols, r, strict=True)) for r in con.execute(f"SELECT {', '.join(cols)} FROM results")]
    con.close()
    return rows


def _audit(
    args: list[str], threads: int, timeout: float | None = None
) -> tuple[float, Path, list[dict[str, Any]], dict[str, float], str]:
    """One ``mlsafety audit`` in a subprocess: wall seconds, the rows, seconds per check, stderr tail.

    Past ``timeout`` seconds the audit is stopped (SIGTERM: it keeps its finished tasks) and the wall
    time returned is negative: more than ``-wall`` seconds; the per-check times are those stored by then.
    """
    tmp = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    db = tmp / "runs.sqlite"
    cmd = [sys.executable, "-m", "mlsafety.cli", "audit", "--db", str(db), "--report", str(tmp / "r.html"), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd + args, env=_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        wall = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        proc.terminate()
        _, stderr = proc.communicate()
        wall = -(time.perf_counter() - t0)
    if wall > 0 and proc.returncode not in (0, 1):  # 1: a gate failed (none are set here)
        raise SystemExit(f"audit {' '.join(args)} failed ({proc.returncode}): {stderr[-2000:]}")
    con = sqlite3.connect(db)
    per_check = dict(con.execute("SELECT check_name, SUM(seconds) FROM tasks GROUP BY check_name").fetchall())
    con.close()
    return wall, db, _rows(db), per_check, stderr[-500:]


def _fmt(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r["ci_low"] is None:
        return f"{r['value']:.3f}"
    return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _find(rows: list[dict[str, Any]], check: str, hazard: str, metric: str) -> dict[str, Any] | None:
    return next((r for r in rows if (r["check_name"], r["hazard"], r["metric"]) == (check, hazard, metric)), None)


def figures(name: str, n_adv: int, max_samples: int, threads: int) -> dict[str, Any]:
    """OOD, AutoAttack, corruptions and certification figures of zoo model ``name`` from one audit."""
    config = Path(tempfile.mkdtemp(prefix="fashion-cfg-")) / "bench.toml"
    config.write_text(
        f'[params.adversarial]\nattacks = ["autoattack"]\neps = [{", ".join(str(e) for e in EPS)}]\nn = {n_adv}\n'
    )
    checks = ("clean", "ood", "adversarial", "corruptions", "certified")
    args = ["--model", name, "--config", str(config), "--max-samples", str(max_samples)]
    args += [a for c in checks for a in ("--check", c)]
    load_before = _load()
    wall, _db, rows, per_check, _ = _audit(args, threads)
    ood: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["check_name"] == "ood" and r["hazard"].startswith("ood/") and r["metric"].endswith("_auroc"):
            detector = r["metric"][: -len("_auroc")]
            ood.setdefault(r["hazard"][len("ood/") :], []).append({**r, "detector": detector})
    best = {s: sorted(v, key=lambda r: -r["value"])[:3] for s, v in ood.items()}
    adversarial = {
        f"{e:g}": _find(rows, "adversarial", f"adversarial/autoattack/{e:g}", "robust_accuracy") for e in EPS
    }
    corruption = {m: _find(rows, "corruptions", "corruption", m) for m in ("mean_accuracy", "mce", "relative_mce")}
    certified = [
        r
        for r in rows
        if r["check_name"] == "certified"
        and (r["metric"].startswith("certified_accuracy") or r["metric"].startswith("mean_certified_radius"))
    ]
    return {
        "wall_s": wall,
        "per_check_s": per_check,
        "load_before": load_before,
        "load_after": _load(),
        "max_samples": max_samples,
        "n_adv": n_adv,
        "clean_subset": _find(rows, "clean", "clean", "accuracy"),
        "ood_best": best,
        "ood_all": ood,
        "autoattack": adversarial,
        "corruptions": corruption,
        "certified": certified,
    }


def timing(name: str, threads: int, repeats: int, timeout: float | None) -> dict[str, Any]:
    """The default full-profile audit of ``name``: wall seconds per run (negative: stopped after that
    many), seconds per check, load."""
    runs = []
    for _ in range(repeats):
        before = _load()
        wall, _db, rows, per_check, _ = _audit(["--model", name], threads, timeout)
        runs.append({"wall_s": wall, "per_check_s": per_check, "rows": len(rows), "load_before": before,
                     "load_after": _load()})  # fmt: skip
    return {"runs": runs, "median_s": sorted(r["wall_s"] for r in runs)[len(runs) // 2], "timeout_s": timeout}


def reproduce(threads: int) -> dict[str, Any]:
    """Re-run the fashion-cnn recipe and compare the model with the shipped one on the test split."""
    from safetensors.torch import load_file

    from mlsafety import zoo
    from mlsafety.metrics import clopper_pearson

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = zoo.train_fashion_cnn(seed=0)
    seconds = time.perf_counter() - t0
    shipped = zoo.FashionCNN()
    shipped.load_state_dict(load_file(str(zoo.weights_path("fashion-cnn"))))
    shipped.eval()
    test = zoo.load_dataset("fashion-mnist", "test")
    with torch.inference_mode():
        a = torch.cat([model(xb).argmax(1) for xb, _ in test.batches(1000)])
        b = torch.cat([shipped(xb).argmax(1) for xb, _ in test.batches(1000)])
    n = len(test)
    ka, kb = int((a == test.y).sum()), int((b == test.y).sum())
    agree = int((a == b).sum())
    return {
        "threads": threads,
        "train_s": seconds,
        "retrained": {"accuracy": ka / n, "ci": list(clopper_pearson(ka, n))},
        "shipped": {"accuracy": kb / n, "ci": list(clopper_pearson(kb, n))},
        "difference": (ka - kb) / n,
        "agreement": agree / n,
        "agreement_ci": list(clopper_pearson(agree, n)),
        "n": n,
    }


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# fashion-cnn on Fashion-MNIST next to digits-cnn on the digits",
        "",
        f"Machine: {out['machine']}, {out['cpus']} CPUs, {out['threads']} threads; the machine was shared with other "
        "work (load averages are given), so times are indicative only. 95% intervals: exact for proportions, "
        "bootstrap otherwise.",
        "",
    ]
    models = out["models"]
    if any("clean" in m for m in models.values()):
        lines += ["## Clean accuracy (whole test split)", "", "| model | accuracy | n | parameters | weights |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, m in models.items():
            if "clean" in m:
                c = m["clean"]
                lines.append(f"| {name} | {c['accuracy']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}] | {c['n']} | "
                             f"{c['parameters']:,} | {c['weights_bytes'] / 1e6:.2f} MB |")  # fmt: skip
        lines.append("")
    if any("figures" in m for m in models.values()):
        lines += ["## OOD detection: the best three detectors per OOD set (AUROC)", ""]
        for name, m in models.items():
            if "figures" not in m:
                continue
            f = m["figures"]
            lines += [f"**{name}** (at most {f['max_samples']} inputs per set):", "", "| OOD set | 1st | 2nd | 3rd |",
                      "|---|---|---|---|"]  # fmt: skip
            for s, best in f["ood_best"].items():
                cells = [f"{r['detector']} {_fmt(r)}" for r in best]
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["## Robust accuracy under AutoAttack (standard ensemble, Linf)", "",
                  "| model | n | clean (subset) | " + " | ".join(f"eps {e:g}" for e in EPS) + " |",
                  "|---|---|---|" + "---|" * len(EPS)]  # fmt: skip
        for name, m in models.items():
            if "figures" in m:
                f = m["figures"]
                cells = " | ".join(_fmt(f["autoattack"][f"{e:g}"]) for e in EPS)
                n = next((r["n"] for r in f["autoattack"].values() if r), "-")
                lines.append(f"| {name} | {n} | {_fmt(f['clean_subset'])} | {cells} |")
        lines += ["", "## Corruptions", "", "| model | mean accuracy | mCE | relative mCE |", "|---|---|---|---|"]
        for name, m in models.items():
            if "figures" in m:
                c = m["figures"]["corruptions"]
                lines.append(f"| {name} | {_fmt(c['mean_accuracy'])} | {_fmt(c['mce'])} | {_fmt(c['relative_mce'])} |")
        lines += ["", "## Certification (randomized smoothing, L2)", "", "| model | metric | hazard | value | n |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, m in models.items():
            if "figures" in m:
                for r in m["figures"]["certified"]:
                    lines.append(f"| {name} | {r['metric']} | {r['hazard']} | {_fmt(r)} | {r['n']} |")
        lines += ["", "Audit wall time of these figure runs: " + ", ".join(
            f"{n} {m['figures']['wall_s']:.0f} s (load {m['figures']['load_before']:.1f} -> "
            f"{m['figures']['load_after']:.1f})" for n, m in models.items() if "figures" in m), ""]  # fmt: skip
    if any("time" in m for m in models.values()):
        lines += ["## The default full audit (`mlsafety audit --model NAME`)", "",
                  "| model | runs (s) | load before -> after | slowest checks (s) |", "|---|---|---|---|"]  # fmt: skip
        for name, m in models.items():
            if "time" in m:
                runs = m["time"]["runs"]
                walls = ", ".join(
                    f"{r['wall_s']:.1f}" if r["wall_s"] > 0 else f"> {-r['wall_s']:.0f} (stopped)" for r in runs
                )
                load = ", ".join(f"{r['load_before']:.1f} -> {r['load_after']:.1f}" for r in runs)
                top = sorted(runs[-1]["per_check_s"].items(), key=lambda kv: -kv[1])[:6]
                lines.append(f"| {name} | {walls} | {load} | " + ", ".join(f"{k} {v:.1f}" for k, v in top) + " |")
        lines.append("")
    if "reproduce" in out:
        r = out["reproduce"]
        lines += ["## Re-running the fashion-cnn recipe", "",
                  f"Re-trained with {r['threads']} thread(s) in {r['train_s']:.0f} s (the shipped weights: 1 thread). "
                  f"Test accuracy re-trained {r['retrained']['accuracy']:.4f} [{r['retrained']['ci'][0]:.4f}, "
                  f"{r['retrained']['ci'][1]:.4f}], shipped {r['shipped']['accuracy']:.4f} "
                  f"[{r['shipped']['ci'][0]:.4f}, {r['shipped']['ci'][1]:.4f}], difference {r['difference']:+.4f}; "
                  f"the two agree on {r['agreement']:.4f} [{r['agreement_ci'][0]:.4f}, {r['agreement_ci'][1]:.4f}] "
                  f"of the {r['n']} test images.", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["fashion-cnn", "digits-cnn"])
    parser.add_argument("--n-adv", type=int, default=500, help="test images attacked per eps")
    parser.add_argument("--max-samples", type=int, default=1000, help="inputs per data source in the figure audits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each timed default audit")
    parser.add_argument("--timeout", type=float, default=None, help="stop a timed default audit after this many s")
    parser.add_argument("--skip", nargs="*", default=[], choices=("clean", "figures", "time"))
    parser.add_argument("--retrain", action="store_true", help="also re-run the fashion-cnn recipe (minutes)")
    parser.add_argument("--retrain-threads", type=int, default=2)
    parser.add_argument("--out", default="fashion", help="stem of the result files in bench/results/")
    parser.add_argument("--merge", action="store_true", help="keep the other models' (and parts') entries of --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "models": {},
    }
    previous = RESULTS / f"{args.out}.json"
    if args.merge and previous.is_file():
        out = {**json.loads(previous.read_text()), **{k: out[k] for k in ("machine", "cpus", "threads")}}
    for name in args.models:
        m: dict[str, Any] = dict(out["models"].get(name, {}))
        if "clean" not in args.skip:
            m["clean"] = clean(name)
            print(name, "clean", m["clean"], flush=True)
        if "figures" not in args.skip:
            m["figures"] = figures(name, args.n_adv, args.max_samples, args.threads)
            print(name, "figures in", f"{m['figures']['wall_s']:.0f} s", flush=True)
        if "time" not in args.skip:
            m["time"] = timing(name, args.threads, args.repeats, args.timeout)
            print(name, "default audit", [round(r["wall_s"], 1) for r in m["time"]["runs"]], flush=True)
        out["models"][name] = m
    if args.retrain:
        out["reproduce"] = reproduce(args.retrain_threads)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(out) + "\n")
    print(markdown(out))


if __name__ == "__main__":
    main()
