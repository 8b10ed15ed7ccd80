"""Logistic regression, mean difference and top PC on synthetic contrast states with a known answer."""

from __future__ import annotations

import pytest
import torch

from mlsafety.alignment.probes import PROBES, Logistic, MeanDiff, TopPC, normalize, zero_shot_scores
from mlsafety.core import InputError, NotFittedError


def planted(n: int = 300, d: int = 12, seed: int = 0, margin: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    t = (2 * y - 1).float()
    u = torch.eye(d)[2]
    pos = torch.randn(n, d, generator=g) + margin * t[:, None] * u
    neg = torch.randn(n, d, generator=g) - margin * t[:, None] * u
    return pos, neg, y, u


def test_registry_holds_the_four_probes_with_their_supervision_tags() -> None:
    assert PROBES.available() == ["ccs", "logistic", "mean-diff", "top-pc"]
    assert PROBES.tagged("unsupervised") == ["ccs", "top-pc"]
    assert all(PROBES.get(m).supervised for m in PROBES.tagged("supervised"))


@pytest.mark.parametrize("cls", [Logistic, MeanDiff])
def test_supervised_probes_find_the_planted_direction(cls) -> None:
    pos, neg, y, u = planted()
    probe = cls().fit(pos, neg, y)
    assert float(torch.nn.functional.cosine_similarity(probe.coef_, u, dim=0)) > 0.9
    tp, tn, ty, _ = planted(seed=1)
    assert float((probe.predict(tp, tn) == ty).float().mean()) > 0.95
    with pytest.raises(InputError, match="supervised"):
        cls().fit(pos, neg)


def test_mean_diff_equals_a_hand_computation() -> None:
    pos = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [3.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([1, 0, 0, 1])
    probe = MeanDiff().fit(pos, neg, y)
    d = normalize(pos) - normalize(neg)
    mu1, mu0 = d[[0, 3]].mean(0), d[[1, 2]].mean(0)
    torch.testing.assert_close(probe.coef_, mu1 - mu0)
    torch.testing.assert_close(probe.score(pos, neg), d @ (mu1 - mu0) - 0.5 * (mu1 + mu0) @ (mu1 - mu0))


def test_top_pc_is_the_leading_eigenvector_of_the_difference_covariance() -> None:
    pos, neg, y, u = planted(margin=3.0)
    probe = TopPC().fit(pos, neg, reference=(2 * y - 1).float())
    d = normalize(pos) - normalize(neg)
    d = d - d.mean(0)
    _, vecs = torch.linalg.eigh(d.T @ d)
    assert abs(float(probe.coef_ @ vecs[:, -1])) > 0.999
    assert abs(float(probe.coef_ @ u)) > 0.9
    assert float((probe.predict(pos, neg) == y).float().mean()) > 0.95
    flipped = TopPC().fit(pos, neg, reference=(1 - 2 * y).float())
    assert torch.equal(flipped.predict(pos, neg), 1 - probe.predict(pos, neg))


def test_zero_shot_reads_the_higher_log_probability_and_calibrates_at_the_median() -> None:
    yes, no = torch.tensor([-1.0, -2.0, -0.5, -3.0]), torch.tensor([-2.0, -1.5, -0.4, -5.0])
    assert (zero_shot_scores(yes, no) > 0).tolist() == [True, False, False, True]
    cal = zero_shot_scores(yes, no, calibrated=True)
    assert float(cal.median()) == 0.0


def test_unfitted_and_bad_shapes_are_refused() -> None:
    pos, neg, _, _ = planted(n=10)
    with pytest.raises(NotFittedError):
        TopPC().score(pos, neg)
    with pytest.raises(InputError, match="one shape"):
        TopPC().fit(pos, neg[:, :3])
    with pytest.raises(InputError, match="both classes"):
        Logistic().fit(pos, neg, torch.ones(10, dtype=torch.long))
