import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from mlsafety.core import InputError
from mlsafety.metrics import (
    aupr_in,
    aupr_out,
    auroc,
    bootstrap_two_sample,
    clopper_pearson,
    fpr_at_tpr,
    ood_metrics,
    proportion,
    wilson,
)

scores = st.lists(st.integers(0, 6), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(scores, scores, st.booleans())
def test_agree_with_sklearn_on_tied_and_random_scores(a, b, jitter):
    a_t, b_t = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if jitter:
        a_t = a_t + torch.linspace(0, 0.5, len(a), dtype=torch.float64)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    s = np.r_[a_t.numpy(), b_t.numpy()]
    assert float(auroc(a_t, b_t)) == pytest.approx(roc_auc_score(y, s))
    assert float(aupr_out(a_t, b_t)) == pytest.approx(average_precision_score(y, s))
    assert float(aupr_in(a_t, b_t)) == pytest.approx(average_precision_score(1 - y, -s))
    fpr, tpr, _ = roc_curve(1 - y, -s)
    assert float(fpr_at_tpr(a_t, b_t, 0.95)) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_batched_rows_equal_single_calls():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 50, generator=g), torch.randn(4, 40, generator=g) + 1
    for fn in (auroc, aupr_in, aupr_out, fpr_at_tpr):
        batch = fn(a, b)
        for i in range(4):
            assert float(batch[i]) == pytest.approx(float(fn(a[i], b[i])))


def test_perfect_and_reversed_separator():
    a, b = torch.arange(10.0), torch.arange(10.0) + 100
    assert float(auroc(a, b)) == 1.0 and float(auroc(b, a)) == 0.0
    assert float(fpr_at_tpr(a, b)) == 0.0 and float(aupr_out(a, b)) == 1.0


def test_errors():
    with pytest.raises(InputError):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(InputError, match="NaN"):
        auroc(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_exact_intervals():
    lo, hi = clopper_pearson(7, 20)
    assert (lo, hi) == pytest.approx(tuple(stats.binomtest(7, 20).proportion_ci(method="exact")))
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    assert wilson(7, 20) == pytest.approx(tuple(stats.binomtest(7, 20).proportion_ci(method="wilson")))
    est = proportion(torch.tensor([True, False, True, True]))
    assert est.value == 0.75 and est.n == 4 and est.ci_low < 0.75 < est.ci_high


def test_bootstrap_is_seeded_and_covers_the_value():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, generator=g), torch.randn(150, generator=g) + 1
    e1 = bootstrap_two_sample(auroc, a, b, n_boot=300, seed=3)
    e2 = bootstrap_two_sample(auroc, a, b, n_boot=300, seed=3)
    assert e1 == e2 and e1.ci_low < e1.value < e1.ci_high
    # the analytic AUROC of N(0,1) vs N(1,1) is Phi(1/sqrt(2)) ~ 0.76; the interval should be near it
    assert e1.ci_low < 0.80 and e1.ci_high > 0.70
    want = {"auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive"}
    assert set(ood_metrics(a, b, n_boot=50)) == want
