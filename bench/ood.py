"""OOD detectors: one shared forward pass against one pass per detector, and what they detect.

Three parts, written to ``bench/results/ood.json`` and ``bench/results/ood.md``:

1. Speed. Every registered post-hoc detector that needs only logits and features is fitted and
   scored over the same in- and out-of-distribution data in two ways: our engine
   (``fit_detectors`` / ``score_detectors``: one forward pass per data set feeds them all), and
   the way peer libraries run them (each detector its own ``fit`` and ``score``, each with its own
   forward pass). The figure of merit is the cost of scoring with all detectors relative to one
   plain forward pass over the scored data (goal: below 1.5x). Two models: the embedded
   ``digits-cnn`` (tiny, 8x8 inputs, where the pass is nearly free) and a seeded, randomly
   initialised wider CNN on 3x32x32 inputs (a pass that costs something).
2. Detection quality on the embedded data: AUROC and FPR@95TPR of every detector (fitted on the
   training split) for each OOD set.
3. Outlier exposure: the same for a few detectors after fine-tuning the embedded model with
   synthetic outliers made from the training digits (never from the OOD test sets).
4. Metrics against peers: the fused bootstrap of the four detection metrics against
   four separate bootstraps (``bootstrap_two_sample``) and a scikit-learn loop, and ECE against torchmetrics.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ood.py [--repeats 3] [--skip-oe]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mlsafety import zoo
from mlsafety.core import Classifier, generator
from mlsafety.metrics import auroc, fpr95_id_positive
from mlsafety.monitoring import ood
from mlsafety.monitoring.training import outlier_exposure, outlier_set

RESULTS = Path(__file__).parent / "results"
OE_DETECTORS = ["msp", "energy", "knn", "mahalanobis", "vim", "react"]


def shared_names() -> list[str]:
    return [n for n in ood.available() if ood.DETECTORS.get(n).needs <= ood.SHARED_NEEDS]


class WideCNN(nn.Module):
    """A VGG-style CNN for 3x32x32 inputs (about 0.3M parameters, 128 features, ~12M multiply-adds)."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` runs: the machine is shared, and the minimum is the least disturbed."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def timed_pair(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best-of times of ``a`` and ``b`` run alternately, so both see the same load."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a, 1))
        tb.append(timed(b, 1))
    return min(ta), min(tb)


def plain_forward(clf: Classifier, x: torch.Tensor, batch_size: int = 256) -> None:
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            clf.logits(x[s : s + batch_size])


def speed(label: str, model: nn.Module, fit_x: torch.Tensor, fit_y: torch.Tensor, score_x: torch.Tensor,
          repeats: int) -> dict[str, object]:  # fmt: skip
    clf = Classifier(model.eval())
    names = shared_names()
    fit_data = (fit_x, fit_y)
    plain_forward(clf, score_x[:64])  # warm up

    def shared_fit() -> list[ood.Detector]:
        return ood.fit_detectors([ood.create(n) for n in names], clf, fit_data)

    dets = shared_fit()
    t_fwd, t_shared_score = timed_pair(
        lambda: plain_forward(clf, score_x), lambda: ood.score_detectors(dets, clf, score_x), repeats
    )
    t_fwd_fit, t_shared_fit = timed_pair(lambda: plain_forward(clf, fit_x), shared_fit, repeats)

    def separate_fit() -> list[ood.Detector]:
        return [ood.create(n).fit(clf, fit_data) for n in names]

    t0 = time.perf_counter()  # one run: it makes a pass per detector, and the ratio is large anyway
    singles = separate_fit()
    t_sep_fit = time.perf_counter() - t0
    t_sep_score = timed(lambda: [d.score(clf, score_x) for d in singles], 1)

    # where the shared scoring time goes: the pass itself, then each detector on cached outputs
    outputs, _ = ood.collect_outputs(clf, score_x)
    t_pass = timed(lambda: ood.collect_outputs(clf, score_x), repeats)
    per_det = per_detector_in_one_call(clf, dets, outputs, max(repeats, 5))
    return {
        "model": label,
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_fit": int(fit_x.shape[0]),
        "n_score": int(score_x.shape[0]),
        "detectors": names,
        "plain_forward_score_s": t_fwd,
        "plain_forward_fit_s": t_fwd_fit,
        "shared_fit_s": t_shared_fit,
        "shared_score_s": t_shared_score,
        "separate_fit_s": t_sep_fit,
        "separate_score_s": t_sep_score,
        "shared_pass_with_features_s": t_pass,
        "score_vs_plain_forward": t_shared_score / t_fwd,
        "separate_vs_shared_score": t_sep_score / t_shared_score,
        "separate_vs_shared_fit": t_sep_fit / t_shared_fit,
        "per_detector_score_s": per_det,
    }


def per_detector_in_one_call(
    clf: Classifier, dets: list[ood.Detector], outputs: object, repeats: int
) -> dict[str, float]:
    """Each detector's time within one engine call on cached outputs (best of ``repeats``): work that
    detectors share (e.g. the similarity search of KNN and NNGuide) counts where it is first done."""
    from mlsafety.monitoring.ood import sharing

    best: dict[str, float] = {}
    for _ in range(repeats):
        with sharing():
            for det in dets:
                det.plan(outputs)  # type: ignore[arg-type]
            for det in dets:
                t0 = time.perf_counter()
                det.score_outputs(clf, outputs)  # type: ignore[arg-type]
                best[det.name] = min(best.get(det.name, float("inf")), time.perf_counter() - t0)
    return best


def quality(model: nn.Module, names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    fit = zoo.load_dataset("digits", "train")
    test = zoo.load_dataset("digits", "test")
    sets = {n: zoo.load_dataset(n) for n in zoo.ood_names()}
    dets = [ood.create(n) for n in names]
    shared = [d for d in dets if d.shared]
    ood.fit_detectors(dets, model, fit)
    sid = ood.score_detectors(dets, model, test.x)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, data in sets.items():
        sout = ood.score_detectors(dets, model, data.x)
        out[set_name] = {
            n: {"auroc": float(auroc(sid[n], sout[n])), "fpr_at_95_tpr": float(fpr95_id_positive(sid[n], sout[n]))}
            for n in sid
        }
    del shared
    return out


def metric_speed(repeats: int) -> dict[str, object]:
    """Bootstrap intervals of the four detection metrics, and ECE, against peers on the same scores."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    from mlsafety.metrics import OOD_METRICS, bootstrap_two_sample, ood_metrics

    def separate_bootstraps(a: torch.Tensor, b: torch.Tensor, n_boot: int) -> dict[str, object]:
        return {name: bootstrap_two_sample(fn, a, b, n_boot=n_boot) for name, fn in OOD_METRICS.items()}

    from mlsafety.monitoring import calibration as cal

    g = generator(0, "bench-metrics")
    a = torch.randn(2000, generator=g).double()
    b = torch.randn(2000, generator=g).double() + 1.0
    n_boot = 500

    def sklearn_boot() -> None:
        rng = np.random.default_rng(0)
        an, bn = a.numpy(), b.numpy()
        y = np.r_[np.zeros(len(an)), np.ones(len(bn))]
        for _ in range(n_boot):
            s = np.r_[an[rng.integers(0, len(an), len(an))], bn[rng.integers(0, len(bn), len(bn))]]
            roc_auc_score(y, s)
            average_precision_score(y, s)
            average_precision_score(1 - y, -s)
            fpr, tpr, _ = roc_curve(1 - y, -s)
            fpr[np.searchsorted(tpr, 0.95)]

    t_fast = timed(lambda: ood_metrics(a, b, n_boot=n_boot), repeats)
    t_ref = timed(lambda: separate_bootstraps(a, b, n_boot), repeats)
    t_sk = timed(sklearn_boot, 1)
    fast, ref = ood_metrics(a, b, n_boot=n_boot), separate_bootstraps(a, b, n_boot)
    max_diff = max(abs(x - y) for k in ref for x, y in zip(fast[k], ref[k]))

    from torchmetrics.functional.classification import multiclass_calibration_error

    logits = torch.randn(20000, 10, generator=g) * 3
    labels = torch.randint(0, 10, (20000,), generator=g)
    probs = logits.softmax(1)
    t_ece = timed(lambda: cal.ece(probs, labels), repeats)
    t_tm = timed(lambda: multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15), repeats)
    ece_diff = abs(
        cal.ece(probs, labels) - float(multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15))
    )
    return {
        "bootstrap": {"n_in": 2000, "n_out": 2000, "n_boot": n_boot, "ours_fused_s": t_fast,
                      "mlsafety_metrics_ood_metrics_s": t_ref, "sklearn_loop_s": t_sk,
                      "max_abs_difference_vs_ood_metrics": max_diff},
        "ece": {"n": 20000, "classes": 10, "ours_s": t_ece, "torchmetrics_s": t_tm, "abs_difference": ece_diff},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-oe", action="store_true", help="skip the outlier-exposure part")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    # 1. speed ------------------------------------------------------------------------------------
    digits = zoo.load_model("digits-cnn")
    train = zoo.load_dataset("digits", "train")
    test = zoo.load_dataset("digits", "test")
    score_x = torch.cat([test.x, *[zoo.load_dataset(n).x for n in zoo.ood_names()]])
    runs = [speed("digits-cnn (1x8x8)", digits, train.x, train.y, score_x, args.repeats)]

    g = generator(0, "bench-ood-wide")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        wide = WideCNN()
    fit_x = torch.rand(1000, 3, 32, 32, generator=g)
    fit_y = torch.randint(0, 10, (1000,), generator=g)
    wide_score = torch.cat([torch.rand(500, 3, 32, 32, generator=g),
                            *[zoo.load_dataset(n, shape=(3, 32, 32)).x[:167] for n in zoo.ood_names()]])  # fmt: skip
    runs.append(speed("wide CNN (3x32x32, random init)", wide, fit_x, fit_y, wide_score, args.repeats))

    # 2. quality ----------------------------------------------------------------------------------
    names = [n for n in ood.available() if n != "deep-ensemble"]
    base_quality = quality(digits, names)

    # 3. outlier exposure -------------------------------------------------------------------------
    oe: dict[str, object] = {}
    if not args.skip_oe:
        t0 = time.perf_counter()
        tuned = outlier_exposure(digits, train, outlier_set(train, copies=2), epochs=10)
        oe_seconds = time.perf_counter() - t0
        with torch.no_grad():
            acc_before = float((digits(test.x).argmax(1) == test.y).float().mean())
            acc_after = float((tuned(test.x).argmax(1) == test.y).float().mean())
        oe = {
            "epochs": 10,
            "seconds": oe_seconds,
            "accuracy_before": acc_before,
            "accuracy_after": acc_after,
            "before": {s: {n: v[n] for n in OE_DETECTORS} for s, v in base_quality.items()},
            "after": quality(tuned, OE_DETECTORS),
        }

    metrics = metric_speed(args.repeats)

    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "speed": runs,
        "quality": base_quality,
        "outlier_exposure": oe,
        "metrics": metrics,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ood.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ood.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:  # type: ignore[type-arg]
    lines = ["# OOD detectors: shared forward pass, detection quality, outlier exposure", ""]
    lines.append(
        f"{r['threads']} thread(s), torch {r['torch']}, best of {r['repeats']} runs (a shared 2-core machine; "
        "the plain pass and the shared scoring are timed alternately so both see the same load; the "
        "one-pass-per-detector mode is timed once)."
    )
    lines += ["", "## Speed: all post-hoc detectors from one pass vs one pass per detector", ""]
    lines += ["| model | detectors | plain pass over scored data (s) | shared: score all (s) | score all / plain pass "
              "| one pass per detector: score (s) | speed-up score | shared fit (s) | per-detector fit (s) "
              "| speed-up fit |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in r["speed"]:
        lines.append(
            f"| {s['model']} | {len(s['detectors'])} | {s['plain_forward_score_s']:.3f} | {s['shared_score_s']:.3f} "
            f"| {s['score_vs_plain_forward']:.2f}x | {s['separate_score_s']:.3f} "
            f"| {s['separate_vs_shared_score']:.1f}x "
            f"| {s['shared_fit_s']:.3f} | {s['separate_fit_s']:.3f} | {s['separate_vs_shared_fit']:.1f}x |"
        )
    for s in r["speed"]:
        costly = sorted(s["per_detector_score_s"].items(), key=lambda kv: -kv[1])[:5]
        lines.append("")
        lines.append(f"{s['model']}: the pass with features takes {s['shared_pass_with_features_s']:.3f} s; the "
                     "costliest detectors within one engine call on cached outputs (shared work counted where "
                     "it is first done): "
                     + ", ".join(f"{n} {t * 1000:.1f} ms" for n, t in costly) + ".")  # fmt: skip
    lines += ["", "## Detection quality on the embedded data (digits-cnn, fitted on the training split)", ""]
    sets = list(r["quality"])
    lines.append("| detector | " + " | ".join(f"{s} AUROC / FPR@95" for s in sets) + " | mean AUROC |")
    lines.append("|---|" + "---|" * (len(sets) + 1))
    dets = list(r["quality"][sets[0]])
    rank = sorted(dets, key=lambda d: -sum(r["quality"][s][d]["auroc"] for s in sets))
    for d in rank:
        cells = [f"{r['quality'][s][d]['auroc']:.3f} / {r['quality'][s][d]['fpr_at_95_tpr']:.3f}" for s in sets]
        mean = sum(r["quality"][s][d]["auroc"] for s in sets) / len(sets)
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {mean:.3f} |")
    m = r.get("metrics")
    if m:
        bs, ec = m["bootstrap"], m["ece"]
        lines += ["", "## Metrics against peers (same scores, one process)", ""]
        lines += ["| task | ours (s) | peer (s) | peer / ours | largest difference |", "|---|---|---|---|---|"]
        lines.append(
            f"| AUROC, AUPR-In, AUPR-Out, FPR@95 with {bs['n_boot']} bootstrap resamples "
            f"({bs['n_in']} + {bs['n_out']} scores) vs four separate bootstraps | {bs['ours_fused_s']:.3f} "
            f"| {bs['mlsafety_metrics_ood_metrics_s']:.3f} "
            f"| {bs['mlsafety_metrics_ood_metrics_s'] / bs['ours_fused_s']:.1f}x "
            f"| {bs['max_abs_difference_vs_ood_metrics']:.1e} |"
        )
        lines.append(
            f"| same, vs a scikit-learn loop | {bs['ours_fused_s']:.3f} | {bs['sklearn_loop_s']:.3f} "
            f"| {bs['sklearn_loop_s'] / bs['ours_fused_s']:.1f}x | (other resamples) |"
        )
        lines.append(
            f"| ECE, 15 bins, {ec['n']} x {ec['classes']} probabilities vs torchmetrics | {ec['ours_s']:.4f} "
            f"| {ec['torchmetrics_s']:.4f} | {ec['torchmetrics_s'] / ec['ours_s']:.1f}x "
            f"| {ec['abs_difference']:.1e} |"
        )
    oe = r["outlier_exposure"]
    if oe:
        lines += ["", "## Outlier exposure (10 epochs, synthetic outliers from the training digits)", ""]
        lines.append(f"Test accuracy {oe['accuracy_before']:.4f} before, {oe['accuracy_after']:.4f} after; "
                     f"fine-tuning took {oe['seconds']:.1f} s. AUROC before -> after:")  # fmt: skip
        lines += ["", "| detector | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for d in OE_DETECTORS:
            cells = [f"{oe['before'][s][d]['auroc']:.3f} -> {oe['after'][s][d]['auroc']:.3f}" for s in sets]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
