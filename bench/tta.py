"""Bench: adversarial risks of test-time adaptation on the image zoo (issue 18's table).

Wu et al. ("Uncovering Adversarial Risks of Test-Time Adaptation", ICML 2023) report that (1) TTA
helps under corruption, (2) a small malicious share of a test batch, optimised through the adaptation
step (the Distribution Invading Attack, DIA), breaks other users' benign predictions, and (3)
adversarial training and robust normalisation statistics reduce the attack's success. This script
measures all three on ``digits-cnn-bn`` and its adversarially trained twin ``digits-cnn-bn-at``:

* benign accuracy without adaptation and with every registered TTA method, on the clean digits test
  set and on five corruptions at severity 3, streamed in batches of 64 (state carried forward);
* DIA success (targeted: the chosen benign input takes the target class; indiscriminate, the
  paper's measure: benign error under attack) against the malicious share m in {1, 5, 10, 20}% at
  batch 64, and against the batch size {32, 128} at m = 10%, for TeBN, TENT and the
  robust-statistics defences ``alpha-bn`` and ``medbn`` (``--attack-methods``), next to random
  malicious inputs of the same budget, on the shifted data (``--attack-on``);
* every rate with its exact (Clopper-Pearson) 95% interval, and a paragraph whose every clause is
  computed from the numbers (an interval comparison decides "helps" / "reduces"; a defence "reduces"
  the attack when the rise in benign error it causes, under attack minus without attack, is smaller,
  so a model's own error under the shift does not count as the attack's).

Writes ``bench/results/tta.json`` and ``tta.md``. Re-run on an idle machine with one command:

    .venv/bin/python bench/tta.py            # about ten minutes on a busy 2-core CPU
    .venv/bin/python bench/tta.py --quick    # a smoke run (fewer batches and steps)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mlsafety.robustness  # noqa: F401  registers the digits-cnn-bn-at recipe
from mlsafety import zoo
from mlsafety.core import generator
from mlsafety.metrics import Estimate
from mlsafety.robustness import corruptions as corr
from mlsafety.robustness import tta

RESULTS = Path(__file__).parent / "results"
MODELS = ("digits-cnn-bn", "digits-cnn-bn-at")
CORRUPTIONS = ("gaussian-noise", "motion-blur", "fog", "contrast", "jpeg-compression")
SEVERITY = 3
SHARES = (0.01, 0.05, 0.1, 0.2)
BATCH = 64
BATCH_SIZES = (32, 128)
DEFENCES = ("alpha-bn", "medbn")
ATTACK_METHODS = ("tebn", "tent", *DEFENCES)
"""Methods attacked by default: the paper's two (TeBN, TENT) and the robust-statistics defences; the
pseudo-label methods (as slow to attack as TENT, unrolled) with ``--attack-methods``."""


def est(e: Estimate) -> dict[str, float | int]:
    return {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}


def shifted(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "clean":
        return x
    return corr.corrupt(x, name, SEVERITY, generator=generator(0, "bench-tta", name, SEVERITY))


def accuracy_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, methods: list[str]) -> dict[str, Any]:
    """:func:`mlsafety.robustness.tta.adaptation_accuracy` per method (the unadapted pass once, with the first)."""
    found = [
        tta.adaptation_accuracy(model, tta.create(m), x, y, batch_size=BATCH, source=i == 0)
        for i, m in enumerate(methods)
    ]
    assert found[0].source is not None
    return {"none": est(found[0].source), **{m: est(a.adapted) for m, a in zip(methods, found, strict=True)}}


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    share: float,
    b: int,
    objective: str,
    groups: int,
    steps: int,
) -> dict[str, Any]:
    """One cell: :func:`mlsafety.robustness.tta.attack_success` (the DIA and random inputs of the same budget)."""
    t0 = time.perf_counter()
    dia = tta.DIA(objective=objective, steps=steps)
    (res,) = tta.attack_success(
        model,
        tta.create(method),
        x,
        y,
        dia,
        shares=[share],
        batch_sizes=[b],
        n_batches=groups,
        groups_per_call=groups,
        seed=0,
    )
    return {
        "malicious": res.n_malicious,
        "batch_size": b,
        "success": est(res.success),
        "random_success": est(res.random_success),
        "benign_error": est(res.benign_error),
        "benign_error_no_attack": est(res.clean_error),
        "seconds": time.perf_counter() - t0,
    }


def fmt(e: dict[str, Any]) -> str:
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def above(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is above ``b`` beyond both intervals (the exact 95% intervals do not overlap)."""
    return bool(a["ci_low"] > b["ci_high"])


def rise(cell: dict[str, Any]) -> dict[str, float]:
    """The attack-induced rise in benign error (under attack minus without attack, same inputs), with a
    conservative interval from the two exact ones: [low under attack - high without, high - low]."""
    a, c = cell["benign_error"], cell["benign_error_no_attack"]
    return {
        "value": a["value"] - c["value"],
        "ci_low": a["ci_low"] - c["ci_high"],
        "ci_high": a["ci_high"] - c["ci_low"],
    }


def findings(res: dict[str, Any], attack_on: str) -> list[str]:
    """One sentence per finding of the paper, each decided from the numbers."""
    out = []
    std = res["models"]["digits-cnn-bn"]
    helped = [
        (c, m)
        for c, row in std["accuracy"].items()
        if c != "clean"
        for m in ("tebn", "tent")
        if above(row[m], row["none"])
    ]
    hurt = [
        (c, m)
        for c, row in std["accuracy"].items()
        if c != "clean"
        for m in ("tebn", "tent")
        if above(row["none"], row[m])
    ]
    n_cells = 2 * (len(std["accuracy"]) - 1)
    out.append(
        f"TTA helps under corruption: {'holds' if len(helped) > len(hurt) else 'does not hold'} here: TeBN or TENT "
        f"beat the unadapted model beyond both exact intervals in {len(helped)} of {n_cells} (corruption, method) "
        f"cells ({', '.join(f'{c}/{m}' for c, m in helped) or 'none'}) and fell below it in {len(hurt)}."
    )
    small = [f"{m:g}" for m in res["shares"] if m <= 0.1]
    beat = [
        (m, k)
        for m, by_obj in std["attack"].items()
        for k in small
        if above(by_obj["indiscriminate"][k]["benign_error"], by_obj["indiscriminate"][k]["random_success"])
    ]
    rose = [
        (m, k)
        for m, by_obj in std["attack"].items()
        for k in small
        if above(by_obj["indiscriminate"][k]["benign_error"], by_obj["indiscriminate"][k]["benign_error_no_attack"])
    ]
    n_small = len(std["attack"]) * len(small)
    worst = max(
        ((m, k, c) for m, by_obj in std["attack"].items() for k, c in by_obj["indiscriminate"].items()),
        key=lambda t: t[2]["benign_error"]["value"],
    )
    hit = max(
        ((m, k, c) for m, by_obj in std["attack"].items() for k, c in by_obj["targeted"].items()),
        key=lambda t: t[2]["success"]["value"],
    )
    out.append(
        f"A small malicious share breaks benign predictions: {'holds' if len(beat) > n_small / 2 else 'does not hold'} "
        f"here: with m <= 10% (on {attack_on}) the DIA's benign error exceeds the error without attack beyond both "
        f"intervals in {len(rose)} of {n_small} (method, m) cells, and that of random malicious inputs of the same "
        f"budget in {len(beat)}; the largest benign error "
        f"under attack is {fmt(worst[2]['benign_error'])} ({worst[0]}, m = {worst[1]}; "
        f"{fmt(worst[2]['benign_error_no_attack'])} without attack), and the targeted attack's best cell hits its "
        f"input in {fmt(hit[2]['success'])} of batches ({hit[0]}, m = {hit[1]})."
    )
    at = res["models"]["digits-cnn-bn-at"]
    reduced, raised = [], []
    for m in res["attack_methods"]:
        for share in res["shares"]:
            a, b = std["attack"][m]["indiscriminate"][f"{share:g}"], at["attack"][m]["indiscriminate"][f"{share:g}"]
            reduced.append(above(rise(a), rise(b)))
            raised.append(above(rise(b), rise(a)))
    out.append(
        f"Adversarial training reduces success: the rise in benign error the attack causes (under attack minus "
        f"without attack, which takes out each model's own error) is smaller for the adversarially trained model "
        f"beyond both (conservative) intervals in {sum(reduced)} of {len(reduced)} (method, m) cells and larger in "
        f"{sum(raised)} ({'holds' if sum(reduced) > len(reduced) / 2 else 'does not hold clearly'} here)."
    )
    for d in DEFENCES:
        if d not in res["attack_methods"]:
            continue
        cells = [
            above(
                rise(std["attack"]["tebn"]["indiscriminate"][f"{s:g}"]),
                rise(std["attack"][d]["indiscriminate"][f"{s:g}"]),
            )
            for s in res["shares"]
        ]
        verdict = "holds" if sum(cells) > len(cells) / 2 else "does not hold clearly"
        out.append(
            f"Robust statistics ({d}) reduce success: the attack-induced rise in benign error is below TeBN's beyond "
            f"both (conservative) intervals in {sum(cells)} of {len(cells)} shares ({verdict} here)."
        )
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Test-time adaptation: does it help, and how far can a malicious share of the batch push it?", ""]
    lines += [
        f"Machine: {res['machine']}; torch {res['torch']}; {res['seconds']:.0f} s in all. "
        f"Attack: DIA, {res['steps']} PGD steps, unconstrained malicious inputs in [0, 1], "
        f"{res['groups']} attacked batches per cell, on {res['attack_on']}. Exact 95% intervals.",
        "",
    ]
    lines += ["## Findings (computed from the tables below)", ""] + [f"- {s}" for s in res["findings"]] + [""]
    for name, r in res["models"].items():
        methods = list(next(iter(r["accuracy"].values())))
        lines += [f"## {name}: benign accuracy, no adaptation vs each method (batches of {BATCH})", ""]
        lines += ["| data | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(fmt(row[m]) for m in methods) + " |" for c, row in r["accuracy"].items()]
        lines += ["", f"## {name}: DIA success vs malicious share m and batch size", ""]
        lines += [
            "| method | m | malicious/batch | targeted success | targeted, random inputs | benign error under attack "
            "| benign error, random inputs | benign error, no attack |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m, by_obj in r["attack"].items():
            for key, cell in by_obj["indiscriminate"].items():
                t = by_obj["targeted"][key]
                lines.append(
                    f"| {m} | {key} | {cell['malicious']}/{cell['batch_size']} | {fmt(t['success'])} | "
                    f"{fmt(t['random_success'])} | {fmt(cell['benign_error'])} | {fmt(cell['random_success'])} | "
                    f"{fmt(cell['benign_error_no_attack'])} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 batches, 5 steps")
    parser.add_argument("--attack-on", default="contrast", help="data the attack runs on: clean or a corruption")
    parser.add_argument("--attack-methods", nargs="+", default=list(ATTACK_METHODS), help="methods attacked")
    parser.add_argument("--render", metavar="JSON", help="only recompute the findings and the .md from a .json")
    parser.add_argument("--out", default=str(RESULTS / "tta"), help="output stem (.json and .md are added)")
    args = parser.parse_args()
    if args.render:
        stored = json.loads(Path(args.render).read_text())
        stored["findings"] = findings(stored, stored["attack_on"])
        Path(args.render).write_text(json.dumps(stored, indent=2))
        Path(args.render).with_suffix(".md").write_text(markdown(stored))
        print("\n".join(stored["findings"]))
        return
    torch.set_num_threads(1)
    groups, steps = (4, 5) if args.quick else (10, 10)
    test = zoo.load_dataset("digits", "test")
    methods = tta.available()
    t_all = time.perf_counter()
    res: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "steps": steps,
        "groups": groups,
        "attack_on": f"{args.attack_on} severity {SEVERITY}" if args.attack_on != "clean" else "clean",
        "shares": list(SHARES),
        "attack_methods": list(args.attack_methods),
        "models": {},
    }
    for name in MODELS:
        model = zoo.load_model(name)
        acc = {c: accuracy_table(model, shifted(test.x, c), test.y, methods) for c in ("clean", *CORRUPTIONS)}
        xa = shifted(test.x, args.attack_on)
        atk: dict[str, Any] = {}
        for m in args.attack_methods:
            atk[m] = {}
            for objective in ("targeted", "indiscriminate"):
                cells = {f"{s:g}": attack(model, xa, test.y, m, s, BATCH, objective, groups, steps) for s in SHARES}
                for b in BATCH_SIZES:
                    cells[f"0.1@{b}"] = attack(model, xa, test.y, m, 0.1, b, objective, groups, steps)
                atk[m][objective] = cells
            print(name, m, f"{time.perf_counter() - t_all:.0f}s", flush=True)
        res["models"][name] = {"accuracy": acc, "attack": atk}
    res["seconds"] = time.perf_counter() - t_all
    res["findings"] = findings(res, res["attack_on"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(markdown(res))
    print("\n".join(res["findings"]))


if __name__ == "__main__":
    main()
