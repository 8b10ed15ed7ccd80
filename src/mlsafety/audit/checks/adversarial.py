"""Check ``adversarial``: robust accuracy against eps for each configured attack, with plots.

Hazards ``adversarial/<attack>/<eps>`` are a fixed subset of the test data (``n`` inputs drawn with
the run seed, kept in test order) attacked with the registry attack ``<attack>`` at radius ``<eps>``
in the check's norm. Only correctly classified inputs are attacked (clean errors stay as they
are, as in AutoAttack); the attack's generator is ``ctx.generator("adversarial", attack, eps)`` (the
attack is created without a ``seed``: one source of randomness, never two), so any check can ask
for any hazard in any order and gets the same inputs. The hazard's dataset also carries the clean
source of every input (``x_clean``, ``index`` into the test set) and the attack's sanity flags.

Profiles (defaults stated once, in ``Adversarial.defaults`` / ``Adversarial.quick``):

* full: ``autoattack-fast`` (APGD-CE + APGD-T with 3 targets, 25 iterations each; an upper bound
  on what the standard AutoAttack reports) on ``n`` test inputs over six radii scaled to the data
  (:func:`default_eps`) and the field's standard radii for the input's resolution (:func:`standard_eps`);
* quick: the same attack with 10 iterations on fewer inputs and three radii (the same rule on a
  coarser grid; the standard radii alone where there are three): :func:`eps_grid`.

For a robustness claim, set ``attacks: [autoattack]`` (the standard ensemble) in the config file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mlsafety.audit._budget import BUDGET_NOT_MEASURED, not_measured_row, until_deadline
from mlsafety.audit._check import COUNT, DECISION, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext, hazard_provider
from mlsafety.audit.checks import _adversarial_text as text_adv
from mlsafety.audit.checks._common import bind, metric_name, params_of, require_int, require_names
from mlsafety.audit.views.adversarial import AdversarialView, Curve, curve_png, pairs_png
from mlsafety.core import ArrayDataset, Hazard, InputError, UnknownNameError
from mlsafety.metrics import proportion
from mlsafety.robustness import AttackSummary, evaluate_outputs, sanity_flags
from mlsafety.robustness import attacks as atk

KIND = "adversarial"
EPS_FRACTIONS = (0.05, 0.2, 0.3, 0.4, 0.5, 0.8)
"""Default radii as fractions of the data's pixel standard deviation (L-inf), see :func:`default_eps`."""
QUICK_FRACTIONS = (0.1, 0.3, 0.8)
_NICE = (1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)


def _nice(v: float) -> float:
    """``v`` rounded (in log scale) to 1, 1.5, 2, 3, 5 or 7.5 times a power of ten."""
    if not math.isfinite(v) or v <= 0:
        return 0.0
    p = math.floor(math.log10(v))
    m = v / 10**p
    best = min(_NICE, key=lambda c: abs(math.log(m / c)))
    return float(f"{best * 10**p:.3g}")


def default_eps(x: torch.Tensor, norm: str, fractions: Sequence[float] = EPS_FRACTIONS) -> list[float]:
    """Radii scaled to the data: fractions of the pixel standard deviation (times ``sqrt(d) / 3`` for L2).

    For the digits data (standard deviation about 0.38) the L-inf grid is 0.02, 0.075, 0.1, 0.15,
    0.2, 0.3: it ends where the embedded model's robust accuracy has reached zero. For CIFAR-like
    data (about 0.25) it runs from 0.015 to 0.2 and brackets the customary 8/255.
    """
    sigma = float(x.float().std()) if x.numel() > 1 else math.nan
    if not math.isfinite(sigma):  # no test inputs (e.g. an empty subset): the spread is undefined
        raise InputError(
            f"the adversarial eps grid is scaled by the test images' pixel spread, which is {sigma:g} on "
            f"{x.shape[0]} inputs; give test inputs, or set [params.adversarial] eps = [...]"
        )
    scale = sigma if norm == "linf" else sigma * math.sqrt(x[0].numel()) / 3
    eps = sorted({_nice(f * scale) for f in fractions})
    return [e for e in eps if e > 0 and (norm != "linf" or e <= 1)]


STANDARD_EPS: dict[str, dict[str, tuple[float, ...]]] = {
    "mnist": {"linf": (0.1, 0.2, 0.3)},
    "cifar": {"linf": (8 / 255,), "l2": (0.5,)},
    "imagenet": {"linf": (4 / 255,)},
}
"""The radii papers report by resolution (pixel units): L-inf 0.1 / 0.2 / 0.3 for 28 px grey digits
(MNIST family: 0.3 in Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018, with 0.1 and 0.2 common alongside); L-inf 8/255 and L2 0.5 for 32 px colour (CIFAR-10 in
RobustBench, Croce et al., NeurIPS 2021 Datasets and Benchmarks); L-inf 4/255 for 224 px colour
(ImageNet in RobustBench). Which row applies is :func:`resolution_family`."""


def resolution_family(shape: Sequence[int]) -> str | None:
    """The row of :data:`STANDARD_EPS` for inputs of ``shape`` (C, H, W), or None below 16 px (the 8x8
    digits: no standard exists, their grid stays scaled to the data).

    Grey inputs up to 48 px are the MNIST family (28 px); others up to 96 px take the CIFAR radii (32 px;
    64 px sets such as Tiny-ImageNet are usually attacked at 8/255 too); larger ones the ImageNet radii.
    """
    c, h, w = (int(v) for v in shape[-3:])
    side = min(h, w)
    if side < 16:
        return None
    if c == 1 and side <= 48:
        return "mnist"
    return "cifar" if side <= 96 else "imagenet"


def standard_eps(shape: Sequence[int], norm: str) -> tuple[float, ...]:
    """The standard radii of :data:`STANDARD_EPS` for inputs of ``shape`` in ``norm`` (may be none),
    kept to the 6 significant digits a hazard keeps (``8/255`` is ``0.0313725``)."""
    family = resolution_family(shape)
    values = STANDARD_EPS.get(family, {}).get(norm, ()) if family is not None else ()
    return tuple(float(f"{v:g}") for v in values)


def eps_grid(x: torch.Tensor, norm: str, quick: bool = False) -> list[float]:
    """The default radii for data ``x`` (N, C, H, W): the data-scaled grid (:func:`default_eps`, quick or
    full) with the standard radii of its resolution (:func:`standard_eps`) in it, each taking the place
    of the grid's nearest radius (in log scale), so the grid keeps its length and cost. Quick, with three
    or more standard radii: those alone (0.1 / 0.2 / 0.3 for 28 px grey). The 8x8 digits, with none,
    keep the data-scaled grids unchanged.
    """
    grid = default_eps(x, norm, QUICK_FRACTIONS if quick else EPS_FRACTIONS)
    std = standard_eps(x.shape[1:], norm)
    if quick and len(std) >= 3:
        return sorted(std)
    out = list(grid)
    free = [i for i, v in enumerate(out) if v not in std]
    for value in std:
        if value in out:
            continue
        if not free:
            out.append(value)
            continue
        nearest = min(free, key=lambda i: abs(math.log(out[i] / value)))
        out[nearest] = value
        free.remove(nearest)
    return sorted(set(out))


def typical_eps(x: torch.Tensor) -> float:
    """One L-inf radius typical of data ``x`` (N, C, H, W), for checks that attack at a single radius
    (transparency's adversarial examples): the smallest standard radius of its resolution
    (:func:`standard_eps`: 0.1 for 28 px grey, 8/255 for 32 px colour, 4/255 for 224 px), else
    :data:`TYPICAL_FRACTION` of the pixel standard deviation, rounded as the grid is (0.1 for the digits).
    """
    std = standard_eps(x.shape[1:], "linf")
    return min(std) if std else default_eps(x, "linf", (TYPICAL_FRACTION,))[0]


TYPICAL_FRACTION = 0.3
"""The fraction of the pixel standard deviation :func:`typical_eps` takes where no standard radius exists."""


def _subset(ctx: AuditContext, n: int) -> torch.Tensor:
    total = len(ctx.data.test)
    if n <= 0 or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=ctx.generator(KIND, "subset"))[:n].sort().values


def _attack_params(p: dict[str, Any], name: str) -> dict[str, Any]:
    """The configured hyper-parameters of attack ``name``; a ``seed`` among them is refused (the
    attack's randomness is the hazard's generator: one source, never two)."""
    params = dict(dict(p["attack_params"]).get(name, {}))
    if "seed" in params:
        raise InputError(
            f"adversarial attack_params for {name!r} set 'seed'; remove it: the attack's random draws come "
            "from the run seed (--seed) and the hazard"
        )
    return params


class AdversarialSet(ArrayDataset):
    """The inputs of an adversarial hazard, with their clean sources and the attack's report.

    Attributes:
        x_clean: the clean inputs the adversarial ones were made from (same order).
        index: positions of these inputs in the test data.
        eps, norm, attack: the threat model and the registry name of the attack.
        warnings: sanity flags (name -> explanation), e.g. ``zero_gradients``.
        broken_by: for ensembles, points broken by each member.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor, index: torch.Tensor, **info: Any):
        super().__init__(x, y, name=info["name"], kind="in", description=info["description"])
        self.x_clean = x_clean
        self.index = index
        self.eps: float = info["eps"]
        self.norm: str = info["norm"]
        self.attack: str = info["attack"]
        self.warnings: dict[str, str] = info["warnings"]
        self.broken_by: dict[str, int] = info["broken_by"]


@hazard_provider(KIND)
def _adversarial(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    """``adversarial/<attack>/<eps>``: the check's test subset attacked (deterministic given the seed)."""
    name, eps = hazard.name, hazard.eps
    if name not in atk.ATTACKS or eps is None:
        raise UnknownNameError(
            f"unknown hazard {str(hazard)!r}; use adversarial/<attack>/<eps> with an attack from "
            f"{', '.join(atk.available())}"
        )
    assert name is not None
    p = params_of(ctx, Adversarial)
    index = _subset(ctx, int(p["n"]))
    test = ctx.data.test
    x, y = test.x[index], test.y[index]
    attack = atk.create(name, eps=eps, norm=p["norm"], **_attack_params(p, name))
    correct = (ctx.outputs(Hazard.clean()).pred[index.to(ctx.device)] == y.to(ctx.device)).cpu()
    x_adv = x.clone()
    warnings: dict[str, str] = {}
    broken_by: dict[str, int] = {}
    if bool(correct.any()):
        ok = correct.nonzero()[:, 0]
        warnings.update(sanity_flags(ctx.model, x[ok], y[ok]))
        out = attack.run(ctx.model, x[ok], y[ok], generator=ctx.generator(KIND, name, f"{eps:g}"))
        x_adv[ok] = out.x_adv
        warnings.update(out.warnings)
        broken_by = out.broken_by
    return AdversarialSet(
        x_adv, y, x, index, name=f"{test.name}-{name}-{eps:g}", description=f"{name} at {p['norm']} eps {eps:g}",
        eps=eps, norm=p["norm"], attack=name, warnings=warnings, broken_by=broken_by,
    )  # fmt: skip


@register_check(KIND)
class Adversarial(Check):
    pillar = "robustness"
    title = "Adversarial robustness"
    description = (
        "Robust accuracy (share of test inputs classified correctly both clean and under attack, exact "
        "Clopper-Pearson 95% interval) against the attack radius eps in [0, 1] pixel units, for each configured "
        "attack from the registry; attack success rate among correctly classified inputs and the median norm of "
        "successful perturbations (bootstrap interval). Default attack: autoattack-fast (APGD-CE and APGD-T, "
        "Croce & Hein 2020), a cheaper upper bound on the standard AutoAttack's robust accuracy; configure "
        "attacks: [autoattack] for the standard ensemble. Sanity flags (zero gradients, randomised outputs, "
        "Square beating the white-box attacks) are stored as warning_* rows."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "attacks": ["autoattack-fast"],
        "eps": "auto",
        "norm": "linf",
        "n": 200,
        "attack_params": {},
        "pairs": 8,
        "n_boot": 500,
        **text_adv.TEXT_DEFAULTS,  # a text classifier: the text-attack recipes (checks/_adversarial_text.py)
    }
    quick: ClassVar[dict[str, Any]] = {
        **text_adv.TEXT_QUICK,
        "eps": "auto-quick",
        "n": 100,
        "attack_params": {"autoattack-fast": {"steps": 10}, "autoattack": {"steps": 10, "n_queries": 200}},
        "n_boot": 200,
    }
    metrics = (
        "robust_accuracy", "attack_success_rate", "median_perturbation_norm", "clean_accuracy_subset",
        *text_adv.TEXT_METRICS[1:],  # on text (attack_success_rate is shared)
        "warning_*", "broken_by_*",  # an attack's sanity flags; the members of an ensemble
        BUDGET_NOT_MEASURED,  # under --budget: an attack and eps its task's deadline left out
    )  # fmt: skip
    modalities = ("image", "text")
    independent_tasks = True  # each attack task builds its own inputs; the plots task reads their rows (needs)
    metrics_by_modality: ClassVar[dict[str, tuple[str, ...]]] = {"text": text_adv.TEXT_METRICS}

    view = AdversarialView

    # -- plan ----------------------------------------------------------------------------------
    def _plan(self, ctx: AuditContext) -> tuple[list[str], list[float]]:
        for key, least in (("n", 1), ("pairs", 0), ("n_boot", 1)):
            require_int("adversarial", self.params, key, least)  # when planned, not once a task runs
        extra = self.params["attack_params"]
        if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
            raise InputError(
                f"adversarial: attack_params must map attack names to their parameters, e.g. {{pgd = {{steps = "
                f"20}}}}, got {extra!r}"
            )
        spec = self.params["attacks"]
        if isinstance(spec, (list, tuple)) and not spec:
            raise InputError("adversarial attacks is empty; name at least one attack, e.g. [autoattack-fast]")
        names = list(dict.fromkeys(require_names(self.name, self.params, "attacks", "['pgd']", unique=False)))
        for n in names:
            atk.ATTACKS.get(n)  # raises UnknownNameError with a suggestion
            atk.ATTACKS.check_parameters(n, {"eps": 0.0, "norm": "linf", **_attack_params(self.params, n)})
        norm = self.params["norm"]
        if norm not in ("linf", "l2"):
            raise InputError(f"adversarial norm must be 'linf' or 'l2', got {norm!r}")
        eps = self.params["eps"]
        if eps in ("auto", "auto-quick"):
            grid = eps_grid(ctx.data.test.x, norm, quick=eps == "auto-quick")
        else:
            try:
                grid = sorted({float(e) for e in ([eps] if isinstance(eps, (int, float)) else eps)})
            except (TypeError, ValueError):
                raise InputError(f"adversarial eps must be 'auto' or a list of numbers, got {eps!r}") from None
            if not grid or grid[0] < 0 or (norm == "linf" and grid[-1] > 1):
                raise InputError(f"adversarial eps must be numbers in [0, 1] pixel units, got {eps!r}")
        return names, grid

    def _hazard(self, attack: str, eps: float) -> Hazard:
        return Hazard.adversarial(attack, eps, norm=self.params["norm"], source=KIND)

    def hazards(self, ctx: AuditContext) -> list[Hazard]:
        if ctx.modality == "text":
            return text_adv.hazards(self, ctx)
        names, grid = self._plan(ctx)
        return [self._hazard(n, e) for n in names for e in grid]

    def tasks(self, ctx: AuditContext) -> list[Task]:
        if ctx.modality == "text":
            return text_adv.tasks(self, ctx)
        names, grid = self._plan(ctx)
        headline = (names[0], grid[len(grid) // 2])  # the first attack at the middle eps: its pairs are drawn
        tasks = [
            Task(str(self._hazard(n, e)), bind(self._hazard_task, ctx, n, e, (n, e) == headline))
            for n in names
            for e in grid
        ]
        tasks.append(Task("plots", lambda: self._plots_task(ctx, names, grid), needs=tuple(t.key for t in tasks)))
        return tasks

    # -- work ----------------------------------------------------------------------------------
    def _summary(self, ctx: AuditContext, hazard: Hazard) -> tuple[AdversarialSet, AttackSummary]:
        """The hazard's data and the pillar's summary of it (with the median perturbation norm)."""
        data = ctx.hazard(hazard)
        assert isinstance(data, AdversarialSet)
        pred_clean = ctx.outputs(Hazard.clean()).pred[data.index.to(ctx.device)]
        seed = ctx.seed_for(KIND, str(hazard), "median_perturbation_norm")
        summary = evaluate_outputs(pred_clean, ctx.outputs(hazard).pred, data.y.to(ctx.device), data.norm,
                                   data.x_clean, data.x, n_boot=int(self.params["n_boot"]), seed=seed)  # fmt: skip
        return data, summary

    def _hazard_task(self, ctx: AuditContext, name: str, eps: float, headline: bool) -> TaskResult:
        if ctx.deadline is None:
            return self._hazard_rows(ctx, name, eps, headline)
        # under --budget: the headline (first attack, mid eps), others if they fit
        for _ in until_deadline(ctx, [name], f"adversarial/{name}", int(headline)):
            return self._hazard_rows(ctx, name, eps, headline)
        return TaskResult([not_measured_row(str(self._hazard(name, eps)), f"{name} at eps {eps:g}")])

    def _hazard_rows(self, ctx: AuditContext, name: str, eps: float, headline: bool) -> TaskResult:
        hazard = self._hazard(name, eps)
        key = str(hazard)
        data, s = self._summary(ctx, hazard)
        info = {"attack": name, "eps": eps, "norm": data.norm, "subset": len(data)}
        rows = [Row.of(key, "robust_accuracy", s.robust_accuracy, **info)]
        if s.attack_success_rate is not None:
            rows.append(Row.of(key, "attack_success_rate", s.attack_success_rate, **info))
        if s.median_perturbation_norm is not None:
            rows.append(Row.of(key, "median_perturbation_norm", s.median_perturbation_norm, **info))
        for flag, text in sorted(data.warnings.items()):
            rows.append(Row.exact(key, metric_name("warning", flag), 1.0, DECISION, **info, message=text))
        for member, count in sorted(data.broken_by.items()):
            rows.append(Row.exact(key, metric_name("broken_by", member), float(count), COUNT, **info))
        return TaskResult(rows, self._pairs(ctx, data, s.broken, hazard) if headline else [])

    def _pairs(self, ctx: AuditContext, data: AdversarialSet, broken: torch.Tensor, hazard: Hazard) -> list[Artifact]:
        """Up to ``pairs`` inputs the attack broke, clean above adversarial, with their predicted classes."""
        pick = broken.nonzero()[:, 0][: int(self.params["pairs"])]
        if not pick.numel():
            return []
        with torch.inference_mode():
            pred_c = ctx.outputs(Hazard.clean()).pred[data.index.to(ctx.device)][pick.to(ctx.device)].cpu()
            pred_a = ctx.outputs(hazard).pred[pick.to(ctx.device)].cpu()
        png = pairs_png(data.x_clean[pick], data.x[pick], pred_c, pred_a)
        caption = (f"Clean (top) and {data.attack} adversarial (bottom) inputs at {data.norm} eps {data.eps:g}, "
                   "with predicted classes.")  # fmt: skip
        return [Artifact("adversarial-pairs", png, caption=caption)]

    def _plots_task(self, ctx: AuditContext, names: list[str], grid: list[float]) -> TaskResult:
        """The robustness curve, drawn from the rows the attack tasks stored (``ctx.rows_of``: nothing is
        attacked again, on whichever worker this runs); an attack and eps a budget's deadline left out has no
        point. The clean accuracy of the attacked subset (eps 0) comes from the shared clean pass."""
        curves: dict[str, Curve] = {}
        for name in names:
            points = []
            for e in grid:
                key = str(self._hazard(name, e))
                robust = [r for r in ctx.rows_of(KIND, key) if r.metric == "robust_accuracy"]
                if robust:
                    r = robust[0]
                    points.append((e, r.value, r.ci_low, r.ci_high))
            curves[name] = points
        index = _subset(ctx, int(self.params["n"]))
        y = ctx.data.test.y[index].to(ctx.device)
        clean = proportion((ctx.outputs(Hazard.clean()).pred[index.to(ctx.device)] == y).cpu())
        norm = self.params["norm"]
        rows = [Row.of(str(Hazard.adversarial()), "clean_accuracy_subset", clean, norm=norm)]
        clean_acc = (clean.value, clean.ci_low, clean.ci_high)
        artifacts = [
            Artifact("robust-accuracy-curve", curve_png(curves, clean_acc, norm),
                     caption=f"Robust accuracy against {norm} eps (95% CIs)."),
        ]  # fmt: skip
        return TaskResult(rows, artifacts)
