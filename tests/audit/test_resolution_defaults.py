"""Attack radii that follow the input (issue 22): the field's standard radii by resolution in the
adversarial check's grids and in transparency's adversarial examples; the 8x8 digits keep theirs."""

from __future__ import annotations

import pytest
import torch

from mlsafety import zoo
from mlsafety.audit import CHECKS
from mlsafety.audit._context import AuditContext, AuditData
from mlsafety.audit.checks.adversarial import (
    EPS_FRACTIONS,
    QUICK_FRACTIONS,
    default_eps,
    eps_grid,
    resolution_family,
    standard_eps,
    typical_eps,
)
from mlsafety.audit.checks.transparency import _eps
from mlsafety.core import ArrayDataset, Classifier, Hazard, InputError

CIFAR_LINF = float(f"{8 / 255:g}")
IMAGENET_LINF = float(f"{4 / 255:g}")


def _images(*shape: int) -> torch.Tensor:
    """Images in [0, 1] with a pixel standard deviation near CIFAR's (about 0.25)."""
    g = torch.Generator().manual_seed(0)
    return (0.5 + 0.25 * torch.randn(16, *shape, generator=g)).clamp(0, 1)


def test_the_digits_grids_do_not_change() -> None:
    x = zoo.load_dataset("digits", "test").x
    assert resolution_family(x.shape[1:]) is None
    for norm in ("linf", "l2"):
        assert eps_grid(x, norm) == default_eps(x, norm, EPS_FRACTIONS)
        assert eps_grid(x, norm, quick=True) == default_eps(x, norm, QUICK_FRACTIONS)
    assert typical_eps(x) == pytest.approx(0.1)  # transparency's radius on the digits, as before


@pytest.mark.parametrize(
    ("shape", "norm", "wanted"),
    [
        ((1, 28, 28), "linf", (0.1, 0.2, 0.3)),
        ((3, 32, 32), "linf", (CIFAR_LINF,)),
        ((3, 32, 32), "l2", (0.5,)),
        ((3, 224, 224), "linf", (IMAGENET_LINF,)),
    ],
)
def test_the_standard_radii_of_the_resolution_are_in_both_grids(shape, norm, wanted) -> None:  # type: ignore[no-untyped-def]
    x = _images(*shape)
    assert standard_eps(shape, norm) == pytest.approx(wanted)
    full, quick = eps_grid(x, norm), eps_grid(x, norm, quick=True)
    for eps in wanted:
        assert eps in full and eps in quick
        assert Hazard.adversarial("pgd", eps).eps == eps  # the hazard's key keeps the radius as it is
    # each standard radius takes a data-scaled one's place: the grids keep their length (and cost)
    assert len(full) == len(default_eps(x, norm, EPS_FRACTIONS))
    assert len(quick) == len(default_eps(x, norm, QUICK_FRACTIONS))
    assert full == sorted(full) and all(e > 0 for e in full)


def test_the_quick_grid_of_28_px_grey_is_the_mnist_family_budgets() -> None:
    assert eps_grid(_images(1, 28, 28), "linf", quick=True) == [0.1, 0.2, 0.3]


def test_the_adversarial_check_plans_the_grid_of_its_data() -> None:
    x = _images(3, 32, 32)
    data = ArrayDataset(x, torch.zeros(len(x), dtype=torch.long), name="colour")
    model = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2)))
    ctx = AuditContext(model, AuditData(test=data, val=data))
    for quick in (False, True):
        hazards = CHECKS.create("adversarial", quick=quick).hazards(ctx)
        assert CIFAR_LINF in {h.eps for h in hazards}


@pytest.mark.parametrize(
    ("shape", "eps"), [((1, 28, 28), 0.1), ((3, 32, 32), CIFAR_LINF), ((3, 224, 224), IMAGENET_LINF)]
)
def test_transparency_attacks_at_the_resolutions_radius(shape, eps) -> None:  # type: ignore[no-untyped-def]
    x = _images(*shape)
    assert typical_eps(x) == pytest.approx(eps)
    assert _eps("auto", x) == pytest.approx(eps) and _eps(0.05, x) == 0.05
    assert CHECKS.get("transparency").defaults["adversarial_eps"] == "auto"
    with pytest.raises(InputError, match="adversarial_eps must be 'auto' or a number in"):
        _eps(2, x)
