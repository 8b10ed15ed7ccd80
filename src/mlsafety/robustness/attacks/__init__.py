"""Adversarial attacks, one per module, registered by name.

``create(name, **params)`` builds one (``create("pgd", eps=0.1)``), ``available()`` lists them.
Every attack is called as ``attack(model, x, y) -> x_adv`` with inputs in [0, 1] and ``eps`` in
pixel units; see :class:`Attack` for the contract and :mod:`._objectives` for the loss hooks.
"""

from mlsafety.robustness.attacks._objectives import LossFn, SuccessFn, dlr_loss, dlr_targeted_loss, margin
from mlsafety.robustness.attacks.apgd import APGD, APGDDLR, apgd_run
from mlsafety.robustness.attacks.apgd_t import APGDT
from mlsafety.robustness.attacks.autoattack import AutoAttack, AutoAttackFast
from mlsafety.robustness.attacks.base import (
    ATTACKS,
    Attack,
    AttackOutput,
    available,
    create,
    lp_norm,
    project,
    register_attack,
)
from mlsafety.robustness.attacks.fab import FABT
from mlsafety.robustness.attacks.fgsm import FGSM
from mlsafety.robustness.attacks.pgd import PGD
from mlsafety.robustness.attacks.square import Square

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "ATTACKS",
    "FABT",
    "FGSM",
    "PGD",
    "Attack",
    "AttackOutput",
    "AutoAttack",
    "AutoAttackFast",
    "LossFn",
    "Square",
    "SuccessFn",
    "apgd_run",
    "available",
    "create",
    "dlr_loss",
    "dlr_targeted_loss",
    "lp_norm",
    "margin",
    "project",
    "register_attack",
]
