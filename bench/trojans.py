"""Trojan scanners judged on a population of clean and trojaned digits CNNs, plus the demo repair.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/trojans.py [--n 20] [--out build/trojans-population]``.
Trains the population with ``mlsafety.monitoring.trojans.make_population`` (reused when the folder
already holds one made with the same settings), scans every model with every registered scanner,
and writes ``bench/results/trojans.json`` and ``bench/results/trojans.md``. The population itself
is not committed (``mlsafety trojans population`` rebuilds it deterministically).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mlsafety.monitoring.trojans import (
    SCANNERS,
    demo_attack,
    fine_pruning,
    load_population,
    make_population,
    nc_pruning,
    nc_unlearning,
    score_scanner,
    trojan_metrics,
)
from mlsafety.monitoring.trojans.population import BADNETS_DEMO
from mlsafety.zoo import load_dataset, load_model

RESULTS = Path(__file__).parent / "results"

SETTINGS: dict[str, dict[str, Any]] = {
    "neural-cleanse": {"seeds": (0, 1)},
    "abs": {"seeds": (0, 1)},
    "strip": {"seeds": (0, 1, 2)},
    "activation-clustering": {"seeds": (0, 1, 2)},
    "spectral-signatures": {"seeds": (0,)},
}


def _est(e: Any) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}


def population(out: Path, n: int, epochs: int) -> list:
    manifest = out / "manifest.json"
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        if len(meta["members"]) == n and meta["epochs"] == epochs:
            return load_population(out)
    start = time.perf_counter()
    make_population(out, n=n, seed=0, epochs=epochs)
    print(f"population of {n} trained in {time.perf_counter() - start:.0f} s")
    return load_population(out)


def scanners(pop: list, only: list[str] | None) -> dict[str, Any]:
    clean = load_dataset("digits", "val")
    test = load_dataset("digits", "test")
    train = load_dataset("digits", "train")
    out = {}
    for name in SCANNERS.available():
        if only and name not in only:
            continue
        scanner = SCANNERS.create(name, **SETTINGS.get(name, {}))
        s = score_scanner(scanner, pop, clean, test, train)
        out[name] = {
            "params": scanner.get_params(),
            "auroc": _est(s.auroc),
            "target_accuracy": _est(s.target_accuracy),
            "verdict_accuracy": _est(s.verdict_accuracy),
            "threshold": scanner.threshold,
            "seconds_per_model": s.seconds_per_model,
            "cpu_seconds_per_model": s.cpu_seconds_per_model,
            "input_auroc": s.input_auroc,
            "sample_auroc": s.sample_auroc,
            "models": [
                {
                    "name": m.name,
                    "trojaned": m.trojaned,
                    "attack": m.attack,
                    "target": m.target,
                    "score": r.score,
                    "score_std": r.score_std,
                    "flagged": r.flagged,
                    "flag_rate": r.flag_rate,
                    "suspected": r.targets,
                }
                for (m, _), r in zip(pop, s.results)
            ],
        }
        print(
            f"{name}: AUROC {s.auroc.value:.3f} [{s.auroc.ci_low:.3f}, {s.auroc.ci_high:.3f}], "
            f"{s.seconds_per_model:.1f} s/model",
            flush=True,
        )
    return out


def demo() -> dict[str, Any]:
    """Neural Cleanse on the two zoo models, and the three repairs of the trojaned one."""
    clean = load_dataset("digits", "val")
    test = load_dataset("digits", "test")
    target = BADNETS_DEMO["target"]
    attack = demo_attack()
    nc = SCANNERS.create("neural-cleanse", seeds=(0, 1, 2))
    out: dict[str, Any] = {"neural_cleanse": {}, "repair": {}}
    for name in ("digits-cnn", "digits-cnn-badnets"):
        start = time.perf_counter()
        r = nc.scan(load_model(name), clean)
        out["neural_cleanse"][name] = {
            "score": r.score,
            "scores": r.scores,
            "flagged": r.flagged,
            "targets": r.targets,
            "anomaly_index": [round(v, 3) for v in r.per_class.tolist()] if r.per_class is not None else None,
            "seconds": time.perf_counter() - start,
        }
    bad = load_model("digits-cnn-badnets")
    found = nc.scan(bad, clean)
    trigger = found.triggers[found.target if found.target is not None else target]

    def figures(model: torch.nn.Module) -> dict[str, Any]:
        return {k: _est(v) for k, v in trojan_metrics(model, attack, test, target).items()}

    out["repair"]["before"] = figures(bad)
    for method, fn in [
        ("fine-pruning", lambda: fine_pruning(bad, clean)),
        ("nc-unlearning", lambda: nc_unlearning(bad, clean, trigger.apply_trigger)),
        (
            "nc-unlearning-3-rounds",
            lambda: nc_unlearning(bad, clean, trigger.apply_trigger, rounds=3, target=trigger.target),
        ),
        ("nc-pruning", lambda: nc_pruning(bad, clean, trigger.apply_trigger, trigger.target)),
    ]:
        start = time.perf_counter()
        rep = fn()
        out["repair"][method] = {**figures(rep.model), "pruned": rep.pruned, "seconds": time.perf_counter() - start}
    return out


def peers(pop: list) -> dict[str, Any]:
    """ART's activation clustering and spectral signatures beside ours, on the trojaned models' training sets.

    ART answers yes/no per sample, so its AUROC is that of hard predictions; ours ranks samples by a
    continuous score. Both are scored within the target class (where poison is looked for). Times
    include each library's forward pass over the training set.
    """
    import numpy as np
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    from mlsafety.metrics import auroc

    train = load_dataset("digits", "train")
    clean = load_dataset("digits", "val")
    rows: dict[str, dict[str, list[float]]] = {}
    for member, model in pop:
        if not member.trojaned:
            continue
        data, poisoned = member.training_set(train)
        in_class = data.y == member.target
        good, bad = in_class & ~poisoned, in_class & poisoned
        clf = PyTorchClassifier(
            model=model,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=tuple(data.x.shape[1:]),
            nb_classes=10,
            clip_values=(0.0, 1.0),
        )
        x, y = data.x.numpy(), np.eye(10)[data.y.numpy()]
        detectors: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = [
            ("activation-clustering", ActivationDefence, {}, {"nb_clusters": 2, "nb_dims": 10, "reduce": "PCA"}),
            ("spectral-signatures", SpectralSignatureDefense, {"batch_size": 128}, {}),
        ]
        for ours, cls, init_kw, detect_kw in detectors:
            start = time.perf_counter()
            _, is_clean = cls(clf, x, y, **init_kw).detect_poison(**detect_kw)
            art_s = time.perf_counter() - start
            flags = torch.tensor(1 - np.asarray(is_clean), dtype=torch.float64)
            start = time.perf_counter()
            res = SCANNERS.create(ours, seeds=(0,)).scan(model, clean, train=data)
            our_s = time.perf_counter() - start
            assert res.sample_scores is not None
            r = rows.setdefault(ours, {"art_auroc": [], "our_auroc": [], "art_s": [], "our_s": []})
            r["art_auroc"].append(float(auroc(flags[good], flags[bad])))
            r["our_auroc"].append(float(auroc(res.sample_scores[good], res.sample_scores[bad])))
            r["art_s"].append(art_s)
            r["our_s"].append(our_s)
    out = {}
    for name, r in rows.items():
        mean = {k: sum(v) / len(v) for k, v in r.items()}
        out[name] = {**mean, "time_ratio_art_over_ours": mean["art_s"] / mean["our_s"], "models": len(r["art_s"])}
        print(f"peers {name}: {out[name]}", flush=True)
    return out


def markdown(res: dict[str, Any]) -> str:
    def ci(e: dict[str, float] | None, pct: bool = False) -> str:
        if e is None:
            return "n/a"
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        return f"{f(e['value'])} [{f(e['ci_low'])}, {f(e['ci_high'])}]"

    lines = [
        "# Trojan scanners on a population of digits CNNs",
        "",
        f"{res['population']['n']} models ({res['population']['clean']} clean, {res['population']['trojaned']} "
        f"trojaned: {', '.join(res['population']['attacks'])}), {res['population']['epochs']} epochs each; clean set = "
        "digits val (359), probe traffic for STRIP = 100 clean + 100 triggered test inputs per model. "
        f"CPU: {res['machine']}, OMP_NUM_THREADS=1, a machine shared with other jobs (times are indicative).",
        "",
        "| scanner | detection AUROC [95% CI] | target-class accuracy | verdict accuracy (threshold) | "
        "input / sample AUROC | CPU s / model (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in res["scanners"].items():
        extra = s["input_auroc"] if s["input_auroc"] is not None else s["sample_auroc"]
        lines.append(
            f"| {name} | {ci(s['auroc'])} | {ci(s['target_accuracy'], True)} | "
            f"{ci(s['verdict_accuracy'], True)} ({s['threshold']:g}) | "
            f"{'n/a' if extra is None else f'{extra:.3f}'} | "
            f"{s['cpu_seconds_per_model']:.1f} ({s['seconds_per_model']:.1f}) |"
        )
    lines += [
        "",
        "Population (test split): "
        + ", ".join(
            f"{m['name']} acc {m['clean_accuracy']:.3f} ASR {m['attack_success_rate']:.3f}"
            for m in res["population"]["members"]
        ),
    ]
    if "peers" in res:
        lines += [
            "",
            f"## Side by side with ART {res.get('art_version', '')} (adversarial-robustness-toolbox), same models "
            "and training sets",
            "",
            "Poisoned-sample detection within the target class, mean over the trojaned models. ART flags samples "
            "yes/no, so its AUROC is that of hard predictions; ours ranks by a continuous score.",
            "",
            "| method | ART AUROC (hard flags) | our AUROC (scores) | ART s / model | our s / model | ART / ours |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in res["peers"].items():
            lines.append(
                f"| {name} | {p['art_auroc']:.3f} | {p['our_auroc']:.3f} | {p['art_s']:.2f} | {p['our_s']:.2f} | "
                f"{p['time_ratio_art_over_ours']:.2f} |"
            )
    if "demo" in res:
        d = res["demo"]
        lines += ["", "## Demo: digits-cnn vs digits-cnn-badnets (Neural Cleanse, seeds 0, 1, 2)", ""]
        for name, r in d["neural_cleanse"].items():
            lines.append(
                f"- {name}: max anomaly index {r['score']:.2f} (seeds {', '.join(f'{v:.2f}' for v in r['scores'])}), "
                f"flagged={r['flagged']}, suspected targets {r['targets']}, {r['seconds']:.0f} s"
            )
        lines += [
            "",
            "## Repair of digits-cnn-badnets (repair set: digits val; figures on digits test)",
            "",
            "| model | clean accuracy | attack success rate | pruned channels |",
            "|---|---|---|---|",
        ]
        for method, r in d["repair"].items():
            lines.append(
                f"| {method} | {ci(r['clean_accuracy'], True)} | {ci(r['attack_success_rate'], True)} | "
                f"{r.get('pruned', '')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/trojans-population"))
    parser.add_argument("--scanners", nargs="*", default=None)
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="Keep the scanner and demo figures of the last results file."
    )
    parser.add_argument("--reuse-demo", action="store_true", help="Keep the demo figures of the last results file.")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="Recompute only the --scanners named and keep every other figure (other scanners, peers, demo) of "
        "the last results file, e.g. after a fix to one scanner.",
    )
    args = parser.parse_args()
    if args.merge and not args.scanners:
        parser.error("--merge needs --scanners naming the scanners to recompute")
    torch.set_num_threads(1)
    pop = population(args.out, args.n, args.epochs)
    members = [m for m, _ in pop]
    res: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "population": {
            "n": len(pop),
            "epochs": args.epochs,
            "clean": sum(not m.trojaned for m in members),
            "trojaned": sum(m.trojaned for m in members),
            "attacks": sorted({m.attack for m in members if m.trojaned}),
            "members": [vars(m) for m in members],
        },
    }
    previous_path = RESULTS / "trojans.json"
    reuse = (args.reuse or args.reuse_demo or args.merge) and previous_path.is_file()
    previous = json.loads(previous_path.read_text()) if reuse else {}
    if args.merge:
        if previous.get("population", {}).get("members") != res["population"]["members"]:
            raise SystemExit("--merge: the last results file was made on another population; rerun without --merge")
        res["scanners"] = {**previous["scanners"], **scanners(pop, args.scanners)}
        res["scanners"] = {k: res["scanners"][k] for k in SCANNERS.available() if k in res["scanners"]}
        for key in ("art_version", "peers", "demo"):
            if key in previous:
                res[key] = previous[key]
        args.no_peers, args.no_demo = True, True
    else:
        res["scanners"] = (args.reuse and previous.get("scanners")) or scanners(pop, args.scanners)
    if not args.no_peers:
        import art

        res["art_version"] = art.__version__
        res["peers"] = peers(pop)
    if not args.no_demo:
        res["demo"] = previous.get("demo") or demo()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trojans.json").write_text(json.dumps(res, indent=2, default=str))
    (RESULTS / "trojans.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
