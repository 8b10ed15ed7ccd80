"""ROC points: the curve whose trapezoid area is the AUROC, ties as one threshold."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.metrics import auroc, roc_points


def test_area_under_the_points_is_the_auroc_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (40,), generator=g).float()  # many ties
    b = torch.randint(2, 9, (30,), generator=g).float()
    fpr, tpr = roc_points(a, b)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert (fpr.diff() >= 0).all() and (tpr.diff() >= 0).all()
    assert len(fpr) == len(torch.cat([a, b]).unique()) + 1  # one point per distinct threshold
    torch.testing.assert_close(torch.trapezoid(tpr, fpr), auroc(a, b).double())


def test_perfect_separator_and_empty_input() -> None:
    fpr, tpr = roc_points(torch.tensor([0.0, 0.1]), torch.tensor([1.0, 2.0]))
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
    with pytest.raises(InputError):
        roc_points(torch.tensor([]), torch.tensor([1.0]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_refused_as_by_auroc(bad: float) -> None:
    # a NaN used to sort as the largest score and become a threshold of its own: a curve with no meaning
    a, b = torch.tensor([0.0, bad]), torch.tensor([1.0])
    with pytest.raises(InputError, match="NaN or infinite"):
        auroc(a, b)
    with pytest.raises(InputError, match="NaN or infinite"):
        roc_points(a, b)
