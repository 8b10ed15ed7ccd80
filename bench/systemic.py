"""Defence in depth on the embedded model: how much a monitor-aware (adaptive) attack erodes protection.

For each monitor (thresholds at 5% false alarms on the correct answers of clean validation data) and
each L-inf budget, PGD on the test data three ways, same steps and seed:

* blind: PGD with cross-entropy, the attack an audit runs when it ignores the monitor;
* naive adaptive: PGD on ``CE - violation`` (one summed objective, a common first try);
* selective adaptive: PGD with :class:`mlsafety.systemic.MonitorAwareObjective` (the check's attack).

It reports the escaped-failure rate (wrong answer, not flagged) of each with its exact interval, and
the seconds each attack took. No peer library evaluates a model and a monitor together, so the
comparison is between attack designs in one process on the same model, data and monitor.

    OMP_NUM_THREADS=1 .venv/bin/python bench/systemic.py [--steps 50] [--n 360]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mlsafety import zoo
from mlsafety.core import Classifier, Outputs, forward
from mlsafety.monitoring import ood
from mlsafety.robustness.attacks import PGD
from mlsafety.systemic import Monitor, MonitorAwareObjective, Outcome, ScoredSet, candidate_monitors, failures

RESULTS = Path(__file__).parent / "results"
MONITORS = ["confidence", "energy", "mahalanobis", "mahalanobis+confidence", "knn+confidence"]
EPS = (0.05, 0.1, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--n", type=int, default=360, help="test inputs attacked")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    clf = Classifier(zoo.load_model("digits-cnn"))
    train, val, test = (zoo.load_dataset("digits", s) for s in ("train", "val", "test"))
    x, y = test.x[: args.n], test.y[: args.n]
    names = ["energy", "mahalanobis", "knn"]
    dets = {n: ood.create(n) for n in names}
    ood.fit_detectors(list(dets.values()), clf, train)
    val_out = forward(clf, val.x)
    val_scores = {n: d.score_outputs(clf, val_out) for n, d in dets.items()}
    val_set = ScoredSet(failures(val_out.logits, val.y), val_out.probs.amax(1), val_scores)
    monitors = {m.name: m for m in candidate_monitors(val_set, names, 0.05)}

    def outcome(mon: Monitor, adv: torch.Tensor) -> Outcome:
        out = forward(clf, adv)
        scores = dets[mon.detector].score_outputs(clf, out) if mon.detector else None
        return Outcome(failures(out.logits, y), mon.flags(scores, out.probs.amax(1)))

    def timed(attack: PGD) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        adv = attack(clf, x, y)
        return adv, time.perf_counter() - t0

    records = []
    for eps in EPS:
        blind_x, blind_s = timed(PGD(eps=eps, steps=args.steps, seed=0))
        for name in MONITORS:
            mon = monitors[name]
            det = dets.get(mon.detector) if mon.detector else None
            if det is not None:
                fresh = ood.create(mon.detector)
                fit_out = forward(clf, train.x)
                fresh.fit_outputs(clf, Outputs(fit_out.logits.clone(), fit_out.features.clone()), train.y)

                def score_fn(out: Outputs, d: ood.Detector = fresh) -> torch.Tensor:
                    return d.score_graph(clf, out)

            else:
                score_fn = None  # type: ignore[assignment]
            needs = det is not None and "features" in det.needs
            obj = MonitorAwareObjective(clf, mon, score_fn, needs)

            def naive(logits: torch.Tensor, yy: torch.Tensor, xx: torch.Tensor, o=obj) -> torch.Tensor:  # type: ignore[no-untyped-def]
                _, v = o._violation(logits, xx)
                return F.cross_entropy(logits, yy, reduction="none") - v

            naive_x, naive_s = timed(PGD(eps=eps, steps=args.steps, seed=0, loss=naive, success=obj.success))
            sel_x, sel_s = timed(PGD(eps=eps, steps=args.steps, seed=0, loss=obj.loss, success=obj.success))
            row = {"eps": eps, "monitor": name}
            for label, adv, secs in (
                ("blind", blind_x, blind_s),
                ("naive", naive_x, naive_s),
                ("selective", sel_x, sel_s),
            ):
                o = outcome(mon, adv)
                e = o.escaped_failure_rate()
                row[label] = {
                    "failure_rate": o.failure_rate().value,
                    "escaped_failure_rate": e.value,
                    "ci": [e.ci_low, e.ci_high],
                    "seconds": secs,
                }
            records.append(row)
            print(json.dumps(row))

    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "steps": args.steps, "n": len(y), "torch": torch.__version__}  # fmt: skip
    (RESULTS / "systemic.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    lines = [
        "# Defence in depth: blind vs adaptive attacks on digits-cnn + monitor",
        "",
        f"{len(y)} test inputs, PGD L-inf {args.steps} steps, monitors at 5% false alarms on clean validation data, "
        f"{meta['threads']} thread(s). Escaped-failure rate (wrong and not flagged) [exact 95% CI]; "
        "seconds per attack.",
        "",
        "| eps | monitor | blind | naive adaptive (CE - violation) | selective adaptive (ours) |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        cells = [
            f"{r[k]['escaped_failure_rate']:.3f} [{r[k]['ci'][0]:.3f}, {r[k]['ci'][1]:.3f}] ({r[k]['seconds']:.1f} s)"
            for k in ("blind", "naive", "selective")
        ]
        lines.append(f"| {r['eps']} | {r['monitor']} | " + " | ".join(cells) + " |")
    (RESULTS / "systemic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
