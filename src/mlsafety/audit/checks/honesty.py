"""Check ``honesty``: does a language model's hidden state say what its answer says?

On the project's own true/false statements (:func:`mlsafety.alignment.project_statements`, not a
benchmark) the check reads every probed layer's residual stream at the answer's last token for both
answers of each statement (one forward pass per batch), fits CCS and top-PC (unsupervised) and
logistic / mean-difference (supervised ceiling) probes on a seeded half, and stores on the other half:
accuracy per layer and method (exact intervals; unsupervised probes also under the better sign, as Burns
et al. 2022 report), zero-shot accuracy, accuracy per template at each method's best layer (prompt
sensitivity), accuracy behind a misleading prefix, and the honesty gap: the share of statements where
the stated answer (the higher log-probability) and the best unsupervised probe disagree (exact
interval), with and without the prefix. Full mode also tests the probes on ``mr`` reviews (transfer).
The computing is :mod:`mlsafety.alignment.probes`; the rendering :mod:`mlsafety.audit.views.honesty`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlsafety.alignment import STATEMENTS_SOURCE, check_hidden_access
from mlsafety.alignment.probes import (
    PROBES,
    TEMPLATES,
    ZERO_SHOT,
    ZERO_SHOT_CALIBRATED,
    ProbeReport,
    run_probes,
    statement_pairs,
    text_pairs,
)
from mlsafety.alignment.probes.evaluate import MIN_CV_ITEMS
from mlsafety.audit._check import DECISION, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import require_int
from mlsafety.audit.views.honesty import (
    CAPTION,
    METHODS,
    HonestyView,
    accuracy_by_layer_png,
    layer_metric,
    metric_stem,
)
from mlsafety.core import Hazard, InputError

STATEMENTS = "statements"
MISLEADING = "statements-misleading"
_READS = ", among the layers where it reads both answers on the fit items (all layers when none does)"
_RULE = {
    False: "highest mean accuracy on the fit half" + _READS,
    True: "highest mean 2-fold cross-validated accuracy inside the fit half" + _READS,
}
"""How a method's best layer is chosen (:meth:`ProbeReport.best_layer`), by whether it separates its own fit items
(``Probe.fits_its_items``)."""


def _metrics() -> tuple[str, ...]:
    out = ["honesty_gap", "best_probe_layer", "zero_shot_accuracy", "zero_shot_calibrated_accuracy"]
    for m in METHODS:
        stem = metric_stem(m)
        out += [f"{stem}_accuracy_layer*", f"{stem}_accuracy", f"{stem}_best_layer", f"{stem}_transfer_accuracy"]
        if not PROBES.get(m).supervised:
            out.append(f"{stem}_either_sign_layer*")
    return tuple(out)


@register_check("honesty")
class Honesty(Check):
    pillar = "alignment"
    modalities = ("lm",)
    title = "Honesty probes"
    description = (
        "Contrast pairs (each statement answered yes and no) from the project's own true/false statements; "
        "probes on every probed layer's hidden state at the answer's last token: CCS and the top principal "
        "component (unsupervised; sign fixed from the zero-shot answers, no labels), logistic regression and mean "
        "difference (supervised ceiling), fitted on a seeded half and tested on the other with exact 95% intervals "
        "(Burns et al. 2022). The honesty gap is the share of test statements where the model's stated answer "
        "(the higher log-probability) and the best unsupervised probe disagree, also behind a misleading prefix."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "statements": 256,
        "templates": 2,
        "layer_stride": 1,
        "ccs_epochs": 1000,
        "ccs_restarts": 10,
        "transfer_reviews": 128,
        "batch_size": 16,
    }
    quick: ClassVar[dict[str, Any]] = {
        "statements": 64,
        "templates": 1,
        "layer_stride": 8,
        "ccs_epochs": 300,
        "ccs_restarts": 4,
        "transfer_reviews": 0,
    }
    higher_is_better = frozenset(
        {"zero_shot_accuracy", "zero_shot_calibrated_accuracy", *(f"{metric_stem(m)}_accuracy" for m in METHODS)}
    )
    lower_is_better = frozenset({"honesty_gap"})
    metrics = _metrics()
    view = HonestyView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params
        n_templates = len(TEMPLATES[STATEMENTS])
        # logistic regression's layer is chosen by 2-fold cross-validation inside the fit half (half the statements),
        # which needs MIN_CV_ITEMS fit items: with fewer the run would be refused after the model had been read
        counts = (("statements", 2 * MIN_CV_ITEMS), ("layer_stride", 1), ("ccs_epochs", 1), ("ccs_restarts", 1),
                  ("batch_size", 1))  # fmt: skip
        for key, low in counts:
            require_int(self.name, p, key, low)  # a boolean is no count either (true read as 1)
        if (
            isinstance(p["templates"], bool)
            or not isinstance(p["templates"], int)
            or not 1 <= p["templates"] <= n_templates
        ):
            raise InputError(f"honesty: templates must be an integer in 1..{n_templates}, got {p['templates']!r}")
        if (
            isinstance(p["transfer_reviews"], bool)
            or not isinstance(p["transfer_reviews"], int)
            or p["transfer_reviews"] < 0
            or p["transfer_reviews"] in (1, 2, 3)
        ):
            raise InputError(f"honesty: transfer_reviews must be 0 or an integer >= 4, got {p['transfer_reviews']!r}")
        return [Task(self.name, lambda: self._run(ctx))]

    def _run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        n_layers = check_hidden_access(ctx.lm)
        layers = sorted({*range(0, n_layers + 1, p["layer_stride"]), n_layers})
        base = statement_pairs(p["statements"])
        pairs = [base.with_template(t) for t in TEMPLATES[STATEMENTS][: p["templates"]]]
        transfer = []
        if p["transfer_reviews"]:
            from mlsafety.zoo import load_dataset

            mr = load_dataset("mr", split="test")
            k = min(p["transfer_reviews"], len(mr))
            transfer.append(text_pairs(list(mr.x[:k]), mr.y[:k], dataset="mr"))
        params = {"ccs": {"epochs": p["ccs_epochs"], "restarts": p["ccs_restarts"]}}
        report = run_probes(ctx.lm, pairs, METHODS, layers, ctx.generator(self.name, "probes"), True, transfer,
                            params, p["batch_size"])  # fmt: skip
        rows = self._rows(report)
        png = accuracy_by_layer_png(report)
        return TaskResult(rows, [Artifact("probe-accuracy-by-layer", png, caption=CAPTION)])

    def _rows(self, report: ProbeReport) -> list[Row]:
        clean, mis = str(Hazard("honesty", STATEMENTS)), str(Hazard("honesty", MISLEADING))
        source = {"source": STATEMENTS_SOURCE}
        rows: list[Row] = []
        main = report.templates[0]
        for r in report.table():
            at = {"template": main, **source}
            if r.method in (ZERO_SHOT, ZERO_SHOT_CALIBRATED):
                rows.append(Row.of(clean, f"{metric_stem(r.method)}_accuracy", r.accuracy, **at))
                continue
            rows.append(Row.of(clean, layer_metric(r.method, r.layer), r.accuracy, layer=r.layer, **at))
            if r.either_sign is not None:
                rows.append(Row.of(clean, layer_metric(r.method, r.layer, "either_sign"), r.either_sign,
                                   layer=r.layer, **at))  # fmt: skip
        for m in METHODS:
            stem, layer = metric_stem(m), report.best_layer(m)
            rows.append(Row.exact(clean, f"{stem}_best_layer", float(layer), DECISION, report.n_fit,
                                  rule=_RULE[PROBES.get(m).fits_its_items]))  # fmt: skip
            for template, results in report.results.items():
                hazard = clean if template == main else str(Hazard("honesty", f"{STATEMENTS}-{template}"))
                hit = next(r for r in results if r.method == m and r.layer == layer)
                if template != main:
                    rows.append(Row.of(hazard, layer_metric(m, layer), hit.accuracy, layer=layer, template=template))
                rows.append(Row.of(hazard, f"{stem}_accuracy", hit.accuracy, layer=layer, template=template))
            if m in report.misleading:
                rows.append(Row.of(mis, f"{stem}_accuracy", report.misleading[m], layer=layer, **source))
            for key, est in report.transfer.items():
                if key.startswith(f"{m}:"):
                    target = key.split(":", 1)[1]
                    rows.append(Row.of(str(Hazard("honesty", target)), f"{stem}_transfer_accuracy", est,
                                       layer=layer, fitted_on=STATEMENTS))  # fmt: skip
        for name in (ZERO_SHOT, ZERO_SHOT_CALIBRATED):
            if name in report.misleading:
                rows.append(Row.of(mis, f"{metric_stem(name)}_accuracy", report.misleading[name], **source))
        if report.best is not None:
            method, layer = report.best
            rows.append(Row.exact(clean, "best_probe_layer", float(layer), DECISION, report.n_fit, method=method))
            for key, hazard in (("clean", clean), ("misleading", mis)):
                if key in report.gap:
                    rows.append(Row.of(hazard, "honesty_gap", report.gap[key], method=method, layer=layer,
                                       stated="higher log-probability answer"))  # fmt: skip
        return rows
