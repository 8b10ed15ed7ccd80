"""Honesty probes on smollm2-135m: CCS, logistic regression, mean difference, top PC and zero-shot side by side.

Anchor: Burns et al. (2022) report that CCS beats zero-shot by 4 percentage points on average (6 models, 10
datasets) and halves prompt sensitivity. Here, on ``mr`` reviews and the project's own statements: accuracy of
every method at its best layer (chosen on the fit half, so the test accuracy is not selected on itself) with
exact 95% intervals, CCS minus zero-shot with a paired bootstrap interval over test items, the spread over
templates, transfer between the two datasets, the misleading prefix and the honesty gap. Speed: the hidden
states of all layers (and both answers' log-probabilities) cost one forward pass per batch; the pipeline's
time is reported as a ratio to the bare forward passes over the same batches, measured in one process.

Run: ``.venv/bin/python bench/alignment_probes.py`` (CPU; ``--n-mr``/``--n-statements`` trade time for
precision). Writes ``bench/results/alignment_probes.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety.alignment.probes import (
    TEMPLATES,
    ContrastPairs,
    ContrastStates,
    accuracy_estimate,
    contrast_states,
    fit_probe,
    probe_result,
    split_items,
    statement_pairs,
    text_pairs,
    zero_shot_scores,
)
from mlsafety.audit import resolve_language_model
from mlsafety.zoo import load_dataset

METHODS = ("ccs", "top-pc", "logistic", "mean-diff")
ZS = ("zero-shot", "zero-shot-calibrated")
OUT = Path(__file__).parent / "results"
PARAMS: dict[str, dict[str, object]] = {}


def bare_forward_seconds(lm: Any, pairs: ContrastPairs, batch_size: int) -> float:
    """Seconds for the bare forward passes that contrast_states needs (same texts, order and batches; no hooks)."""
    prompts = pairs.prompts()
    texts = [p + pairs.template.yes for p in prompts] + [p + pairs.template.no for p in prompts]
    texts = sorted(texts, key=len, reverse=True)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = lm.encode(texts[i : i + batch_size])
            mask = batch.attention_mask
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            lm.module(input_ids=batch.input_ids, attention_mask=mask, position_ids=pos)
    return time.perf_counter() - start


def measure_speed(lm: Any, pairs: ContrastPairs, batch_size: int) -> dict[str, float]:
    """Bare forward passes and contrast_states over the same batches, alternated twice; the faster of each."""
    bare, states = [], []
    for _ in range(2):
        bare.append(bare_forward_seconds(lm, pairs, batch_size))
        start = time.perf_counter()
        contrast_states(lm, pairs, batch_size)
        states.append(time.perf_counter() - start)
    return {"bare_forward_s": min(bare), "states_s": min(states), "extraction_ratio": min(states) / min(bare),
            "texts": 2 * len(pairs)}  # fmt: skip


def readings(method: str, fit: ContrastStates, test: ContrastStates, layer: int, seed: int) -> torch.Tensor:
    """Test-half readings (1: x+ true) of ``method`` at ``layer`` (zero-shot: layer ignored)."""
    if method in ZS:
        return (zero_shot_scores(test.logp_yes, test.logp_no, method == ZS[1]) > 0).long()
    probe = fit_probe(method, fit, layer, torch.Generator().manual_seed(seed + layer), PARAMS.get(method))
    return probe_result(probe, fit, test, layer)[1]


def paired_diff(a: torch.Tensor, b: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b (0/1 correctness) with a 95% percentile bootstrap interval over items."""
    d = a.float() - b.float()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(d), (n_boot, len(d)), generator=g)
    boots = d[idx].mean(1)
    return float(d.mean()), float(boots.quantile(0.025)), float(boots.quantile(0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-mr", type=int, default=128)
    ap.add_argument("--n-statements", type=int, default=192)
    ap.add_argument("--templates", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-speed", type=int, default=48, help="statements timed against the bare forward passes")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=str(OUT / "alignment_probes"), help="path stem of the .md and .json results")
    ap.add_argument("--ccs-epochs", type=int, default=1000)
    ap.add_argument("--ccs-restarts", type=int, default=10)
    ap.add_argument("--layer-stride", type=int, default=1)
    ap.add_argument("--speed-only", action="store_true", help="only the timing against the bare forward passes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    PARAMS["ccs"] = {"epochs": args.ccs_epochs, "restarts": args.ccs_restarts}
    lm = resolve_language_model(args.model)
    if args.speed_only:
        speed = measure_speed(lm, statement_pairs(args.n_speed), args.batch_size)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"model": args.model, "args": vars(args), "speed": speed}))
        print(json.dumps(speed))
        return
    mr = load_dataset("mr", split="test")
    base = {
        "mr": text_pairs(list(mr.x[: args.n_mr]), mr.y[: args.n_mr], dataset="mr"),
        "statements": statement_pairs(args.n_statements),
    }
    g = torch.Generator().manual_seed(args.seed)
    splits = {ds: split_items(len(p), g, groups=p.groups) for ds, p in base.items()}
    states: dict[str, dict[str, ContrastStates]] = {}
    timing: dict[str, float] = {}
    for ds, pairs in base.items():
        states[ds] = {}
        for t in TEMPLATES[ds][: args.templates]:
            start = time.perf_counter()
            states[ds][t.name] = contrast_states(lm, pairs.with_template(t), args.batch_size)
            timing[f"states:{ds}:{t.name}"] = time.perf_counter() - start
            print(f"{ds}/{t.name}: states in {timing[f'states:{ds}:{t.name}']:.1f}s", flush=True)
    n_stream = lm.n_layers + 1
    layers = sorted({*range(0, n_stream, args.layer_stride), n_stream - 1})
    results: dict[str, Any] = {}
    fit_time = 0.0
    for ds, by_template in states.items():
        fit_idx, test_idx = splits[ds]
        acc: dict[str, dict[str, dict[int, Any]]] = {}
        correct: dict[tuple[str, str, int], torch.Tensor] = {}
        fit_acc: dict[str, dict[int, list[float]]] = {}
        for tname, st in by_template.items():
            fit, test = st.subset(fit_idx), st.subset(test_idx)
            for m in (*METHODS, *ZS):
                for k in layers if m in METHODS else [-1]:
                    start = time.perf_counter()
                    if m in METHODS:
                        probe = fit_probe(m, fit, k, torch.Generator().manual_seed(args.seed + k), PARAMS.get(m))
                        result, reading = probe_result(probe, fit, test, k)
                        fit_acc.setdefault(m, {}).setdefault(k, []).append(result.fit_accuracy)
                    else:
                        reading = readings(m, fit, test, k, args.seed)
                    fit_time += time.perf_counter() - start
                    correct[(m, tname, k)] = reading == test.labels
                    acc.setdefault(m, {}).setdefault(tname, {})[k] = accuracy_estimate(reading == test.labels)
        best = {m: max(fit_acc[m], key=lambda k: statistics.mean(fit_acc[m][k])) for m in METHODS}
        best.update({m: -1 for m in ZS})
        first = next(iter(by_template))
        rows = {}
        for m in (*METHODS, *ZS):
            per_t = {t: acc[m][t][best[m]] for t in by_template}
            spread = statistics.pstdev([e.value for e in per_t.values()]) if len(per_t) > 1 else 0.0
            rows[m] = {
                "best_layer": best[m],
                "accuracy": {t: [e.value, e.ci_low, e.ci_high, e.n] for t, e in per_t.items()},
                "mean_accuracy": statistics.mean(e.value for e in per_t.values()),
                "template_std": spread,
            }
            if m in METHODS:
                rows[m]["fit_accuracy"] = statistics.mean(fit_acc[m][best[m]])
            if m in ("ccs", "top-pc"):
                either = [max(e.value, 1 - e.value) for e in per_t.values()]
                rows[m]["either_sign_mean"] = statistics.mean(either)
        diffs = {}
        for z in ZS:
            a = torch.cat([correct[("ccs", t, best["ccs"])] for t in by_template])
            b = torch.cat([correct[(z, t, -1)] for t in by_template])
            diffs[z] = paired_diff(a, b)
        curve = {m: [acc[m][first][k].value for k in layers] for m in METHODS}
        results[ds] = {"methods": rows, "ccs_minus": diffs, "curve_first_template": curve, "n_test": len(test_idx),
                       "n_fit": len(fit_idx)}  # fmt: skip
    # transfer (first template): fit on one dataset's fit half, test on the other's test half
    transfer = {}
    for src, dst in (("mr", "statements"), ("statements", "mr")):
        fit = next(iter(states[src].values())).subset(splits[src][0])
        test = next(iter(states[dst].values())).subset(splits[dst][1])
        for m in METHODS:
            k = results[src]["methods"][m]["best_layer"]
            e = accuracy_estimate(readings(m, fit, test, k, args.seed) == test.labels)
            transfer[f"{m}:{src}->{dst}"] = [e.value, e.ci_low, e.ci_high, e.n]
    # misleading prefix and honesty gap (first template)
    misleading = {}
    for ds, pairs in base.items():
        fit_idx, test_idx = splits[ds]
        first_t = TEMPLATES[ds][0]
        st = states[ds][first_t.name]
        fit, test = st.subset(fit_idx), st.subset(test_idx)
        mis_pairs = (
            pairs.with_template(first_t).subset(test_idx).misleading(pairs.with_template(first_t).subset(fit_idx))
        )
        mis = contrast_states(lm, mis_pairs, args.batch_size)
        out = {}
        for m in (*METHODS, *ZS):
            k = results[ds]["methods"][m]["best_layer"]
            clean_r, mis_r = readings(m, fit, test, k, args.seed), readings(m, fit, mis, k, args.seed)
            c, e = accuracy_estimate(clean_r == test.labels), accuracy_estimate(mis_r == mis.labels)
            out[m] = {"clean": [c.value, c.ci_low, c.ci_high], "misleading": [e.value, e.ci_low, e.ci_high]}
        top = max(("ccs", "top-pc"), key=lambda m: results[ds]["methods"][m]["fit_accuracy"])  # chosen on the fit half
        k = results[ds]["methods"][top]["best_layer"]
        gaps = {}
        for name, s in (("clean", test), ("misleading", mis)):
            g_ = accuracy_estimate(readings(top, fit, s, k, args.seed) != s.stated())
            gaps[name] = [g_.value, g_.ci_low, g_.ci_high, g_.n]
        misleading[ds] = {"accuracy": out, "honesty_gap": gaps, "gap_probe": [top, k]}
    # speed: the pipeline against the bare forward passes over the same batches, side by side
    speed_pairs = statement_pairs(args.n_speed)
    t_bare = min(bare_forward_seconds(lm, speed_pairs, args.batch_size) for _ in range(2))
    t_states = []
    for _ in range(2):
        start = time.perf_counter()
        contrast_states(lm, speed_pairs, args.batch_size)
        t_states.append(time.perf_counter() - start)
    n_sets = sum(len(v) for v in states.values())
    speed = {
        "bare_forward_s": t_bare,
        "states_s": min(t_states),
        "extraction_ratio": min(t_states) / t_bare,
        "probe_fitting_s_per_set": fit_time / n_sets,
        "pipeline_ratio": (min(t_states) + fit_time / n_sets) / t_bare,
        "texts": 2 * len(speed_pairs),
    }
    payload = {"model": args.model, "args": vars(args), "results": results, "transfer": transfer,
               "misleading": misleading, "speed": speed}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(render(payload))
    print(render(payload))


def render(p: dict[str, Any]) -> str:
    def ci(v: list[float]) -> str:
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    lines = [
        f"# Honesty probes on {p['model']} (bench/alignment_probes.py)",
        "",
        "CPU run on a machine shared by several engineers: timings are noisy; ratios were measured in one process,",
        "side by side. Statements are the project's own (not a benchmark); mr is the zoo's movie-review test split.",
        f"Settings: {p['args']}.",
        "",
    ]
    for ds, r in p["results"].items():
        lines += [f"## {ds} (fit {r['n_fit']}, test {r['n_test']} per template; exact 95% intervals)", ""]
        templates = list(next(iter(r["methods"].values()))["accuracy"])
        lines += ["| method | best layer | " + " | ".join(templates) + " | mean | std over templates |",
                  "|---" * (len(templates) + 4) + "|"]  # fmt: skip
        for m, row in r["methods"].items():
            cells = " | ".join(ci(row["accuracy"][t]) for t in templates)
            extra = f" (either sign {row['either_sign_mean']:.3f})" if "either_sign_mean" in row else ""
            lines.append(f"| {m} | {row['best_layer']} | {cells} | {row['mean_accuracy']:.3f}{extra} | "
                         f"{row['template_std']:.3f} |")  # fmt: skip
        for z, (d, lo, hi) in r["ccs_minus"].items():
            holds = "holds" if lo > 0 and d >= 0.04 else ("not shown" if lo <= 0 else "positive but under 4 points")
            lines.append(f"\nCCS minus {z}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap over test items and "
                         f"templates): Burns et al.'s +4 points {holds}.")  # fmt: skip
        lines.append("")
    lines += ["## Transfer (fit on one dataset, test on the other; first template)", ""]
    lines += [f"- {k}: {ci(v)}" for k, v in p["transfer"].items()]
    lines += ["", "## Misleading prefix and honesty gap (first template)", ""]
    for ds, r in p["misleading"].items():
        lines.append(
            f"{ds}: " + "; ".join(f"{m} {ci(v['clean'])} -> {ci(v['misleading'])}" for m, v in r["accuracy"].items())
        )
        gap = r["honesty_gap"]
        lines.append(f"honesty gap ({r['gap_probe'][0]} at layer {r['gap_probe'][1]}): clean {ci(gap['clean'])}, "
                     f"misleading {ci(gap['misleading'])}")  # fmt: skip
        lines.append("")
    s = p["speed"]
    lines += ["## Speed (statements, first template)", "",
              f"bare forward passes {s['bare_forward_s']:.1f}s for {s['texts']} texts; hidden states of all layers and "
              f"both answers' log-probabilities {s['states_s']:.1f}s: extraction ratio {s['extraction_ratio']:.2f}x; "
              f"with all probes fitted at every layer ({s['probe_fitting_s_per_set']:.1f}s per set): pipeline ratio "
              f"{s['pipeline_ratio']:.2f}x (goal < 1.2x)."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
