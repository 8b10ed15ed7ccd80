"""Check ``tta``: test-time adaptation, whether it helps under shift, and the attack it opens.

Test-time adaptation (TTA) re-normalises (and, for TENT and pseudo-labelling, updates) a model on
each test batch it serves. Wu et al. ("Uncovering Adversarial Risks of Test-Time Adaptation",
ICML 2023) showed that this lets an attacker who controls a few inputs of a batch change the
predictions of *other users'* benign inputs in it (the Distribution Invading Attack, DIA). For each
method of the profile (``quick``: TeBN and TENT; full: every registered method, the robust-statistics
defences included) the check stores:

* benign accuracy with and without adaptation on the clean test data and on a few corruptions at
  ``severity`` (the shift; inputs from the shared corruption hazard provider, the unadapted pass
  from the audit's shared outputs), the data streamed in batches of ``batch_size`` in the test
  set's order with the adaptation state carried forward (:class:`mlsafety.robustness.tta.Stream`);
* DIA success against the malicious share m of a batch (``shares``), for each of ``objectives``:
  ``attack_batches`` batches per share, drawn by :func:`mlsafety.robustness.tta.draw_batches` from
  the inputs of the hazard ``attack_on`` (the paper attacks under corruption: default one
  corruption at severity 3; ``clean`` attacks the clean test data), with a generator derived from
  the run seed, the method and the share; ``malicious_count(m, batch_size)`` inputs of each batch are
  malicious (they start at real inputs; ``eps`` bounds them in L-inf, None: anywhere in [0, 1], the
  paper's unconstrained setting).

Metrics of the attack (exact Clopper-Pearson 95% intervals):

* ``targeted_success_rate`` / ``stealthy_success_rate``: the targeted benign input predicted as its
  target, over attacked batches; ``stealthy_others_kept_rate``: the other benign inputs whose
  prediction the stealthy attack left unchanged, over those inputs;
* ``indiscriminate_success_rate``: the paper's measure, the benign error rate under the
  indiscriminate attack, over the benign inputs of the attacked batches (different batches may
  share inputs; the interval treats them as independent trials); ``benign_error_rate_no_attack``:
  the same inputs with the method adapting on them alone; ``batches_flipped_rate``: attacked
  batches in which at least one benign input right without the attack became wrong.

The indiscriminate attack is also the hazard ``tta-attack/<method>/<share>``
(:meth:`Hazard.tta_attack`, this module's provider): its inputs are the benign inputs of the
attacked batches with their true labels, and its outputs are what the *adapted* model gave them
with the malicious inputs in the batch (logits and the head's input), so defence in depth measures
how many of the failures the attack caused the monitor lets through. A model without batch-norm
layers gets one ``not_applicable`` row saying so.

``attack_batch_sizes`` (default: ``batch_size`` only) adds the paper's batch-size sweep: each extra
size attacks its own batches, its rows suffixed ``_batch_<b>`` (``indiscriminate_success_rate_batch_32``)
and carrying ``measure`` and ``batch_size``; the hazard is always the attack at ``batch_size``.
Departs from the paper in the attack's PGD steps (see :class:`~mlsafety.robustness.tta.DIA`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

import mlsafety.robustness.tta as tta
from mlsafety.audit._budget import BUDGET_NOT_MEASURED, not_measured_row, stopped_note, until_deadline
from mlsafety.audit._check import DECISION, NOT_APPLICABLE, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext, hazard_provider
from mlsafety.audit.checks._common import bind, metric_name, params_of
from mlsafety.audit.views.tta import TTAView
from mlsafety.core import ArrayDataset, Classifier, Hazard, InputError, Outputs, UnknownNameError, frozen, pool_features
from mlsafety.metrics import proportion
from mlsafety.robustness import corruptions as corr

KIND = "tta-attack"
QUICK_METHODS = ["tebn", "tent"]
CORRUPTIONS = ["gaussian-noise", "motion-blur", "fog", "contrast", "jpeg-compression"]
"""The shifts of the full profile (one ImageNet-C corruption of each group, plus JPEG), at ``severity``."""


def attack_setting(hazard: Hazard) -> tuple[str, float]:
    """``(method, share)`` of a ``tta-attack`` hazard; another is an :class:`UnknownNameError`."""
    method, share = hazard.name, hazard.share
    if hazard.kind != KIND or method is None or method not in tta.TTA_METHODS or share is None:
        raise UnknownNameError(
            f"unknown hazard {str(hazard)!r}; use tta-attack/<method>/<share> with a method from "
            f"{', '.join(tta.available())} and a share in (0, 1)"
        )
    return method, share


def _has_batch_norm(model: Classifier) -> str | None:
    """Why TTA cannot run on the model (no batch-norm layers), or None."""
    try:
        tta.norm_layers(model.module)
    except InputError as exc:
        return str(exc)
    return None


def _attack_on(spec: Any) -> Hazard:
    """The hazard the attacked batches come from: ``clean`` or ``corruption/<name>/<severity>``."""
    h = Hazard.parse(spec) if isinstance(spec, (str, Hazard)) else None
    if h is None or not (
        h.kind == "clean" or (h.kind == "corruption" and h.name in corr.available() and h.severity in corr.SEVERITIES)
    ):
        raise InputError(
            f"tta attack_on must be 'clean' or corruption/<name>/<severity 1-5>, e.g. corruption/fog/3; got {spec!r}"
        )
    return h


_BATCH_MEASURES = (
    "targeted_success_rate", "stealthy_success_rate", "stealthy_others_kept_rate", "indiscriminate_success_rate",
    "batches_flipped_rate", "benign_error_rate_no_attack",
)  # fmt: skip
"""The measures stored again per extra attack batch size, suffixed ``_batch_<b>``."""


class AttackData(ArrayDataset):
    """The hazard ``tta-attack/<method>/<share>``: benign inputs of attacked batches, their true labels,
    and the adapted model's outputs on them with the malicious inputs in the batch (``outputs``)."""

    def __init__(self, batches: tta.AttackBatches, outputs: Outputs, result: tta.DIAResult, **info: Any) -> None:
        super().__init__(batches.benign, batches.y, name=info["name"], kind="in", description=info["description"])
        self.outputs = outputs
        self.result = result
        self.index = batches.benign_index
        self.info = info


def _adapted_outputs(
    clf: Classifier, method: tta.TTAMethod, benign: torch.Tensor, malicious: torch.Tensor, groups: int
) -> Outputs:
    """Logits and head inputs of the benign inputs, adapted on each batch with its malicious inputs.

    The adaptation step runs the model itself (batch statistics swapped in, updated affine
    parameters for TENT), so the head's input is read by a hook on that pass; non-finite logits are
    refused as :func:`mlsafety.core.forward` refuses them.
    """
    shape = benign.shape[1:]
    view = (groups, -1, *shape)
    batch = torch.cat([benign.reshape(view), malicious.reshape(view)], dim=1).reshape(-1, *shape).to(clf.device)
    nb = benign.shape[0] // groups
    captured: list[torch.Tensor] = []
    handle = None
    if clf.head is not None:
        handle = clf.head.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0].detach()))
    try:
        with frozen(clf.module), torch.enable_grad():
            logits, _ = method.step(clf, batch, method.init_state(clf, groups), groups)
    finally:
        if handle is not None:
            handle.remove()
    bad = ~torch.isfinite(logits.detach()).all(dim=1)
    if bad.any():
        raise InputError(
            f"the adapted model returned NaN or infinite logits for {int(bad.sum())} of {logits.shape[0]} inputs "
            f"under {method.name}; fix the model before measuring it"
        )

    def benign_rows(t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(groups, -1, *t.shape[1:])[:, :nb].reshape(-1, *t.shape[1:])

    # the prediction's pass is the last; a conv head's input map is mean-pooled as in the shared pass
    features = benign_rows(pool_features(captured[-1], clf.head)) if captured else None
    return Outputs(benign_rows(logits), features)


def _attack(
    ctx: AuditContext, method_name: str, share: float, objective: str, batch_size: int | None = None
) -> tuple[tta.AttackBatches, tta.DIAResult]:
    """DIA with ``objective`` on the check's attacked batches for (method, share) (inputs seeded by both,
    and by ``batch_size`` when it is not the check's ``batch_size``)."""
    p = params_of(ctx, TTA)
    b, groups = int(p["batch_size"]), int(p["attack_batches"])
    other = () if batch_size is None or batch_size == b else (f"batch-{batch_size}",)
    b = b if batch_size is None else batch_size
    source = _attack_on(p["attack_on"])
    data = ctx.hazard(source)
    g = ctx.generator(KIND, method_name, f"{share:g}", "inputs", *other)
    batches = tta.draw_batches(data.x, data.y, b, tta.malicious_count(share, b), groups, g)
    attack = tta.DIA(objective=objective, eps=p["eps"], steps=int(p["attack_steps"]))
    g = ctx.generator(KIND, method_name, f"{share:g}", objective, *other)
    result = attack.run(ctx.model, tta.create(method_name), batches.benign, batches.malicious, y=batches.y,
                        groups=groups, generator=g)  # fmt: skip
    return batches, result


@hazard_provider(KIND)
def _tta_attack(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    """``tta-attack/<method>/<share>``: benign inputs under the indiscriminate DIA, with adapted outputs."""
    method_name, share = attack_setting(hazard)
    batches, result = _attack(ctx, method_name, share, "indiscriminate")
    p = params_of(ctx, TTA)
    outputs = _adapted_outputs(ctx.model, tta.create(method_name), batches.benign, result.x_malicious, batches.groups)
    nm, b = batches.n_malicious, int(p["batch_size"])
    return AttackData(
        batches, outputs, result, name=f"{ctx.data.test.name}-{KIND}-{method_name}-{share:g}",
        description=f"benign inputs of {p['attack_on']} batches with {nm} of {b} inputs from DIA on {method_name}",
        method=method_name, share=share, malicious=nm, batch_size=b, attack_on=str(p["attack_on"]),
    )  # fmt: skip


def _names(spec: Any, what: str, available: Sequence[str], empty: bool = False) -> list[str]:
    """The names ``spec`` selects (``'all'``, one name or a list; an empty list only where ``empty``)."""
    names = list(available) if spec == "all" else [spec] if isinstance(spec, str) else spec
    if not isinstance(names, (list, tuple)) or not (names or empty) or not all(isinstance(n, str) for n in names):
        kind = "a list" if empty else "a non-empty list"
        raise InputError(f"tta {what}s must be 'all' or {kind} of names from {', '.join(available)}, got {spec!r}")
    for n in names:
        if n not in available:
            raise InputError(f"tta {what} {n!r} is unknown; use some of {', '.join(available)} or 'all'")
    return list(dict.fromkeys(names))


def attack_metric(measure: str, batch_size: int, default_batch_size: int) -> str:
    """The metric of ``measure`` at ``batch_size``: the plain name at the check's ``batch_size``, else
    suffixed ``_batch_<b>`` (``indiscriminate_success_rate_batch_32``); rows carry ``measure`` too."""
    return measure if batch_size == default_batch_size else metric_name(measure, "batch", batch_size)


def _attack_rows(key: str, res: tta.DIAResult, objective: str, info: dict[str, Any], default_b: int) -> list[Row]:
    """The rows of one objective's attack (see the module docstring for the measures)."""
    b = int(info["batch_size"])
    per_batch = {**info, "objective": objective, "trials": "attacked batches"}
    per_input = {**info, "objective": objective, "trials": "benign inputs of attacked batches"}
    found: list[tuple[str, Any, dict[str, Any]]] = []
    if objective == "indiscriminate":
        found += [
            ("indiscriminate_success_rate", proportion(res.benign_error.cpu()), per_input),
            ("benign_error_rate_no_attack", proportion(res.clean_error.cpu()), per_input),
            ("batches_flipped_rate", proportion(res.success.cpu()), per_batch),
        ]
    else:
        found.append((metric_name(objective, "success_rate"), proportion(res.success.cpu()), per_batch))
        if objective == "stealthy" and res.logits.shape[1] > 1:
            others = res.logits.shape[0] * (res.logits.shape[1] - 1)  # the target is not one of the others
            kept = proportion(int(res.others_kept.sum()), others)
            found.append(("stealthy_others_kept_rate", kept, {**per_input, "trials": "other benign inputs"}))
    return [Row.of(key, attack_metric(m, b, default_b), e, measure=m, **params) for m, e, params in found]


def _batch_sizes(spec: Any, default: int) -> list[int]:
    sizes = [default] if spec is None else [spec] if isinstance(spec, int) else list(spec)
    if not sizes:  # an empty list ran no attack at all
        raise InputError("tta attack_batch_sizes must list integers >= 3 (or be omitted: batch_size), got []")
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 3:
            raise InputError(f"tta attack_batch_sizes must be integers >= 3 (or omitted: batch_size), got {b!r}")
    return list(dict.fromkeys(sizes))


def _shares(spec: Any) -> list[float]:
    shares = [spec] if isinstance(spec, (int, float)) else list(spec)
    if not shares:  # an empty list failed once the attack tasks ran
        raise InputError("tta shares must list malicious shares of a batch in (0, 1), e.g. [0.1], got []")
    for s in shares:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1:
            raise InputError(f"tta shares must be malicious shares of a batch in (0, 1), got {s!r}")
    return [float(s) for s in dict.fromkeys(shares)]


@register_check("tta")
class TTA(Check):
    pillar = "robustness"
    title = "Test-time adaptation"
    description = (
        "Benign accuracy with and without test-time adaptation (TTA) on the clean test data and under corruptions "
        "(does TTA help under this shift?), the test data streamed in batches with the adaptation state carried "
        "forward; and the Distribution Invading Attack (Wu et al. 2023) on batches of (by default corrupted) test "
        "data: a malicious share m of each batch, optimised by PGD through the adaptation step, flips one targeted "
        "benign input of another user (targeted; stealthy keeps the others) or raises the benign error rate "
        "(indiscriminate, the paper's measure). Exact (Clopper-Pearson) 95% intervals over attacked batches "
        "(targeted) or benign inputs (error). Needs batch-norm layers; a model without is reported as not applicable."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "methods": "all",
        "corruptions": CORRUPTIONS,
        "severity": 3,
        "batch_size": 64,
        "shares": list(tta.SHARES),
        "objectives": ["targeted", "indiscriminate"],
        "attack_on": "corruption/fog/3",
        "attack_batch_sizes": None,
        "attack_batches": 6,
        "attack_steps": 10,
        "eps": None,
    }
    quick: ClassVar[dict[str, Any]] = {
        "methods": QUICK_METHODS,
        "corruptions": ["gaussian-noise", "contrast"],
        "shares": [0.1],
        "attack_on": "corruption/contrast/3",
        "attack_batches": 5,
    }
    metrics = (
        "accuracy_no_adaptation", "*_accuracy", "targeted_success_rate", "stealthy_success_rate",
        "stealthy_others_kept_rate", "indiscriminate_success_rate", "batches_flipped_rate",
        "benign_error_rate_no_attack", *(f"{m}_batch_*" for m in _BATCH_MEASURES), NOT_APPLICABLE,
        BUDGET_NOT_MEASURED,
    )  # fmt: skip
    lower_is_better: ClassVar[frozenset[str]] = frozenset(
        {"targeted_success_rate", "stealthy_success_rate", "indiscriminate_success_rate", "batches_flipped_rate"}
    )
    view = TTAView

    # -- plan ----------------------------------------------------------------------------------
    def _plan(self) -> tuple[list[str], list[str], list[float], list[str]]:
        p = self.params
        methods = _names(p["methods"], "method", tta.available())
        corruptions = _names(p["corruptions"], "corruption", corr.available(), empty=True)  # []: clean data only
        objectives = _names(p["objectives"], "objective", tta.OBJECTIVES)
        for key, low in (("batch_size", 2), ("attack_batches", 1), ("attack_steps", 0)):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"tta {key} must be an integer >= {low}, got {v!r}")
        sev = p["severity"]
        if isinstance(sev, bool) or not isinstance(sev, int) or sev not in corr.SEVERITIES:
            raise InputError(f"tta severity must be an integer from 1 to 5, got {sev!r}")
        eps = p["eps"]
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1):
            raise InputError(f"tta eps must be a radius in (0, 1] pixel units or omitted (unconstrained), got {eps!r}")
        _attack_on(p["attack_on"])
        shares = _shares(p["shares"])
        for b in {int(p["batch_size"]), *_batch_sizes(p["attack_batch_sizes"], int(p["batch_size"]))}:
            for share in shares:
                tta.malicious_count(share, b)  # at least 2 benign inputs must remain
        return methods, corruptions, shares, objectives

    def _shifts(self, corruptions: Sequence[str]) -> list[Hazard]:
        return [Hazard.clean(), *(Hazard.corruption(n, int(self.params["severity"])) for n in corruptions)]

    def _fit_batches(self, ctx: AuditContext, shares: Sequence[float]) -> str | None:
        """Clamp ``batch_size`` (and ``attack_batch_sizes``) to the test inputs there are, when fewer than a
        batch (a small test set, or a budget's cut): the clamped size is what the run records and its rows
        carry. Returns why the check cannot run (no batch leaves 2 benign inputs next to the malicious
        ones), or None."""
        p = self.params
        n = len(ctx.data.test)
        if n >= int(p["batch_size"]):
            return None
        try:
            for share in shares:
                tta.malicious_count(share, n)
        except InputError:
            return (
                f"the test set has {n} inputs, too few for one attacked batch with at least 2 benign inputs at "
                f"shares {', '.join(f'{s:g}' for s in shares)}; give more test data"
            )
        p["batch_size"] = n
        if p["attack_batch_sizes"] is not None:
            p["attack_batch_sizes"] = [b for b in _batch_sizes(p["attack_batch_sizes"], n) if b <= n] or None
        return None

    def hazards(self, ctx: AuditContext) -> list[Hazard]:
        """``tta-attack/<method>/<share>`` for every method and share (none for a model without batch norm,
        or a test set too small for one attacked batch)."""
        methods, _, shares, _ = self._plan()
        if ctx is not None and (_has_batch_norm(ctx.model) is not None or self._fit_batches(ctx, shares)):
            return []
        return [Hazard.tta_attack(m, s) for m in methods for s in shares]

    def tasks(self, ctx: AuditContext) -> list[Task]:
        methods, corruptions, shares, objectives = self._plan()
        reason = _has_batch_norm(ctx.model) or self._fit_batches(ctx, shares)
        if reason is not None:
            row = Row.exact("clean", NOT_APPLICABLE, 1.0, DECISION, modality=ctx.modality, reason=reason)
            return [Task("not-applicable", lambda: TaskResult([row]))]
        tasks = [Task(f"accuracy/{h}", bind(self._accuracy_task, ctx, h, methods)) for h in self._shifts(corruptions)]
        tasks += [Task(f"attack/{m}", bind(self._attack_task, ctx, m, shares, objectives)) for m in methods]
        return tasks

    # -- work ----------------------------------------------------------------------------------
    def _accuracy_task(self, ctx: AuditContext, hazard: Hazard, methods: Sequence[str]) -> TaskResult:
        data = ctx.hazard(hazard)
        y = ctx.labels(hazard)
        b = int(self.params["batch_size"])
        key = str(hazard)
        rows = [Row.of(key, "accuracy_no_adaptation", proportion(ctx.outputs(hazard).pred == y), batch_size=b)]
        found = []
        # under --budget: the methods before the deadline; not a headline, so under a shift only while they fit
        for m in until_deadline(ctx, methods, "tta-accuracy", first=int(hazard.kind == "clean")):
            acc = tta.adaptation_accuracy(ctx.model, tta.create(m), data.x, data.y, batch_size=b, source=False)
            found.append((m, acc.adapted))
        note = stopped_note(len(found), len(methods), "methods")
        for m, est in found:
            rows.append(Row.of(key, metric_name(m, "accuracy"), est, method=m, batch_size=b,
                               stream="test order, state carried forward", **note))  # fmt: skip
        return TaskResult(rows)

    def _attack_task(
        self, ctx: AuditContext, method: str, shares: Sequence[float], objectives: Sequence[str]
    ) -> TaskResult:
        """Rows per share, batch size (``attack_batch_sizes``) and objective; the indiscriminate attack
        at ``batch_size`` is the hazard's (computed once, shared with defence in depth)."""
        rows = []
        p = self.params
        default_b = int(p["batch_size"])
        settings = [(share, b, objective) for share in shares
                    for b in _batch_sizes(p["attack_batch_sizes"], default_b) for objective in objectives]  # fmt: skip
        if ctx.deadline is not None:  # under --budget: the headline attack (the hazard's) first, then the others
            settings.sort(key=lambda s: (s[1] != default_b or s[2] != "indiscriminate", shares.index(s[0])))
        # under --budget the first method's headline attack always runs; every other attack while it fits
        first = 1 if method == self._plan()[0][0] else 0
        found = []
        for share, b, objective in until_deadline(ctx, settings, f"tta-attack/{method}", first):
            key = str(Hazard.tta_attack(method, share))
            if objective == "indiscriminate" and b == default_b:
                data = ctx.hazard(key)
                assert isinstance(data, AttackData)
                found.append((share, b, objective, data.result))
            else:
                found.append((share, b, objective, _attack(ctx, method, share, objective, b)[1]))
        note = stopped_note(len(found), len(settings), "attack settings (share, batch size, objective)")
        for share, b, objective, res in found:
            key = str(Hazard.tta_attack(method, share))
            info = {"method": method, "share": share, "malicious": tta.malicious_count(share, b), "batch_size": b,
                    "eps": p["eps"], "steps": int(p["attack_steps"]), "attack_on": str(p["attack_on"]),
                    **note}  # fmt: skip
            rows += _attack_rows(key, res, objective, info, default_b)
        if not found:
            rows.append(not_measured_row(str(Hazard.tta_attack(method, shares[0])), "this method's attacks"))
        return TaskResult(rows)
