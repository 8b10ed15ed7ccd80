"""A2T-style adversarial training on ``minilm-mr`` (issue 14): the before/after row.

Before: the shipped ``minilm-mr``. After: the same model trained further by
:func:`mlsafety.robustness.text.adversarial_train_text` (Yoo & Qi 2021, A2T) on a seeded subset of ``mr``'s
train split, training only what the ``minilm-mr`` recipe trains (its top encoder layer and the head; the
lower layers keep their weights and run without dropout). Control: the same loop on the same subset with
no adversarial texts (``warmup = epochs``), so the effect of the augmentation is told apart from the effect
of more training on the subset.

Each model is measured on the same seeded ``mr`` test subset: clean accuracy (on the whole test split as
well), accuracy under the cheap attack used for training (``a2t``) and under one other recipe
(``deepwordbug`` by default: character edits, an attack the training never saw), each with its exact
95% interval; paired before/after robustness per text with an exact two-sided McNemar test.

The training-time attack is the ``a2t`` recipe with ``min_cos`` lowered to 0.5: on minilm-mr's input
embeddings (no counter-fitted vectors) A2T's 0.8 leaves almost no neighbours (1 success in 10 in a probe),
as HotFlip's 0.8 did; 0.5 is the project's TextFooler and HotFlip threshold.

Torch runs on one thread (``--threads``); CPU seconds of this process are recorded beside wall seconds
(the machine is shared: wall time is rough).

Run: ``.venv/bin/python bench/text_a2t.py`` (writes bench/results/text_a2t.{json,md}).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety import zoo
from mlsafety.core import Classifier, TextDataset, TrainConfig, generator
from mlsafety.metrics import Estimate, proportion
from mlsafety.robustness import text as T
from mlsafety.robustness.text import adversarial_train_text

OUT = Path(__file__).parent / "results"
TOP = ["encoder.bert.encoder.layer.5", "fc"]
"""What the minilm-mr recipe trains (TOP_LAYERS = 1 of the 6 layers, and the head)."""


def est(e: Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}


def fmt(e: dict[str, float] | None) -> str:
    if e is None:
        return "-"
    return f"{100 * e['value']:.1f}% [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def mcnemar_two_sided(a: list[bool], b: list[bool]) -> tuple[int, int, float]:
    """Discordant pairs (a only, b only) and the exact two-sided McNemar p (binomial on the discordant pairs)."""
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    n = a_only + b_only
    if n == 0:
        return 0, 0, 1.0
    k = min(a_only, b_only)
    p = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return a_only, b_only, min(1.0, p)


def accuracy(model: torch.nn.Module, texts: list[str], labels: torch.Tensor) -> Estimate:
    clf = Classifier(model)
    with torch.inference_mode():
        preds = torch.cat([clf.logits(texts[i : i + 128]).argmax(dim=1) for i in range(0, len(texts), 128)])
    return proportion(int((preds == labels).sum()), len(texts))


def measure(
    model: torch.nn.Module, args: argparse.Namespace, test: TextDataset, texts: list[str], labels: torch.Tensor
) -> dict[str, Any]:
    """Clean accuracy (whole test split and subset) and each attack's figures on the subset."""
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict[str, Any] = {
        "clean_accuracy_test": est(accuracy(model, [str(t) for t in test.x], test.y)),
        "clean_accuracy_subset": est(accuracy(model, texts, labels)),
        "attacks": {},
    }
    for name in ("a2t", args.other):
        kw: dict[str, Any] = {"min_cos": args.min_cos} if name == "a2t" else {}
        attack = T.create(name, model, query_budget=args.budget, **kw)
        results = attack.attack(texts, labels)
        robust = [r.status == "failed" for r in results]  # correct and not flipped
        attacked = [r for r in results if r.status != "skipped"]
        won = sum(r.success for r in attacked)
        out["attacks"][name] = {
            "accuracy_under_attack": est(proportion(sum(robust), len(results))),
            "success_rate": est(proportion(won, len(attacked))) if attacked else None,
            "robust": robust,
            "queries": sum(r.queries for r in results),
        }
        print(f"  {name}: under attack {fmt(out['attacks'][name]['accuracy_under_attack'])}", flush=True)
    out["eval_seconds"] = time.perf_counter() - t0
    out["eval_cpu_seconds"] = time.process_time() - c0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-n", type=int, default=1000, help="mr train texts (seeded subset)")
    ap.add_argument("--test-n", type=int, default=200, help="mr test texts attacked (seeded subset)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--attack-share", type=float, default=0.5)
    ap.add_argument("--adv-weight", type=float, default=0.6, help="A2T's alpha")
    ap.add_argument("--lr", type=float, default=1e-4, help="the minilm-mr recipe's learning rate")
    ap.add_argument("--budget", type=int, default=100, help="queries per text, training and evaluation attacks")
    ap.add_argument("--min-cos", type=float, default=0.5)
    ap.add_argument("--other", default="deepwordbug", help="the second recipe measured")
    ap.add_argument("--no-control", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--md-only", action="store_true", help="rewrite the .md (and the paired tests) from the .json")
    args = ap.parse_args()
    if args.md_only:
        saved = json.loads((OUT / "text_a2t.json").read_text())
        save(saved, complete=bool(saved.get("complete")))
        return
    torch.set_num_threads(args.threads)

    train_all = zoo.load_dataset("mr", "train")
    test = zoo.load_dataset("mr", "test")
    assert isinstance(train_all, TextDataset) and isinstance(test, TextDataset)
    pick = torch.randperm(len(train_all), generator=generator(0, "bench", "text-a2t", "train"))[: args.train_n]
    train = TextDataset([str(train_all.x[int(i)]) for i in pick], train_all.y[pick], name="mr-train-subset")
    sub = torch.randperm(len(test), generator=generator(0, "bench", "text-a2t", "test"))[: args.test_n].sort().values
    texts = [str(test.x[int(i)]) for i in sub]
    labels = test.y[sub]
    config = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=32, weight_decay=0.0, schedule="constant", stream=("bench", "a2t")
    )

    def attack_factory(m: torch.nn.Module) -> T.Attack:
        return T.create("a2t", m, query_budget=args.budget, min_cos=args.min_cos)

    record: dict[str, Any] = {"settings": vars(args), "trainable": TOP, "models": {}}
    shipped = zoo.load_model("minilm-mr")
    print("before (shipped minilm-mr)", flush=True)
    record["models"]["before"] = measure(shipped, args, test, texts, labels)
    save(record, complete=False)
    variants = [("after (A2T)", args.warmup)]
    if not args.no_control:
        variants.append(("control (same loop, no adversarial texts)", args.epochs))
    for name, warmup in variants:
        model = copy.deepcopy(shipped)
        t0, c0 = time.perf_counter(), time.process_time()
        log = adversarial_train_text(
            model, train, attack_factory, config, warmup=warmup, attack_share=args.attack_share,
            adv_weight=args.adv_weight, trainable=TOP,
        )  # fmt: skip
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{name}: trained in {train_s:.0f} s wall, {train_cpu:.0f} s CPU; added {log.added}", flush=True)
        row = measure(model, args, test, texts, labels)
        row.update({"train_seconds": train_s, "train_cpu_seconds": train_cpu, "attacked": log.attacked,
                    "added": log.added})  # fmt: skip
        record["models"][name] = row
        save(record, complete=False)
    save(record, complete=True)


def save(record: dict[str, Any], complete: bool) -> None:
    """Paired tests of every trained model against ``before``, then text_a2t.{json,md} (rewritten after each
    model, marked partial until the last)."""
    before = record["models"]["before"]
    tests: dict[str, Any] = {}
    for name in list(record["models"])[1:]:
        for attack in before["attacks"]:
            after = record["models"][name]["attacks"][attack]["robust"]
            a, b, p = mcnemar_two_sided(before["attacks"][attack]["robust"], after)
            tests[f"{name} vs before, {attack}"] = {"robust_before_only": a, "robust_after_only": b, "p_two_sided": p}
    names = list(record["models"])
    if len(names) == 3:  # A2T against the control: the same training without adversarial texts
        for attack in before["attacks"]:
            a, b, p = mcnemar_two_sided(
                record["models"][names[2]]["attacks"][attack]["robust"],
                record["models"][names[1]]["attacks"][attack]["robust"],
            )
            tests[f"{names[1]} vs control, {attack}"] = {
                "robust_before_only": a,
                "robust_after_only": b,
                "p_two_sided": p,
            }
    record["mcnemar"] = tests
    record["complete"] = complete
    OUT.mkdir(exist_ok=True)
    (OUT / "text_a2t.json").write_text(json.dumps(record, indent=2))
    write_md(record)


def write_md(record: dict[str, Any]) -> None:
    s = record["settings"]
    other = s["other"]
    lines = [
        "# A2T-style adversarial training on minilm-mr: before / after (issue 14)"
        + ("" if record.get("complete") else " - partial"),
        "",
        f"Training: {s['train_n']} seeded mr train texts, {s['epochs']} epochs ({s['warmup']} clean warm-up), "
        f"{s['attack_share']:.0%} of the texts attacked each later epoch with `a2t` (min_cos {s['min_cos']}, "
        f"budget {s['budget']}), successful ones added with weight {s['adv_weight']}; Adam lr {s['lr']}, batch 32; "
        "only what the minilm-mr recipe trains (top encoder layer and head). Evaluation: "
        f"{s['test_n']} seeded mr test texts attacked (budget {s['budget']}), clean accuracy also on all of mr test. "
        "95% intervals are exact (Clopper-Pearson). One torch thread on a shared 2-core machine.",
        "",
        f"| model | clean acc. (mr test) | clean acc. (subset) | acc. under a2t | a2t success | acc. under {other} "
        f"| {other} success | adv. texts added | train CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in record["models"].items():
        a, o = r["attacks"]["a2t"], r["attacks"][other]
        added = "-" if "added" not in r else "+".join(str(k) for k in r["added"])
        cpu = "-" if "train_cpu_seconds" not in r else f"{r['train_cpu_seconds']:.0f}"
        lines.append(
            f"| {name} | {fmt(r['clean_accuracy_test'])} | {fmt(r['clean_accuracy_subset'])} | "
            f"{fmt(a['accuracy_under_attack'])} | {fmt(a['success_rate'])} | {fmt(o['accuracy_under_attack'])} | "
            f"{fmt(o['success_rate'])} | {added} | {cpu} |"
        )
    lines += [
        "",
        'Paired per test text (robust = correct and not flipped), exact two-sided McNemar ("before" / "after"'
        ' are the first / second model named; against the control, the control is "before"):',
        "",
    ]
    for k, v in record["mcnemar"].items():
        lines.append(
            f"- {k}: robust only before {v['robust_before_only']}, only after {v['robust_after_only']}, "
            f"p = {v['p_two_sided']:.3g}"
        )
    (OUT / "text_a2t.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
