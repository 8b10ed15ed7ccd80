"""AutoAttack: the standard parameter-free ensemble (Croce & Hein 2020) and a cheaper profile.

``autoattack`` runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries), the
gradient attacks with 100 iterations, as in the reference ``version="standard"``. Each member only
sees the points the earlier members did not break, and each point keeps the adversarial example of
the first member that broke it, so the result is the per-point worst case over the ensemble.

``autoattack-fast`` is the profile of the default audit: APGD-CE and APGD-T with 3 targets, 25
iterations each, no FAB-T and no Square. It is a cheaper upper bound on the robust accuracy, not
a substitute for the standard ensemble in a robustness claim.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch

import mlsafety.robustness.attacks.apgd
import mlsafety.robustness.attacks.apgd_t
import mlsafety.robustness.attacks.fab
import mlsafety.robustness.attacks.square  # noqa: F401
from mlsafety.core import Classifier, InputError, Param, draw_seed, generator
from mlsafety.robustness.attacks.base import ATTACKS, Attack, AttackOutput, project, register_attack


@register_attack("autoattack", tags=("ensemble",))
class AutoAttack(Attack):
    """The standard AutoAttack ensemble; reports ``square_beats_white_box`` when it applies.

    Each member is the registered attack of that name, built with the ensemble's ``eps``, ``norm``,
    ``seed`` and ``batch_size`` plus whichever of ``steps``, ``n_target_classes`` (capped at the
    number of classes minus one) and ``n_queries`` it takes; its generator is derived from the
    batch's seed and its name.
    """

    steps = Param(100, int, low=1, doc="iterations of APGD-CE, APGD-T and FAB-T")
    n_target_classes = Param(9, int, low=1, doc="targets of APGD-T and FAB-T")
    n_queries = Param(5000, int, low=1, doc="Square's query budget per point")
    members = Param(None, tuple, doc="which members run, in order (a subset of the standard four); None: all")

    default_members: ClassVar[tuple[str, ...]] = ("apgd-ce", "apgd-t", "fab-t", "square")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.members = tuple(self.default_members if self.members is None else self.members)
        unknown = sorted(set(self.members) - set(AutoAttack.default_members))
        if unknown or not self.members:
            raise InputError(
                f"{self.name} members must be among {', '.join(AutoAttack.default_members)}, got {self.members!r}"
            )

    def build(self, name: str, num_classes: int) -> Attack:
        """Member ``name`` with the ensemble's settings (the parameters of the ensemble it takes)."""
        budget = {
            "eps": self.eps,
            "norm": self.norm,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "n_target_classes": min(self.n_target_classes, num_classes - 1),
            "n_queries": self.n_queries,
        }
        takes = ATTACKS.parameters(name) or []
        return ATTACKS.create(name, **{k: v for k, v in budget.items() if k in takes})

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        return self.perturb_report(clf, x, y, target, g).x_adv

    def perturb_report(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> AttackOutput:
        with torch.no_grad():
            logits = clf.logits(x)
        k = logits.shape[1]
        robust = logits.argmax(dim=1) == y
        x_adv = x.clone()
        broken: dict[str, int] = {}
        batch_seed = draw_seed(g)
        for name in self.members or self.default_members:
            idx = robust.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            if k < ATTACKS.get(name).min_classes:
                continue  # e.g. APGD-T's targeted DLR loss needs four classes
            member = self.build(name, k)
            mg = generator(batch_seed, "autoattack", name)
            out = member.perturb(clf, x[idx], y[idx], None, mg)
            out = project(out, x[idx], member.eps, member.norm)
            with torch.no_grad():
                fooled = clf.logits(out).argmax(dim=1) != y[idx]
            x_adv[idx[fooled]] = out[fooled]
            robust[idx[fooled]] = False
            broken[name] = int(fooled.sum())
        warnings: dict[str, str] = {}
        black_box = sum(n for m, n in broken.items() if m in ATTACKS.tagged("black-box"))
        if black_box > 0 and any(m in ATTACKS.tagged("white-box") for m in self.members or ()):
            warnings["square_beats_white_box"] = (
                f"the black-box Square attack broke {black_box} points the gradient attacks did not: "
                "gradients may be masked or obfuscated, so white-box numbers overstate robustness"
            )
        return AttackOutput(x_adv, warnings, broken)


@register_attack("autoattack-fast", tags=("ensemble",))
class AutoAttackFast(AutoAttack):
    """The default audit's cheap profile: APGD-CE and APGD-T (3 targets), 25 iterations each.

    Same parameters as :class:`AutoAttack` with cheaper defaults; an upper bound on the robust
    accuracy the standard ensemble would report.
    """

    steps = replace(AutoAttack.steps, default=25)
    n_target_classes = replace(AutoAttack.n_target_classes, default=3)
    n_queries = replace(AutoAttack.n_queries, default=1000)
    default_members = ("apgd-ce", "apgd-t")
