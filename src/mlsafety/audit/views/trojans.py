"""How the ``trojans`` check reads in the report: the Neural Cleanse headline, the verdict table, the
one builder of its metric names (:func:`scanner_metric`), and the layout of Neural Cleanse's plots
(:func:`nc_artifacts`, drawn during the run from the scan)."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import NOT_APPLICABLE, Artifact, Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.checks._common import metric_name
from mlsafety.audit.views._budget import split_not_measured
from mlsafety.core import Hazard
from mlsafety.monitoring.trojans import SCANNERS, ScanResult
from mlsafety.monitoring.trojans.evaluate import NC


def scanner_metric(scanner: str, statistic: str, cls: int | None = None) -> str:
    """The stored name of a scanner's ``statistic`` (``neural_cleanse_score``, ``strip_flagged``,
    ``neural_cleanse_anomaly_index_class_3``); the view rebuilds names from the registry's scanner
    names to find rows, never parsing one."""
    return metric_name(scanner, statistic) if cls is None else metric_name(scanner, statistic, "class", cls)


def _index_rows(by: dict[str, StoredRow]) -> list[tuple[int, StoredRow]]:
    """Neural Cleanse's per-class anomaly-index rows, by class (classes 0, 1, ... while stored)."""
    out: list[tuple[int, StoredRow]] = []
    while (r := by.get(scanner_metric(NC, "anomaly_index", len(out)))) is not None:
        out.append((len(out), r))
    return out


def _verdict(score: StoredRow, flagged: StoredRow | None) -> str:
    """The scanner's decision, and whether the score's interval reaches across its threshold (a clean model
    whose largest anomaly index is 2.8 [0.8, 5.4] is flagged by the rule, but the data do not settle it)."""
    verdict = "TROJANED" if flagged is not None and flagged.value > 0.5 else "clean"
    threshold = score.params.get("threshold")
    if isinstance(threshold, (int, float)) and score.ci_low is not None and score.ci_high is not None:
        if score.ci_low <= threshold < score.ci_high:
            other = "clean" if verdict == "TROJANED" else "TROJANED"
            return f"{verdict} (inconclusive: the interval reaches {other})"
    return verdict


class TrojansView(View):
    """Headline: Neural Cleanse's anomaly index; tables: a verdict per scanner, Neural Cleanse per
    class, and the recovered triggers on the test data."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [
            Headline("Trojan: Neural Cleanse anomaly index", r, higher_is_better=False, fmt="{:.2f}")
            for r in rows
            if r.metric == scanner_metric(NC, "score")
        ]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        rows, late = split_not_measured(rows)
        clean = Hazard.clean()
        by = {r.metric: r for r in rows if Hazard.parse(r.hazard) == clean}
        scores = {scanner_metric(s, "score"): s for s in SCANNERS.available()}
        verdicts = []
        for metric, r in by.items():
            scanner = scores.get(metric)
            if scanner is None:
                continue
            flagged = by.get(scanner_metric(scanner, "flagged"))
            target = by.get(scanner_metric(scanner, "target"))
            rate = by.get(scanner_metric(scanner, "flag_rate"))
            verdicts.append(
                [
                    scanner,
                    f"{fmt_value(r.value)} {fmt_ci(r)}",
                    fmt_value(r.params.get("score_std")),
                    fmt_value(r.params.get("threshold")),
                    _verdict(r, flagged),
                    "" if rate is None else fmt_value(rate.value),
                    "" if target is None or target.value < 0 else str(int(target.value)),
                ]
            )
        tables = [
            Table(
                "Verdicts",
                [
                    "scanner",
                    "score [95% CI]",
                    "sd over seeds",
                    "threshold",
                    "verdict",
                    "share of seeds flagging",
                    "target",
                ],
                verdicts,
                "Verdict and target are decisions (score above the threshold); where the score's 95% interval "
                "holds the threshold, the verdict says the other side is within the interval. The interval is a "
                "smoothed bootstrap over the classes for MAD anomaly indices, exact for shares of inputs, "
                "Student's t over seeds otherwise (see the check's documentation).",
            )
        ]
        index = _index_rows(by)
        if index:
            tables.append(
                Table(
                    "Neural Cleanse per class",
                    ["class", "anomaly index", "95% CI (class bootstrap)", "mask L1 (mean over seeds)"],
                    [[str(c), fmt_value(r.value), fmt_ci(r), fmt_value(r.params.get("mask_l1"))] for c, r in index],
                )
            )
        hz = [r for r in rows if Hazard.parse(r.hazard).kind == "trojan"]
        measured = [r for r in hz if r.metric != NOT_APPLICABLE]
        if measured:
            body = [[r.hazard, r.metric, fmt_value(r.value), fmt_ci(r), "" if r.n is None else str(r.n)]
                    for r in measured]  # fmt: skip
            columns = ["hazard", "metric", "value", "95% CI", "n"]
            tables.append(Table("Recovered triggers on the test data", columns, body))
        unmeasured = [[r.hazard, str(r.params.get("reason", ""))] for r in hz if r.metric == NOT_APPLICABLE]
        if unmeasured:  # e.g. a trigger whose target class is every test input's: no input to stamp
            tables.append(Table("Recovered triggers not measured", ["hazard", "why"], unmeasured))
        return tables + late


def nc_artifacts(res: ScanResult) -> list[Artifact]:
    """Neural Cleanse's recovered trigger of each class and its anomaly index per class, as pictures."""
    assert res.per_class is not None
    k = len(res.triggers)
    fig = figure(min(1.1 * k, 12), 1.6)
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, (cls, trig) in zip(axes, sorted(res.triggers.items())):
        img = (trig.mask * trig.pattern).detach().cpu().permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        flagged = cls in res.targets
        ax.set_title(f"{cls}: {res.per_class[cls]:.1f}", fontsize=8, color="crimson" if flagged else "black")
    triggers_png = to_png(fig)
    fig = figure(5.0, 2.8)
    ax = fig.add_subplot()
    idx = res.per_class.detach().cpu().numpy()
    ax.bar(range(len(idx)), idx, color=["crimson" if i in res.targets else "steelblue" for i in range(len(idx))])
    ax.axhline(res.threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {res.threshold:g}")
    ax.set_xlabel("class")
    ax.set_ylabel("anomaly index")
    ax.set_xticks(range(len(idx)))
    ax.legend(fontsize=8)
    return [
        Artifact(
            "neural-cleanse-triggers",
            triggers_png,
            caption="Neural Cleanse: the smallest trigger (mask x pattern) found for each class, titled with its "
            "anomaly index (red: flagged).",
        ),
        Artifact(
            "neural-cleanse-anomaly-index",
            to_png(fig),
            caption="Neural Cleanse anomaly index per class (MAD; positive = smaller mask than the median class).",
        ),
    ]
