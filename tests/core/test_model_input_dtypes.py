"""Inputs the wrapped model cannot take directly: a clear line instead of PyTorch's raw error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, InputError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 4))


def test_float64_inputs_into_a_float32_model_name_the_conversion() -> None:
    clf = Classifier(_model())
    x = torch.from_numpy(np.zeros((2, 1, 5, 5)))  # numpy's default: float64
    with pytest.raises(InputError, match=r"inputs are torch\.float64 but the model's weights are torch\.float32"):
        clf.logits(x)
    with pytest.raises(InputError, match=r"x\.to\(torch\.float32\)"):
        clf.features_and_logits(x)  # the first pass traces the head through the same call


def test_matching_dtypes_run_and_a_float64_model_takes_float64() -> None:
    model = _model()
    x = torch.rand(2, 1, 5, 5)
    assert Classifier(model).logits(x).dtype == torch.float32
    assert Classifier(model.double()).logits(x.double()).dtype == torch.float64


def test_other_runtime_errors_are_not_reworded() -> None:
    clf = Classifier(_model())
    with pytest.raises(RuntimeError) as info:  # wrong channel count: PyTorch's own message stays
        clf.logits(torch.rand(2, 3, 5, 5))
    assert not isinstance(info.value, InputError)


def test_lazy_layers_not_yet_built_are_refused_with_the_fix() -> None:
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(InputError, match="run one forward pass on a sample batch before wrapping"):
        Classifier(model)
    model(torch.rand(1, 4))  # materialised: accepted
    assert Classifier(model).logits(torch.rand(2, 4)).shape == (2, 3)
