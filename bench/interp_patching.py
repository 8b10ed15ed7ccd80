"""Cost and fidelity of the batched activation-patching sweep on the embedded SmolLM2-135M.

On IOI prompt pairs from :func:`mlsafety.monitoring.interp.ioi_dataset` (Wang et al., 2022; clean "When Mary
and John went to the store, John gave a drink to" -> " Mary", corrupted by the ABC distribution: the same
template with three other names) it measures:

1. cost: the seconds of a full layers x positions ``resid_pre`` activation-patching sweep
   (``activation_patching``, caches and hooks included) against the bare forward passes the sweep needs
   (``prompts x sites`` rows, batched the same way, no hooks), as a ratio; the output states whether the
   goal (at most 1.1x) is met;
2. fidelity: the agreement (Pearson, Spearman over sites, 95% intervals) of attribution patching with the
   exact sweep, for ``resid_pre`` and for per-head patching (``--no-heads`` skips the heads);
3. the model's IOI logit difference on clean and corrupted prompts, with 95% bootstrap intervals.

Run on an idle machine: ``.venv/bin/python bench/interp_patching.py`` (defaults, what the note needs: 16
pairs, every layer, ``resid_pre`` and heads, three interleaved repeats of each timing, medians);
``--pairs``, ``--layers 0,10,20``, ``--repeats``, ``--no-heads`` and ``--threads`` shrink it for a quick
look. Writes ``bench/results/interp_patching.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety.core import LanguageModel
from mlsafety.monitoring.interp import (
    PatchingResult,
    activation_patching,
    agreement,
    attribution_patching,
    head_patching,
    ioi_dataset,
)
from mlsafety.monitoring.interp._common import encode_pairs, forward_last
from mlsafety.zoo import load_language_model

GOAL_RATIO = 1.1


def ioi_pairs(lm: LanguageModel, n: int) -> dict[str, Any]:
    """``n`` seeded IOI prompts and their ABC corruptions (token-aligned), answers IO (correct) and S (wrong)."""
    data = ioi_dataset(lm, n)
    return {"clean": data.prompts, "corrupted": data.corrupted, "correct": data.io_ids, "wrong": data.s_ids}


def bare_forwards(lm: LanguageModel, pairs: dict[str, Any], n_sites: int, batch_size: int) -> float:
    """Seconds of the ``prompts x sites`` forward passes the sweep runs, same batching, no hooks."""
    _, corrupted = encode_pairs(lm, pairs["clean"], pairs["corrupted"])
    n = len(corrupted.input_ids)
    total = n * n_sites
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, total, batch_size):
            rows = torch.arange(s, min(s + batch_size, total)) % n
            forward_last(lm, corrupted.input_ids[rows], corrupted.attention_mask[rows])
    return time.perf_counter() - start


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def summary(result: PatchingResult, top: int = 5) -> list[dict[str, Any]]:
    flat = result.mean.reshape(-1).nan_to_num(nan=float("-inf"))
    best = flat.topk(min(top, flat.numel())).indices
    cols = result.mean.shape[1]
    return [
        {
            result.axes[0]: result.labels[0][int(i) // cols],
            result.axes[1]: result.labels[1][int(i) % cols],
            "mean": round(float(result.mean.reshape(-1)[i]), 4),
            "ci": [round(float(result.ci_low.reshape(-1)[i]), 4), round(float(result.ci_high.reshape(-1)[i]), 4)],
        }
        for i in best
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--layers", default="all", help="'all' or comma-separated layer numbers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings; medians are reported")
    parser.add_argument(
        "--heads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare head patching with its attribution (default: yes)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "interp_patching"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm, load_s = timed(lambda: load_language_model("smollm2-135m"))
    pairs = ioi_pairs(lm, args.pairs)
    layers = None if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    # warm-up (allocator, first-call costs) so that neither timing pays them
    activation_patching(lm, **pairs, layers=[0], positions=[-1], batch_size=args.batch_size)  # type: ignore[arg-type]
    # interleaved repeats, medians: a shared machine's load drifts between two back-to-back timings
    sweeps, bares = [], []
    for _ in range(args.repeats):
        exact, sweep_s = timed(lambda: activation_patching(lm, **pairs, layers=layers, batch_size=args.batch_size))  # type: ignore[arg-type]
        n_sites = int(exact.mean.numel())
        sweeps.append(sweep_s)
        bares.append(bare_forwards(lm, pairs, n_sites, args.batch_size))
    sweep_s, bare_s = statistics.median(sweeps), statistics.median(bares)
    approx, attr_s = timed(lambda: attribution_patching(lm, **pairs, layers=layers, batch_size=16))  # type: ignore[arg-type]
    agree = agreement(exact, approx)
    result: dict[str, Any] = {
        "model": "smollm2-135m",
        "pairs": args.pairs,
        "tokens": int(exact.values.shape[2]),
        "layers": len(exact.labels[0]),
        "sites": n_sites,
        "rows": n_sites * args.pairs,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
        "sweep_s": round(sweep_s, 2),
        "bare_forwards_s": round(bare_s, 2),
        "ratio": round(sweep_s / bare_s, 3),
        "repeats": args.repeats,
        "sweep_runs_s": [round(x, 2) for x in sweeps],
        "bare_runs_s": [round(x, 2) for x in bares],
        "goal_ratio": GOAL_RATIO,
        "goal_met": sweep_s / bare_s <= GOAL_RATIO,
        "attribution_s": round(attr_s, 2),
        "clean_logit_diff": [exact.clean.mean, exact.clean.ci_low, exact.clean.ci_high],
        "corrupted_logit_diff": [exact.corrupted.mean, exact.corrupted.ci_low, exact.corrupted.ci_high],
        "agreement_resid_pre": {
            "pearson": agree.pearson,
            "pearson_ci": agree.pearson_ci,
            "spearman": agree.spearman,
            "spearman_ci": agree.spearman_ci,
            "sites": agree.n_sites,
        },
        "top_sites": summary(exact),
        "machine": f"{platform.machine()} {platform.processor()} python {platform.python_version()}",
        "torch": torch.__version__,
    }
    if args.heads:
        heads, heads_s = timed(lambda: head_patching(lm, **pairs, layers=layers, batch_size=args.batch_size))  # type: ignore[arg-type]
        heads_approx = attribution_patching(lm, **pairs, point="head_out", layers=layers, batch_size=16)  # type: ignore[arg-type]
        h = agreement(heads, heads_approx)
        result["head_patching_s"] = round(heads_s, 2)
        result["agreement_heads"] = {"pearson": h.pearson, "pearson_ci": h.pearson_ci, "spearman": h.spearman,
                                     "spearman_ci": h.spearman_ci, "sites": h.n_sites}  # fmt: skip
        result["top_heads"] = summary(heads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def _ci(d: dict[str, Any], key: str) -> str:
    low, high = d[f"{key}_ci"]
    return f"{d[key]:.3f} [{low:.3f}, {high:.3f}]"


def markdown(r: dict[str, Any]) -> str:
    a = r["agreement_resid_pre"]
    lines = [
        "# Activation-patching sweep on smollm2-135m",
        "",
        f"Goal: the sweep costs at most {r['goal_ratio']}x the bare forward passes it needs: "
        f"**{'met' if r['goal_met'] else 'NOT met'}** ({r['ratio']}x).",
        "",
        f"{r['pairs']} IOI pairs (ABC corruption) x {r['layers']} layers x {r['tokens']} positions = "
        f"{r['rows']} patched rows "
        f"(batch {r['batch_size']}, {r['threads']} threads, {r['machine']}).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| sweep (caches + patched runs), median of {r['repeats']} | {r['sweep_s']} s {r['sweep_runs_s']} |",
        f"| bare forward passes it needs, median | {r['bare_forwards_s']} s {r['bare_runs_s']} |",
        f"| ratio (goal <= {r['goal_ratio']}) | {r['ratio']}: goal {'met' if r['goal_met'] else 'NOT met'} |",
        f"| attribution patching (all sites) | {r['attribution_s']} s |",
        f"| agreement resid_pre: Pearson | {_ci(a, 'pearson')} |",
        f"| agreement resid_pre: Spearman | {_ci(a, 'spearman')} |",
        "| clean logit diff | {:.3f} [{:.3f}, {:.3f}] |".format(*r["clean_logit_diff"]),
        "| corrupted logit diff | {:.3f} [{:.3f}, {:.3f}] |".format(*r["corrupted_logit_diff"]),
    ]
    if "agreement_heads" in r:
        h = r["agreement_heads"]
        lines.append(f"| head patching (all heads) | {r['head_patching_s']} s |")
        lines.append(f"| agreement heads: Pearson | {_ci(h, 'pearson')} |")
        lines.append(f"| agreement heads: Spearman | {_ci(h, 'spearman')} |")
    lines += [
        "",
        "Top resid_pre sites (normalised effect as a ratio of means over prompts, paired 95% bootstrap interval):",
        "",
    ]
    lines += [f"- {s}" for s in r["top_sites"]]
    if "top_heads" in r:
        lines += ["", "Top heads (same summary):", ""]
        lines += [f"- {s}" for s in r["top_heads"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
