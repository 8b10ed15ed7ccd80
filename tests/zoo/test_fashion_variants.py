"""The ``fashion-cnn-pixmix`` and ``fashion-cnn-at`` zoo variants: their recipes run what they say,
and the shipped weights keep the promises of their descriptions."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

import mlsafety.robustness  # noqa: F401  (registers the variants' recipes)
from mlsafety import zoo
from mlsafety.core import generator, training_recipe
from mlsafety.metrics import clopper_pearson
from mlsafety.robustness import training
from mlsafety.robustness.attacks import PGD

installed = pytest.mark.skipif(
    not all((zoo.fashion_mnist_dir() / n).is_file() for n in zoo.FASHION_MNIST_FILES),
    reason="Debian's dataset-fashion-mnist is not installed (make debs)",
)
VARIANTS = ("fashion-cnn-pixmix", "fashion-cnn-at")
pixmix_module = sys.modules["mlsafety.robustness.augment.pixmix"]  # the package re-exports a function of that name


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_variants_are_registered_with_recipes_owned_by_robustness() -> None:
    for name in VARIANTS:
        info = zoo.model_info(name)
        assert info.dataset == "fashion-mnist" and info.threads == 1 and info.build is zoo.FashionCNN
        assert info.trained_by == "mlsafety.robustness" and callable(training_recipe(info.recipe or ""))


@installed
def test_the_pixmix_recipe_trains_fashion_cnn_on_pixmix_images(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    real = pixmix_module.pixmix

    def spy(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        out = real(x, *args, **kwargs)
        seen.append(tuple(x.shape))
        assert out.shape == x.shape and not torch.equal(out, x)  # the batch is mixed, not passed through
        return out

    monkeypatch.setattr(pixmix_module, "pixmix", spy)
    model = training_recipe("fashion-cnn-pixmix")(seed=0, epochs=1, n_train=256)
    assert isinstance(model, zoo.FashionCNN) and not model.training
    assert seen == [(128, 1, 28, 28)] * 2  # every batch of the one epoch, and only those
    assert not _same_weights(model, zoo.load_model("fashion-cnn"))  # fine-tuned from the shipped fashion-cnn


@installed
def test_the_at_recipe_trains_on_fgsm_rs_examples_at_eps_01(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = training.fgsm_rs

    def spy(model, x, y, eps, g, step_size=None):  # type: ignore[no-untyped-def]
        calls.append(eps)
        return real(model, x, y, eps, g, step_size)

    monkeypatch.setattr(training, "fgsm_rs", spy)
    history: list[tuple[int, float]] = []
    model = training.train_fashion_cnn_at(seed=0, epochs=1, n_train=256, history=history)
    assert isinstance(model, zoo.FashionCNN) and not model.training
    assert calls == [0.1, 0.1]  # two batches of 128
    assert [e for e, _ in history] == [1] and 0 <= history[0][1] <= 1  # the guard checked the one epoch


def _described(name: str, what: str) -> float:
    found = re.search(rf"{what} (0\.\d+) \[", zoo.model_info(name).description)
    assert found, (name, what, zoo.model_info(name).description)
    return float(found.group(1))


@installed
@pytest.mark.parametrize("name", VARIANTS)
def test_shipped_variant_accuracy_is_as_described(name: str) -> None:
    model = zoo.load_model(name)
    test = zoo.load_dataset("fashion-mnist", "test")
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb, _ in test.batches(2000)])
    correct = int((pred == test.y).sum())
    assert correct / len(test) == pytest.approx(_described(name, "test accuracy"), abs=0.002)
    low, high = clopper_pearson(correct, len(test))
    assert high - low < 0.02
    assert zoo.weights_path(name).stat().st_size < 2_000_000


@installed
def test_shipped_at_model_is_robust_where_fashion_cnn_is_not() -> None:
    test = zoo.load_dataset("fashion-mnist", "test").subset(torch.arange(200))
    attack = PGD(eps=0.1, steps=10)
    robust = {}
    for name in ("fashion-cnn", "fashion-cnn-at"):
        model = zoo.load_model(name)
        x_adv = attack(model, test.x, test.y, generator=generator(0, "test-fashion-at"))
        with torch.inference_mode():
            robust[name] = float((model(x_adv).argmax(1) == test.y).float().mean())
    assert robust["fashion-cnn-at"] > robust["fashion-cnn"] + 0.4, robust
