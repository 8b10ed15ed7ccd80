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

from typing import Any, ClassVar

import torch

from mlsafety.core import Classifier, InputError, draw_seed, generator
from mlsafety.robustness.attacks.apgd import APGD
from mlsafety.robustness.attacks.apgd_t import APGDT
from mlsafety.robustness.attacks.base import Attack, AttackOutput, project, register_attack
from mlsafety.robustness.attacks.fab import FABT
from mlsafety.robustness.attacks.square import Square

WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")


@register_attack("autoattack")
class AutoAttack(Attack):
    """The standard AutoAttack ensemble; reports ``square_beats_white_box`` when it applies.

    Args:
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations of APGD-CE, APGD-T and FAB-T.
        n_target_classes: targets of APGD-T and FAB-T.
        n_queries: Square's query budget per point.
        members: which members run, in order (a subset of the standard four).
        seed: each member's generator is derived from it and the member's name.
        batch_size: inputs attacked together.
    """

    supports_targeted = False
    default_members: ClassVar[tuple[str, ...]] = ("apgd-ce", "apgd-t", "fab-t", "square")

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        n_target_classes: int = 9,
        n_queries: int = 5000,
        members: tuple[str, ...] | list[str] | None = None,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        super().__init__(eps, norm=norm, seed=seed, batch_size=batch_size)
        self.steps = int(steps)
        self.n_target_classes = int(n_target_classes)
        self.n_queries = int(n_queries)
        self.members = tuple(self.default_members if members is None else members)
        unknown = sorted(set(self.members) - set(AutoAttack.default_members))
        if unknown or not self.members:
            raise InputError(f"AutoAttack members must be among {', '.join(AutoAttack.default_members)}")

    def build(self, name: str, num_classes: int) -> Attack:
        """Member ``name`` with the ensemble's settings."""
        common: dict[str, Any] = {"eps": self.eps, "norm": self.norm, "seed": self.seed, "batch_size": self.batch_size}
        targets = min(self.n_target_classes, num_classes - 1)
        factories = {
            "apgd-ce": lambda: APGD(steps=self.steps, **common),
            "apgd-t": lambda: APGDT(steps=self.steps, n_target_classes=targets, **common),
            "fab-t": lambda: FABT(steps=self.steps, n_target_classes=targets, **common),
            "square": lambda: Square(n_queries=self.n_queries, **common),
        }
        return factories[name]()

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
        for name in self.members:
            idx = robust.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            if name == "apgd-t" and k < 4:
                continue  # the targeted DLR loss needs at least four classes
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
        if broken.get("square", 0) > 0 and any(m in self.members for m in WHITE_BOX):
            warnings["square_beats_white_box"] = (
                f"the black-box Square attack broke {broken['square']} points the gradient attacks did not: "
                "gradients may be masked or obfuscated, so white-box numbers overstate robustness"
            )
        return AttackOutput(x_adv, warnings, broken)


@register_attack("autoattack-fast")
class AutoAttackFast(AutoAttack):
    """The default audit's cheap profile: APGD-CE and APGD-T (3 targets), 25 iterations each.

    Same arguments as :class:`AutoAttack` with cheaper defaults; an upper bound on the robust
    accuracy the standard ensemble would report.
    """

    default_members = ("apgd-ce", "apgd-t")

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        steps: int = 25,
        n_target_classes: int = 3,
        n_queries: int = 1000,
        members: tuple[str, ...] | list[str] | None = None,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        super().__init__(eps, norm, steps, n_target_classes, n_queries, members, seed, batch_size)
