"""``fashion-cnn`` against its two variants, ``fashion-cnn-pixmix`` and ``fashion-cnn-at`` (issue 22).

Written to ``bench/results/fashion_variants.{json,md}``; every figure has its 95% interval (exact for
proportions, bootstrap otherwise):

1. **clean**: test accuracy on the whole Fashion-MNIST test split (10,000 images).
2. **figures**: one ``mlsafety audit`` per model (a subprocess, seeded, ``--max-samples`` inputs of each
   data source) with the checks ``clean``, ``ood`` (MSP, Energy and KNN on the model's default OOD sets
   and on the pooled near and far groups), ``adversarial`` (``--attack``, default ``autoattack-fast``:
   APGD-CE + APGD-T, an upper bound on what the standard AutoAttack ensemble would leave, at Linf
   ``--eps`` on a seeded ``--n-adv``-image test subset) and ``corruptions`` (mean accuracy, mCE and
   relative mCE over the corruption families and severities).
3. **compare** (``--compare``): ``fashion-cnn`` and ``fashion-cnn-at`` audited with the same ``--budget``
   into a fresh database, then ``mlsafety compare`` on the two runs; its output is kept.

    .venv/bin/python bench/fashion_variants.py [--models ...] [--n-adv 500] [--eps 0.1 0.2]
        [--max-samples 1000] [--threads 2] [--skip clean figures] [--compare] [--budget 3m]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
RESULTS = HERE / "results"
MODELS = ("fashion-cnn", "fashion-cnn-pixmix", "fashion-cnn-at")
DETECTORS = ("msp", "energy", "knn")
CORRUPTION_METRICS = ("mean_accuracy", "mce", "relative_mce")


def _fashion_bench() -> Any:
    """``bench/fashion.py`` (its clean-accuracy and audit helpers)."""
    spec = importlib.util.spec_from_file_location("fashion_bench", HERE / "fashion.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FB = _fashion_bench()


def figures(name: str, attack: str, eps: list[float], n_adv: int, max_samples: int, threads: int) -> dict[str, Any]:
    """OOD, adversarial and corruption figures of zoo model ``name`` from one audit."""
    config = Path(tempfile.mkdtemp(prefix="fashion-variants-")) / "bench.toml"
    config.write_text(
        f'[params.adversarial]\nattacks = ["{attack}"]\neps = [{", ".join(str(e) for e in eps)}]\nn = {n_adv}\n'
        f"[params.ood]\ndetectors = [{', '.join(repr(d).replace(chr(39), chr(34)) for d in DETECTORS)}]\n"
    )
    checks = ("clean", "ood", "adversarial", "corruptions")
    args = ["--model", name, "--config", str(config), "--max-samples", str(max_samples)]
    args += [a for c in checks for a in ("--check", c)]
    load_before = os.getloadavg()[0]
    t_cpu = time.process_time()
    wall, _db, rows, per_check, _ = FB._audit(args, threads)
    ood: dict[str, dict[str, Any]] = {}
    for r in rows:
        hazard, metric = r["hazard"], r["metric"]
        if r["check_name"] == "ood" and hazard.startswith("ood") and metric.endswith("_auroc"):
            detector = metric[: -len("_auroc")]
            if detector in DETECTORS:
                ood.setdefault(hazard, {})[detector] = r
    return {
        "wall_s": wall,
        "cpu_s_parent": time.process_time() - t_cpu,
        "per_check_s": per_check,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "max_samples": max_samples,
        "n_adv": n_adv,
        "attack": attack,
        "clean_subset": FB._find(rows, "clean", "clean", "accuracy"),
        "ood": ood,
        "adversarial": {
            f"{e:g}": FB._find(rows, "adversarial", f"adversarial/{attack}/{e:g}", "robust_accuracy") for e in eps
        },
        "corruptions": {m: FB._find(rows, "corruptions", "corruption", m) for m in CORRUPTION_METRICS},
    }


def _finished_run(db: Path, model: str) -> tuple[str, float] | None:
    """The latest finished run of ``model`` in ``db`` and its recorded seconds (None: none)."""
    if not db.is_file():
        return None
    con = sqlite3.connect(db)
    row = con.execute(
        "SELECT run_id, finished - created FROM runs WHERE model = ? AND status = 'complete' "
        "ORDER BY created DESC LIMIT 1",
        (model,),
    ).fetchone()
    con.close()
    return None if row is None else (str(row[0]), float(row[1]))


def compare(budget: str, threads: int, db: Path, reuse: bool = False) -> dict[str, Any]:
    """``fashion-cnn`` and ``fashion-cnn-at`` audited with ``--budget`` into ``db``, then ``mlsafety compare``.

    With ``reuse``, a model with a finished run in ``db`` is not audited again (its wall time is then unknown)."""
    if db.exists() and not reuse:
        db.unlink()
    runs: dict[str, dict[str, Any]] = {}
    for name in ("fashion-cnn", "fashion-cnn-at"):
        done = _finished_run(db, name) if reuse else None
        if done is not None:
            runs[name] = {"wall_s": None, "recorded_s": done[1], "run_id": done[0]}
            continue
        cmd = [sys.executable, "-m", "mlsafety.cli", "audit", "--model", name, "--budget", budget, "--db", str(db),
               "--report", str(db.with_suffix(f".{name}.html")), "--json"]  # fmt: skip
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=FB._env(threads), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise SystemExit(f"audit of {name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        found = _finished_run(db, name)
        assert found is not None, name
        runs[name] = {"wall_s": wall, "recorded_s": found[1], "load_before": load, "run_id": found[0]}
    env = {**FB._env(threads), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "mlsafety.cli", "compare", str(runs["fashion-cnn"]["run_id"]),
           str(runs["fashion-cnn-at"]["run_id"]), "--db", str(db)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    # the notes (stderr) come before the table (stdout), as on a terminal
    return {"budget": budget, "runs": runs, "exit_code": proc.returncode, "output": proc.stderr + proc.stdout}


SHOWN = re.compile(r"(robust_accuracy|/accuracy|_auroc|mce|/ece|validation_escape|escaped_failure_rate)\s")
"""Rows of the compare table the markdown keeps (the JSON keeps the whole output)."""


def _shorten(output: str, most: int = 45) -> str:
    """``compare``'s output with its notes, header and summary, and only the changed rows of the headline
    kinds (robust and clean accuracy, AUROC, mCE, ECE, escapes), at most ``most`` of them."""
    kept, dropped, table = [], 0, False
    for ln in output.splitlines():
        first = ln.split()[0] if ln.split() else ""
        if "/" in first and not first.startswith("/"):
            table = True
            if SHOWN.search(ln + " ") and len([k for k in kept if "/" in k.split()[0]]) < most:
                kept.append(ln)
            else:
                dropped += 1
            continue
        if table and dropped:
            kept.append(f" ... {dropped} other changed rows (all in bench/results/fashion_variants.json)")
            dropped, table = 0, False
        kept.append(ln)
    return "\n".join(kept)


def _fmt(r: dict[str, Any] | None) -> str:
    return FB._fmt(r)


def markdown(out: dict[str, Any]) -> str:
    models = out["models"]
    lines = [
        "# fashion-cnn, fashion-cnn-pixmix and fashion-cnn-at on Fashion-MNIST",
        "",
        f"Machine: {out['machine']}, {out['cpus']} CPUs, shared with other engineers' work (load averages given; "
        "threads per part in the reading notes), so times are indicative only. 95% intervals: exact "
        "(Clopper-Pearson) for proportions, bootstrap otherwise.",
        "",
    ]
    if out.get("notes"):
        lines += ["## Reading", "", out["notes"].rstrip(), ""]
    if out.get("training"):
        lines += ["## Training (one CPU thread each, both at once on the shared machine)", "",
                  "| model | epochs | wall | CPU | notes |", "|---|---|---|---|---|"]  # fmt: skip
        for name, t in out["training"].items():
            lines.append(f"| {name} | {t['epochs']} | {t['wall_s'] / 60:.1f} min | {t['cpu_s'] / 60:.1f} min | "
                         f"{t.get('notes', '')} |")  # fmt: skip
        lines.append("")
    if any("clean" in m for m in models.values()):
        lines += ["## Clean accuracy (whole test split)", "", "| model | accuracy | n | weights |", "|---|---|---|---|"]
        for name, m in models.items():
            if "clean" in m:
                c = m["clean"]
                lines.append(f"| {name} | {c['accuracy']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}] | {c['n']} | "
                             f"{c['weights_bytes'] / 1e6:.2f} MB |")  # fmt: skip
        lines.append("")
    figs = {n: m["figures"] for n, m in models.items() if "figures" in m}
    if figs:
        any_f = next(iter(figs.values()))
        eps = list(any_f["adversarial"])
        lines += [f"## Robust accuracy, Linf, `{any_f['attack']}` on {any_f['n_adv']} seeded test images", "",
                  "| model | clean (same subset) | " + " | ".join(f"eps {e}" for e in eps) + " |",
                  "|---|---|" + "---|" * len(eps)]  # fmt: skip
        for name, f in figs.items():
            lines.append(f"| {name} | {_fmt(f['clean_subset'])} | "
                         + " | ".join(_fmt(f["adversarial"][e]) for e in eps) + " |")  # fmt: skip
        lines += ["", "## Corruptions (every family and severity)", "",
                  "| model | mean accuracy | mCE (unnormalised) | relative mCE |", "|---|---|---|---|"]  # fmt: skip
        for name, f in figs.items():
            c = f["corruptions"]
            lines.append(f"| {name} | {_fmt(c['mean_accuracy'])} | {_fmt(c['mce'])} | {_fmt(c['relative_mce'])} |")
        lines += ["", f"## OOD detection AUROC (at most {any_f['max_samples']} inputs per set)", "",
                  "| OOD set | model | " + " | ".join(DETECTORS) + " |",
                  "|---|---|" + "---|" * len(DETECTORS)]  # fmt: skip
        hazards = sorted({h for f in figs.values() for h in f["ood"]}, key=lambda h: (not h.startswith("ood-"), h))
        for h in hazards:
            for name, f in figs.items():
                cells = " | ".join(_fmt(f["ood"].get(h, {}).get(d)) for d in DETECTORS)
                lines.append(f"| {h} | {name} | {cells} |")
        lines += ["", "Audit wall time of these runs: " + ", ".join(
            f"{n} {f['wall_s']:.0f} s (load {f['load_before']:.1f} -> {f['load_after']:.1f})" for n, f in figs.items()),
            ""]  # fmt: skip
    if "compare" in out:
        c = out["compare"]
        walls = ", ".join(
            f"{n} {r['wall_s']:.0f} s at load {r['load_before']:.1f} (run {r['run_id']})"
            if r["wall_s"] is not None
            else f"{n} {r['recorded_s']:.0f} s recorded by the run (run {r['run_id']}, an earlier audit)"
            for n, r in c["runs"].items()
        )
        lines += [f"## `mlsafety compare` of fashion-cnn and fashion-cnn-at (both `--budget {c['budget']}`)", "",
                  f"Audit wall times: {walls}; `compare` exit code {c['exit_code']}.", "", "```",
                  _shorten(c["output"]).rstrip(), "```", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--attack", default="autoattack-fast")
    parser.add_argument("--eps", nargs="*", type=float, default=[0.1, 0.2])
    parser.add_argument("--n-adv", type=int, default=500, help="test images attacked per eps")
    parser.add_argument("--max-samples", type=int, default=1000, help="inputs per data source in the figure audits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=("clean", "figures"))
    parser.add_argument("--compare", action="store_true", help="also audit fashion-cnn and -at and compare them")
    parser.add_argument("--budget", default="3m", help="the --budget of the two compared audits")
    parser.add_argument("--compare-db", default=None, help="database of the compared audits (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="keep a model's finished run in --compare-db")
    parser.add_argument("--training", default=None, help="a JSON file of training times to include")
    parser.add_argument("--notes", default=None, help="a markdown file of reading notes to include")
    parser.add_argument("--merge", action="store_true", help="keep the entries of the previous results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                           "threads": args.threads, "models": {}}  # fmt: skip
    previous = RESULTS / "fashion_variants.json"
    if args.merge and previous.is_file():
        out = {**json.loads(previous.read_text()), **{k: out[k] for k in ("machine", "cpus", "threads")}}
    if args.training:
        out["training"] = json.loads(Path(args.training).read_text())
    if args.notes:
        out["notes"] = Path(args.notes).read_text()
    for name in args.models:
        m: dict[str, Any] = dict(out["models"].get(name, {}))
        if "clean" not in args.skip:
            m["clean"] = FB.clean(name)
            print(name, "clean", m["clean"], flush=True)
        if "figures" not in args.skip:
            m["figures"] = figures(name, args.attack, args.eps, args.n_adv, args.max_samples, args.threads)
            print(name, "figures in", f"{m['figures']['wall_s']:.0f} s", flush=True)
        out["models"][name] = m
    if args.compare:
        db = Path(args.compare_db) if args.compare_db else Path(tempfile.mkdtemp(prefix="fashion-cmp-")) / "runs.sqlite"
        out["compare"] = compare(args.budget, args.threads, db, args.reuse)
        print(out["compare"]["output"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fashion_variants.json").write_text(json.dumps(out, indent=1, default=str))
    (RESULTS / "fashion_variants.md").write_text(markdown(out))
    print("wrote", RESULTS / "fashion_variants.md")


if __name__ == "__main__":
    main()
