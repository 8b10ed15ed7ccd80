"""Check ``tta``: test-time adaptation, whether it helps under shift, and the attack it opens.

Test-time adaptation (TTA) re-normalises (and, for TENT and pseudo-labelling, updates) a model on
each test batch it serves. Wu et al. ("Uncovering Adversarial Risks of Test-Time Adaptation",
ICML 2023) showed that this lets an attacker who controls a few inputs of a batch change the
predictions of *other users'* benign inputs in it (the Distribution Invading Attack, DIA). For each
method of the profile (``quick``: TeBN and TENT; full: every registered method, the robust-statistics
defences included) the check stores:

* benign accuracy with and without adaptation on the clean test data and on a few corruptions at
  severity 3 (the shift; inputs from the shared corruption hazard provider), the data streamed in
  batches of ``batch_size`` in the test set's order with the adaptation state carried forward
  (:class:`mlsafety.robustness.tta.Stream`);
* DIA success against the malicious share m of a batch (``shares``), for the ``targeted`` and
  ``indiscriminate`` objectives: ``attack_batches`` batches per share, each of ``batch_size`` inputs
  drawn without replacement from the clean test data (a generator derived from the run seed, the
  method and the share), of which ``max(1, round(m * batch_size))`` are malicious (they start at
  real test inputs; ``eps`` bounds them in L-inf, None: anywhere in [0, 1], the paper's
  unconstrained setting).

Every rate carries an exact (Clopper-Pearson) 95% interval: targeted and indiscriminate success over
attacked batches, benign error over the benign inputs of those batches (different batches may share
inputs; the interval treats them as independent trials).

The indiscriminate attack is also the hazard ``tta-attack/<method>/<share>`` (this module's provider):
its inputs are the benign inputs of the attacked batches with their true labels, and its outputs are
what the *adapted* model gave them with the malicious inputs in the batch (logits and the head's
input), so defence in depth measures how many of the failures the attack caused the monitor lets
through. A model without batch-norm layers gets one ``not_applicable`` row saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import mlsafety.robustness.tta as tta
from mlsafety.audit._check import DECISION, NOT_APPLICABLE, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext, hazard_provider
from mlsafety.audit.checks._common import bind, metric_name, params_of
from mlsafety.audit.views.tta import TTAView, accuracy_metric
from mlsafety.core import ArrayDataset, Classifier, Hazard, InputError, Outputs, UnknownNameError, frozen
from mlsafety.metrics import proportion
from mlsafety.robustness import corruptions as corr

KIND = "tta-attack"
QUICK_METHODS = ["tebn", "tent"]
CORRUPTIONS = ["gaussian-noise", "motion-blur", "fog", "contrast", "jpeg-compression"]
"""The shifts of the full profile (one ImageNet-C corruption of each group, plus JPEG), at ``severity``."""


def attack_hazard(method: str, share: float) -> Hazard:
    """The hazard ``tta-attack/<method>/<share>`` (the method and share travel in its name)."""
    return Hazard(KIND, f"{method}/{float(share):g}")


def attack_setting(hazard: Hazard) -> tuple[str, float]:
    """``(method, share)`` of a ``tta-attack`` hazard; a malformed one is an :class:`UnknownNameError`."""
    method, _, share = (hazard.name or "").rpartition("/")
    try:
        value = float(share)
    except ValueError:
        value = float("nan")
    if hazard.kind != KIND or method not in tta.TTA_METHODS or not 0 < value < 1:
        raise UnknownNameError(
            f"unknown hazard {str(hazard)!r}; use tta-attack/<method>/<share> with a method from "
            f"{', '.join(tta.available())} and a share in (0, 1)"
        )
    return method, value


def _has_batch_norm(model: Classifier) -> str | None:
    """Why TTA cannot run on the model (no batch-norm layers), or None."""
    try:
        tta.norm_layers(model.module)
    except InputError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class _Batches:
    """Attacked batches: benign ``(G * nb, ...)`` and malicious starts ``(G * nm, ...)``, labels, positions."""

    benign: torch.Tensor
    malicious: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    groups: int


def _draw_batches(data: ArrayDataset, groups: int, batch_size: int, nm: int, g: torch.Generator) -> _Batches:
    if batch_size > len(data):
        raise InputError(f"tta batch_size {batch_size} exceeds the {len(data)} test inputs; use a smaller batch_size")
    perms = torch.stack([torch.randperm(len(data), generator=g)[:batch_size] for _ in range(groups)])
    nb = batch_size - nm
    benign_idx, mal_idx = perms[:, :nb].reshape(-1), perms[:, nb:].reshape(-1)
    return _Batches(data.x[benign_idx], data.x[mal_idx], data.y[benign_idx], benign_idx, groups)


class AttackData(ArrayDataset):
    """The hazard ``tta-attack/<method>/<share>``: benign inputs of attacked batches, their true labels,
    and the adapted model's outputs on them with the malicious inputs in the batch (``outputs``)."""

    def __init__(self, batches: _Batches, outputs: Outputs, result: tta.DIAResult, **info: Any) -> None:
        super().__init__(batches.benign, batches.y, name=info["name"], kind="in", description=info["description"])
        self.outputs = outputs
        self.result = result
        self.index = batches.index
        self.info = info


def _adapted_outputs(
    clf: Classifier, method: tta.TTAMethod, benign: torch.Tensor, malicious: torch.Tensor, groups: int
) -> Outputs:
    """Logits and head inputs of the benign inputs, adapted on each batch with its malicious inputs."""
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

    def benign_rows(t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(groups, -1, *t.shape[1:])[:, :nb].reshape(-1, *t.shape[1:])

    features = benign_rows(captured[-1].flatten(1)) if captured else None  # the prediction's pass is the last
    return Outputs(benign_rows(logits), features)


def _attack(ctx: AuditContext, method_name: str, share: float, objective: str) -> tuple[_Batches, tta.DIAResult, int]:
    """DIA with ``objective`` on the check's attacked batches for (method, share) (inputs seeded by both)."""
    p = params_of(ctx, TTA)
    b, groups = int(p["batch_size"]), int(p["attack_batches"])
    nm = tta.malicious_count(share, b)
    batches = _draw_batches(ctx.data.test, groups, b, nm, ctx.generator(KIND, method_name, f"{share:g}", "inputs"))
    attack = tta.DIA(objective=objective, eps=p["eps"], steps=int(p["attack_steps"]))
    g = ctx.generator(KIND, method_name, f"{share:g}", objective)
    result = attack.run(ctx.model, tta.create(method_name), batches.benign, batches.malicious, y=batches.y,
                        groups=groups, generator=g)  # fmt: skip
    return batches, result, nm


@hazard_provider(KIND)
def _tta_attack(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    """``tta-attack/<method>/<share>``: benign inputs under the indiscriminate DIA, with adapted outputs."""
    method_name, share = attack_setting(hazard)
    batches, result, nm = _attack(ctx, method_name, share, "indiscriminate")
    p = params_of(ctx, TTA)
    outputs = _adapted_outputs(ctx.model, tta.create(method_name), batches.benign, result.x_malicious, batches.groups)
    return AttackData(
        batches, outputs, result, name=f"{ctx.data.test.name}-{KIND}-{method_name}-{share:g}",
        description=f"benign inputs of batches with {nm} of {p['batch_size']} inputs from DIA against {method_name}",
        method=method_name, share=share, malicious=nm, batch_size=int(p["batch_size"]),
    )  # fmt: skip


def _names(spec: Any, what: str, available: Sequence[str]) -> list[str]:
    names = list(available) if spec == "all" else [spec] if isinstance(spec, str) else list(spec)
    for n in names:
        if n not in available:
            raise InputError(f"tta {what} {n!r} is unknown; use some of {', '.join(available)} or 'all'")
    return list(dict.fromkeys(names))


def _shares(spec: Any) -> list[float]:
    shares = [spec] if isinstance(spec, (int, float)) else list(spec)
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
        "forward; and the Distribution Invading Attack (Wu et al. 2023): a malicious share m of each batch, optimised "
        "by PGD through the adaptation step, flips one targeted benign input (targeted) or as many benign inputs as "
        "it can (indiscriminate) of other users in the same batch. Exact (Clopper-Pearson) 95% intervals over "
        "attacked batches (success) or benign inputs (error). Needs batch-norm layers; a model without is reported "
        "as not applicable."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "methods": "all",
        "corruptions": CORRUPTIONS,
        "severity": 3,
        "batch_size": 64,
        "shares": [0.01, 0.05, 0.1, 0.2],
        "objectives": ["targeted", "indiscriminate"],
        "attack_batches": 6,
        "attack_steps": 10,
        "eps": None,
    }
    quick: ClassVar[dict[str, Any]] = {
        "methods": QUICK_METHODS,
        "corruptions": ["gaussian-noise", "contrast"],
        "shares": [0.1],
        "attack_batches": 5,
    }
    metrics = (
        "accuracy_no_adaptation", "*_accuracy", "targeted_success_rate", "indiscriminate_success_rate",
        "benign_error_rate", "benign_error_rate_no_attack", NOT_APPLICABLE,
    )  # fmt: skip
    lower_is_better: ClassVar[frozenset[str]] = frozenset(
        {"targeted_success_rate", "indiscriminate_success_rate", "benign_error_rate"}
    )
    view = TTAView

    # -- plan ----------------------------------------------------------------------------------
    def _plan(self) -> tuple[list[str], list[str], list[float], list[str]]:
        p = self.params
        methods = _names(p["methods"], "method", tta.available())
        corruptions = _names(p["corruptions"], "corruption", corr.available())
        objectives = _names(p["objectives"], "objective", [o for o in tta.OBJECTIVES if o != "stealthy"])
        for key, low in (("batch_size", 2), ("attack_batches", 1), ("attack_steps", 0)):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"tta {key} must be an integer >= {low}, got {v!r}")
        if p["severity"] not in corr.SEVERITIES:
            raise InputError(f"tta severity must be an integer from 1 to 5, got {p['severity']!r}")
        eps = p["eps"]
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1):
            raise InputError(f"tta eps must be a radius in (0, 1] pixel units or omitted (unconstrained), got {eps!r}")
        return methods, corruptions, _shares(p["shares"]), objectives

    def _shifts(self, corruptions: Sequence[str]) -> list[Hazard]:
        return [Hazard.clean(), *(Hazard.corruption(n, int(self.params["severity"])) for n in corruptions)]

    def hazards(self, ctx: AuditContext) -> list[Hazard]:
        """``tta-attack/<method>/<share>`` for every method and share (none for a model without batch norm)."""
        methods, _, shares, _ = self._plan()
        if ctx is not None and _has_batch_norm(ctx.model) is not None:
            return []
        return [attack_hazard(m, s) for m in methods for s in shares]

    def tasks(self, ctx: AuditContext) -> list[Task]:
        methods, corruptions, shares, objectives = self._plan()
        reason = _has_batch_norm(ctx.model)
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
        for m in methods:
            acc = tta.adaptation_accuracy(ctx.model, tta.create(m), data.x, data.y, batch_size=b)
            rows.append(Row.of(key, accuracy_metric(m), acc.adapted, method=m, batch_size=b,
                               stream="test order, state carried forward"))  # fmt: skip
        return TaskResult(rows)

    def _attack_task(
        self, ctx: AuditContext, method: str, shares: Sequence[float], objectives: Sequence[str]
    ) -> TaskResult:
        rows = []
        b = int(self.params["batch_size"])
        for share in shares:
            h = attack_hazard(method, share)
            key = str(h)
            nm = tta.malicious_count(share, b)
            info = {"method": method, "share": share, "malicious": nm, "batch_size": b,
                    "eps": self.params["eps"], "steps": int(self.params["attack_steps"])}  # fmt: skip
            for objective in objectives:
                if objective == "indiscriminate":
                    data = ctx.hazard(h)
                    assert isinstance(data, AttackData)
                    res = data.result
                else:
                    _, res, _ = _attack(ctx, method, share, objective)
                per_batch = {**info, "objective": objective, "trials": "attacked batches"}
                rows.append(Row.of(key, metric_name(objective, "success_rate"), proportion(res.success.cpu()),
                                   **per_batch))  # fmt: skip
                if objective == "indiscriminate":
                    per_input = {**info, "objective": objective, "trials": "benign inputs of attacked batches"}
                    rows.append(Row.of(key, "benign_error_rate", proportion(res.benign_error.cpu()), **per_input))
                    rows.append(Row.of(key, "benign_error_rate_no_attack", proportion(res.clean_error.cpu()),
                                       **per_input))  # fmt: skip
        return TaskResult(rows)
