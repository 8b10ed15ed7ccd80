"""The batch-norm zoo models (``digits-cnn-bn``, ``digits-cnn-bn-at``): shipped weights, accuracy, recipes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mlsafety import zoo
from mlsafety.metrics import clopper_pearson

BN_MODELS = ("digits-cnn-bn", "digits-cnn-bn-at")


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.inference_mode():
        return int((model(x).argmax(1) == y).sum())


@pytest.mark.parametrize("name", BN_MODELS)
def test_shipped_bn_models_load_small_in_eval_mode_with_batch_norm(name):
    model = zoo.load_model(name)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and not model.training
    assert all(float(m.running_var.min()) > 0 and int(m.num_batches_tracked) > 0 for m in bns)  # trained stats
    assert zoo.weights_path(name).stat().st_size < 400_000
    assert zoo.model_info(name).dataset == "digits"


@pytest.mark.parametrize(("name", "floor"), [("digits-cnn-bn", 0.96), ("digits-cnn-bn-at", 0.94)])
def test_clean_accuracy_and_the_description_s_interval(name, floor, digits_test):
    """Loose floors that hold on any CPU, and the accuracy the listing states lies in this CPU's exact interval."""
    k = _correct(zoo.load_model(name), digits_test.x, digits_test.y)
    n = len(digits_test)
    assert k / n >= floor
    stated = float(re.search(r"test accuracy (0\.\d+)", zoo.model_info(name).description).group(1))
    lo, hi = clopper_pearson(k, n)
    assert lo <= stated <= hi


def test_adversarial_training_buys_robustness(digits_test):
    """Under PGD (Linf eps 0.1) the adversarially trained model keeps far more of its accuracy."""
    from mlsafety.robustness.attacks import PGD

    x, y = digits_test.x[:120], digits_test.y[:120]
    robust = {}
    for name in BN_MODELS:
        model = zoo.load_model(name)
        x_adv = PGD(eps=0.1, steps=10)(model, x, y, generator=torch.Generator().manual_seed(0))
        robust[name] = _correct(model, x_adv, y) / len(y)
    assert robust["digits-cnn-bn-at"] >= robust["digits-cnn-bn"] + 0.2


def test_recipes_are_registered_by_their_owners():
    import mlsafety.robustness
    from mlsafety.core import training_recipe

    assert training_recipe("digits-cnn-bn") is zoo.train_digits_cnn_bn
    assert training_recipe("digits-cnn-bn-at") is mlsafety.robustness.training.train_digits_cnn_bn_at
    assert zoo.model_info("digits-cnn-bn-at").trained_by == "mlsafety.robustness"


@pytest.mark.slow
def test_retrained_bn_model_can_stand_in_for_the_shipped_one(tmp_path, digits_test):
    """`mlsafety zoo train digits-cnn-bn` on any CPU: accuracy in the shipped model's exact interval and
    predictions agreeing on >= 98% of the test set (bit-identical weights only on the CPU kind that
    trained it; the adversarially trained model's recipe is the same loop, ~5x longer, not re-run here)."""
    from safetensors.torch import load_file

    path = zoo.train_model("digits-cnn-bn", out=tmp_path / "w.safetensors")
    ours = zoo.model_info("digits-cnn-bn").build()
    ours.load_state_dict(load_file(str(path)))
    ours.eval()
    shipped = zoo.load_model("digits-cnn-bn")
    x, y = digits_test.x, digits_test.y
    with torch.inference_mode():
        pred, pred_shipped = ours(x).argmax(1), shipped(x).argmax(1)
    lo, hi = clopper_pearson(int((pred_shipped == y).sum()), len(y))
    assert lo <= (pred == y).float().mean().item() <= hi
    assert (pred == pred_shipped).float().mean().item() >= 0.98


@pytest.mark.parametrize(("name", "cls"), [("digits-cnn", zoo.DigitsCNN), ("digits-cnn-bn", zoo.DigitsCNNBN),
                                           ("digits-cnn-bn-at", zoo.DigitsCNNBN)])  # fmt: skip
def test_the_shared_builder_keeps_the_shipped_state_dict_keys(name, cls):
    """DigitsCNN and DigitsCNNBN share one builder (batch_norm flag); the shipped weights' keys and
    shapes are exactly the architecture's, so every shipped file still loads strictly."""
    from safetensors.torch import load_file

    shipped = load_file(str(zoo.weights_path(name)))
    model = cls()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in shipped.items()}
    model.load_state_dict(shipped, strict=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (cls is zoo.DigitsCNNBN)
