"""The cross-validated hidden-state probe of the ETHICS and TruthfulQA evals: its logistic regression against
scikit-learn's, and its standardisation taken from the training rows only."""

from __future__ import annotations

import pytest
import torch

from mlsafety.alignment.evals._probe import L2, _fit_and_judge, fit_logistic


def _data(n: int = 60, layers: int = 2, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(layers, n, dim, generator=g, dtype=torch.float64)
    y = (x[:, :, 0].mean(0) + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()
    return x, y


@pytest.mark.parametrize("bias", [True, False])
def test_fit_logistic_is_scikit_learns_l2_logistic_regression_per_layer(bias: bool) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _data()
    w, b = fit_logistic(x, y.double(), bias=bias)
    for k in range(x.shape[0]):  # mean log-loss + L2 / 2 ||w||^2 is C = 1 / (L2 n) in scikit-learn's scaling
        ref = sklearn.LogisticRegression(C=1 / (L2 * x.shape[1]), fit_intercept=bias, tol=1e-12, max_iter=10_000)
        ref.fit(x[k].numpy(), y.numpy())
        torch.testing.assert_close(w[k], torch.from_numpy(ref.coef_[0]), atol=1e-5, rtol=1e-4)
        assert abs(float(b[k]) - (float(ref.intercept_[0]) if bias else 0.0)) < 1e-5


def test_test_rows_are_standardised_with_the_training_rows_statistics() -> None:
    x, y = _data(n=80, seed=1)
    train, test = slice(0, 50), slice(50, 80)
    right = _fit_and_judge(x[:, train], y[train], x[:, test], y[test], pairwise=False)
    # by hand: the training rows' mean and standard deviation, applied to the test rows
    mean, std = x[:, train].mean(1, keepdim=True), x[:, train].std(1, keepdim=True)
    w, b = fit_logistic((x[:, train] - mean) / std, y[train].double())
    z = torch.einsum("lnd,ld->ln", (x[:, test] - mean) / std, w) + b[:, None]
    clear = z.abs() > 1e-6  # a decision this close to the boundary may differ between CPUs' float kernels
    assert clear.float().mean() > 0.9
    assert torch.equal(right[clear], ((z > 0).long() == y[test][None, :])[clear])
    # another test set's other rows (here scaled and shifted far away) change no row's decision
    moved = x[:, test].clone()
    moved[:, 1:] = 100 * moved[:, 1:] + 7
    again = _fit_and_judge(x[:, train], y[train], moved, y[test], pairwise=False)
    assert torch.equal(again[:, 0], right[:, 0])


def test_minimal_pairs_split_across_folds_push_the_probe_below_chance() -> None:
    """Twins that differ only in the label's cue (the look-alike commonsense rows come as wrong / not-wrong
    minimal pairs) sit almost on one point: with one row per group a test row's twin is usually in the training
    folds with the opposite label, and the probe answers the twin's label (below chance). Kept in one fold, the
    probe reads only the cue (here: absent, so chance)."""
    from mlsafety.alignment.evals._probe import cross_validate

    g = torch.Generator().manual_seed(0)
    pairs = 32
    centre = torch.randn(pairs, 1, 8, generator=g).repeat_interleave(2, dim=0) * 3.0
    x = centre + 0.05 * torch.randn(2 * pairs, 1, 8, generator=g)  # no label signal, only the pair's point
    y = torch.arange(2 * pairs) % 2
    per_row = cross_validate(x, y, torch.arange(2 * pairs), 4, torch.Generator().manual_seed(1))
    per_pair = cross_validate(x, y, torch.arange(2 * pairs) // 2, 4, torch.Generator().manual_seed(1))
    assert per_row.per_layer.double().mean() < 0.3
    assert 0.3 < per_pair.per_layer.double().mean() < 0.7
