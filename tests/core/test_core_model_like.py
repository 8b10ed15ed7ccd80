"""``ModelLike``: the one alias for "a plain nn.Module or a Classifier"."""

from __future__ import annotations

from torch import nn

from mlsafety.core import Classifier, ModelLike, as_classifier


def test_model_like_is_a_module_or_a_classifier() -> None:
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    clf = Classifier(module)
    assert isinstance(module, ModelLike)
    assert isinstance(clf, ModelLike)
    assert not isinstance(object(), ModelLike)
    assert as_classifier(clf) is clf
    assert as_classifier(module).module is module
