"""Truthfulness and ethics evaluations of smollm2-135m on the project's look-alikes (issue 15).

TruthfulQA-style MC1 / MC2 (Lin, Hilton & Evans 2021) on ``mlsafety-truthy-mc`` and ETHICS-style
zero-shot and probe scores (Hendrycks et al. 2021) on ``mlsafety-ethics-lookalike``, each with its 95%
interval and the chance level beside it. The look-alikes are this project's own small sets, NOT the
benchmarks: the figures say how the pipeline reads this model, not its TruthfulQA or ETHICS score. Pass
``--truthfulqa FILE`` / ``--ethics DIR`` to run the real files through the same code (nothing is
downloaded).

Run: ``.venv/bin/python bench/alignment_evals.py`` (writes bench/results/alignment_evals.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety import zoo
from mlsafety.alignment import evals
from mlsafety.core import generator
from mlsafety.metrics import Estimate

RESULTS = Path(__file__).parent / "results"


def est(e: Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}


def fmt(e: dict[str, float] | None) -> str:
    return "" if e is None else f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] (n={int(e['n'])})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--truthfulqa", help="the official TruthfulQA CSV or MC JSON (default: the look-alike)")
    ap.add_argument("--ethics", help="the ETHICS release folder (default: the look-alike)")
    ap.add_argument("--max-groups", type=int, default=0, help="sample this many groups per ETHICS subset (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "alignment_evals"))
    ap.add_argument("--only", choices=("truthfulqa", "ethics"), help="run one part, keeping the other's stored figures")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    lm = zoo.load_language_model("smollm2-135m")
    questions = evals.load_truthfulqa(args.truthfulqa) if args.truthfulqa else evals.truthy_mc()
    subsets = evals.load_ethics_dir(args.ethics) if args.ethics else evals.ethics_lookalike()
    if args.max_groups:
        subsets = {k: s.take_groups(args.max_groups, generator(args.seed, "bench", k)) for k, s in subsets.items()}
    out: dict[str, Any] = {
        "model": "smollm2-135m",
        "truthfulqa_source": args.truthfulqa or evals.TRUTHY_MC,
        "ethics_source": args.ethics or evals.ETHICS_LOOKALIKE,
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "note": "timings taken on a shared 2-core machine with other jobs running: noisy",
    }
    old = json.loads(Path(f"{args.out}.json").read_text()) if Path(f"{args.out}.json").exists() else {}
    if args.only == "ethics" and "truthfulqa" in old:
        out["truthfulqa"] = old["truthfulqa"]
        questions = []
    tqa: dict[str, Any] = out.get("truthfulqa", {})
    t0 = time.perf_counter()
    tqa_scores = evals.score_truthfulqa(lm, questions, batch_size=args.batch_size) if questions else None
    seconds = time.perf_counter() - t0  # one scoring pass gives both reductions
    for reduction in ("sum", "mean"):
        if tqa_scores is None:
            break
        res = evals.truthfulqa_result(questions, tqa_scores, reduction, seed=args.seed)
        tqa[reduction] = {"mc1": est(res.mc1), "mc2": est(res.mc2), "seconds": seconds,
                          "mc1_chance": res.mc1_chance, "mc2_chance": res.mc2_chance}  # fmt: skip
    out["truthfulqa"] = tqa
    out["ethics"] = eth = {}
    write(out, args.out)
    if args.only == "truthfulqa":
        subsets = {}
    for name, subset in subsets.items():
        t0 = time.perf_counter()
        scores = evals.evaluate_ethics(lm, subset, folds=args.folds, seed=args.seed, batch_size=args.batch_size)
        eth[name] = {
            "rows": len(subset),
            "seconds": time.perf_counter() - t0,
            "majority": scores["zero-shot"].majority,
            **{
                method: {
                    "accuracy": est(s.accuracy),
                    "exact_match": est(s.exact_match),
                    "per_layer": [round(e.value, 4) for e in s.per_layer],
                    "layers": list(s.layers),
                }
                for method, s in scores.items()
            },
        }
        write(out, args.out)  # after each subset, so a stopped run keeps what it measured
    print(markdown(out))


def write(out: dict[str, Any], stem: str) -> None:
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(out, indent=2))
    Path(f"{stem}.md").write_text(markdown(out))


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# Truthfulness and ethics evaluations: smollm2-135m",
        "",
        f"TruthfulQA-style set: `{out['truthfulqa_source']}`; ETHICS-style set: `{out['ethics_source']}`.",
        "The `mlsafety-*` sets are this project's own small look-alikes, NOT the benchmarks: their figures say how",
        "the pipeline reads the model, not its TruthfulQA or ETHICS score (pass --truthfulqa / --ethics for those).",
        "95% intervals: exact (Clopper-Pearson) for MC1, accuracies and exact match; bootstrap over questions for MC2.",
        "",
        "## TruthfulQA-style multiple choice",
        "",
        "| scoring | MC1 | MC1 chance | MC2 | MC2 chance | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for reduction, r in out["truthfulqa"].items():
        lines.append(f"| {reduction} log-prob | {fmt(r['mc1'])} | {r['mc1_chance']:.3f} | {fmt(r['mc2'])} | "
                     f"{r['mc2_chance']:.3f} | {r['seconds']:.1f} |")  # fmt: skip
    lines += [
        "",
        "## ETHICS-style subsets",
        "",
        "Zero-shot: log p(' yes') vs log p(' no'); probe: L2 logistic regression on h(yes) - h(no) at every layer,",
        "5-fold cross-validated by whole groups, layer chosen inside each training fold (nested). Chance: the",
        "majority label's share (0.5 for utilitarianism's pairs); exact match chance for a coin is 0.5^4 or 0.5^5.",
        "",
        "| subset | rows | majority | zero-shot acc | zero-shot exact match | probe acc (nested) | probe exact match "
        "| probe best layer acc | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out["ethics"].items():
        zs, pr = r["zero-shot"], r.get("probe", {})
        per = pr.get("per_layer") or []
        best = f"{max(per):.3f} (layer {per.index(max(per))})" if per else ""
        cells = [name, str(r["rows"]), f"{r['majority']:.3f}", fmt(zs["accuracy"]), fmt(zs["exact_match"]),
                 fmt(pr.get("accuracy")), fmt(pr.get("exact_match")), best, f"{r['seconds']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Machine: {out['machine']}, {out['threads']} threads; {out['note']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
