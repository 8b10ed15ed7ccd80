"""FPR@95 in its two conventions (issue 12, point 10): in-distribution positive (ODIN, OpenOOD v1.0)
and OOD positive (OpenOOD v1.5, pytorch-ood), by hand, against scikit-learn's ``roc_curve``, through
the fused bootstrap, and on the embedded data where they differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from mlsafety.core import InputError
from mlsafety.metrics import (
    OOD_METRICS,
    fpr95_id_positive,
    fpr95_ood_positive,
    fpr_at_95_tpr,
    fpr_at_tpr,
    ood_metrics,
)


def test_known_answer_by_hand() -> None:
    a = torch.arange(10.0)  # in-distribution anomaly scores 0..9
    b = torch.arange(5.0, 25.0)  # OOD scores 5..24
    # ID positive: keeping 95% of 10 ID inputs keeps all (score <= 9); OOD accepted: 5..9 = 5 of 20
    assert float(fpr95_id_positive(a, b)) == pytest.approx(5 / 20)
    # OOD positive: catching 95% of 20 OOD inputs flags the top 19 (score >= 6); ID flagged: 6..9 = 4 of 10
    assert float(fpr95_ood_positive(a, b)) == pytest.approx(4 / 10)
    assert float(fpr_at_95_tpr(a, b)) == float(fpr95_id_positive(a, b))  # the former name


def test_ties_form_one_threshold_in_both_conventions() -> None:
    a = torch.tensor([0.0, 1.0, 1.0, 2.0])
    b = torch.tensor([1.0, 2.0, 2.0, 3.0])
    # ID positive at 50%: the group at 0 keeps 1/4, the group at 1 (two ID, one OOD) reaches 3/4: 1 OOD accepted
    assert float(fpr_at_tpr(a, b, 0.5, positive="in")) == pytest.approx(1 / 4)
    # OOD positive at 50%: the group at 3 catches 1/4, the group at 2 (two OOD, one ID) reaches 3/4: 1 ID flagged
    assert float(fpr_at_tpr(a, b, 0.5, positive="ood")) == pytest.approx(1 / 4)
    # at 100%: every OOD input caught needs the threshold at 1, which flags 3 of the 4 ID inputs
    assert float(fpr_at_tpr(a, b, 1.0, positive="ood")) == pytest.approx(3 / 4)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tpr", [0.95, 0.8])
def test_both_conventions_equal_scikit_learn_roc_curve(seed: int, tpr: float) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(5, 300)), int(rng.integers(5, 300))
    a = rng.normal(0.0, 1.0, n).round(1)  # rounded: many ties
    b = rng.normal(0.8, 1.3, m).round(1)
    s = np.concatenate([a, b])
    is_ood = np.r_[np.zeros(n), np.ones(m)]
    # ID positive (ODIN / OpenOOD v1.0): positives ranked by -score
    fpr, tp_rate, _ = roc_curve(1 - is_ood, -s, drop_intermediate=False)
    want_in = fpr[np.argmax(tp_rate >= tpr)]
    # OOD positive (OpenOOD v1.5: roc_curve(ood_indicator, -conf), conf = -score)
    fpr, tp_rate, _ = roc_curve(is_ood, s, drop_intermediate=False)
    want_ood = fpr[np.argmax(tp_rate >= tpr)]
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    assert float(fpr_at_tpr(at, bt, tpr, positive="in")) == pytest.approx(want_in, abs=1e-12)
    assert float(fpr_at_tpr(at, bt, tpr, positive="ood")) == pytest.approx(want_ood, abs=1e-12)
    if tpr == 0.95:
        fused = ood_metrics(at, bt, n_boot=20, seed=seed)
        assert fused["fpr95_id_positive"].value == pytest.approx(want_in, abs=1e-12)
        assert fused["fpr95_ood_positive"].value == pytest.approx(want_ood, abs=1e-12)


def test_batched_rows_are_independent_problems() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 50, generator=g), torch.randn(4, 70, generator=g) + 0.5
    for positive in ("in", "ood"):
        rows = fpr_at_tpr(a, b, positive=positive)
        assert rows.shape == (4,)
        for i in range(4):
            assert float(rows[i]) == float(fpr_at_tpr(a[i], b[i], positive=positive))


def test_fused_bootstrap_intervals_equal_separate_bootstraps_of_each_convention() -> None:
    from mlsafety.metrics import bootstrap_two_sample

    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(120, generator=g) * 4).round(), (torch.randn(90, generator=g) * 4 + 3).round()
    fused = ood_metrics(a, b, n_boot=200, seed=7)
    assert set(fused) == set(OOD_METRICS)
    for name in ("fpr95_id_positive", "fpr95_ood_positive"):
        ref = bootstrap_two_sample(OOD_METRICS[name], a, b, n_boot=200, seed=7)
        got = fused[name]
        assert (got.value, got.ci_low, got.ci_high) == pytest.approx((ref.value, ref.ci_low, ref.ci_high), abs=1e-12)
        assert got.ci_low <= got.value <= got.ci_high


def test_an_unknown_convention_is_an_input_error() -> None:
    with pytest.raises(InputError, match="positive must be"):
        fpr_at_tpr(torch.zeros(3), torch.ones(3), positive="id")


def test_the_conventions_differ_on_the_embedded_letters_with_energy() -> None:
    """The figures quoted in the docs: on digits-cnn's test data against letters, Energy gives about
    0.706 with in-distribution positive and 0.575 with OOD positive (counts of a few hundred inputs,
    so a CPU's float rounding may move one input: compared to 0.01)."""
    from mlsafety import zoo
    from mlsafety.core import Classifier
    from mlsafety.monitoring import ood

    clf = Classifier(zoo.load_model("digits-cnn"))
    det = ood.create("energy")
    s_in = det.score(clf, zoo.load_dataset("digits", "test").x)
    s_out = det.score(clf, zoo.load_dataset("letters").x)
    assert float(fpr95_id_positive(s_in, s_out)) == pytest.approx(0.706, abs=0.01)
    assert float(fpr95_ood_positive(s_in, s_out)) == pytest.approx(0.575, abs=0.01)
