"""CE, mCE and relative mCE against hand computations (Hendrycks & Dietterich, 2019)."""

from __future__ import annotations

import pytest

from mlsafety.core import InputError
from mlsafety.robustness.corruptions import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, available, mce


def test_alexnet_table_covers_the_fifteen():
    assert sorted(ALEXNET_ERRORS) == available(extra=False)
    assert all(ALEXNET_CLEAN_ERROR < e < 1 for e in ALEXNET_ERRORS.values())


def test_unnormalised_by_hand():
    errors = {"fog": [0.1, 0.2, 0.3], "snow": [0.5, 0.5, 0.8]}
    s = mce(errors, clean_error=0.05)
    assert s.ce == pytest.approx({"fog": 0.2, "snow": 0.6})
    assert s.mce == pytest.approx(0.4)
    assert s.relative_mce == pytest.approx(0.35)
    assert not s.normalised


def test_alexnet_normalised_by_hand():
    errors = {"fog": [0.2, 0.3, 0.4, 0.5, 0.6], "contrast": [0.1] * 5}
    s = mce(errors, clean_error=0.05, baseline=ALEXNET_ERRORS)
    ce_fog = 0.4 / ALEXNET_ERRORS["fog"]  # sum of errors / sum of AlexNet's = mean / AlexNet's mean
    ce_con = 0.1 / ALEXNET_ERRORS["contrast"]
    assert s.ce == pytest.approx({"fog": ce_fog, "contrast": ce_con})
    assert s.mce == pytest.approx((ce_fog + ce_con) / 2)
    rel_fog = (0.4 - 0.05) / (ALEXNET_ERRORS["fog"] - ALEXNET_CLEAN_ERROR)
    rel_con = (0.1 - 0.05) / (ALEXNET_ERRORS["contrast"] - ALEXNET_CLEAN_ERROR)
    assert s.relative_mce == pytest.approx((rel_fog + rel_con) / 2)
    # AlexNet itself scores mCE = 100% and relative mCE = 100%
    alex = mce({k: [v] * 5 for k, v in ALEXNET_ERRORS.items()}, ALEXNET_CLEAN_ERROR, baseline=ALEXNET_ERRORS)
    assert alex.mce == pytest.approx(1.0) and alex.relative_mce == pytest.approx(1.0)


def test_errors():
    with pytest.raises(InputError):
        mce({}, 0.1)
    with pytest.raises(InputError, match="five"):
        mce({"fog": [0.1, 0.2]}, 0.1, baseline=ALEXNET_ERRORS)
    with pytest.raises(InputError, match="baseline"):
        mce({"spatter": [0.1] * 5}, 0.1, baseline=ALEXNET_ERRORS)
    # baselines the normalised forms cannot divide by (a ZeroDivisionError traceback, or a negative mCE, before)
    with pytest.raises(InputError, match="must be above the baseline's clean error"):
        mce({"fog": [0.1] * 5}, 0.1, baseline={"fog": 0.4}, baseline_clean_error=0.4)
    with pytest.raises(InputError, match=r"error of 'fog' must be a number in \(0, 1\]"):
        mce({"fog": [0.1] * 5}, 0.1, baseline={"fog": -0.2})
