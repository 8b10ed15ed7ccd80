"""Conformance tests over every registered OOD detector."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from mlsafety.core import NotFittedError
from mlsafety.metrics import auroc
from mlsafety.monitoring import ood

ALL = ood.available()


def _snapshot(model: nn.Module) -> tuple[list[bool], list[bool], dict[str, torch.Tensor], int]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], state, hooks


def _same(a, b) -> bool:  # type: ignore[no-untyped-def]
    return a[0] == b[0] and a[1] == b[1] and a[3] == b[3] and all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def test_registry_has_the_issue_detectors() -> None:
    wanted = {
        "msp", "max-logit", "energy", "entropy", "gen", "kl-matching", "temperature-msp", "odin", "mahalanobis",
        "rmd", "knn", "vim", "residual", "she", "nnguide", "fdbd", "react", "ash", "dice", "scale", "gradnorm",
        "mc-dropout", "deep-ensemble",
    }  # fmt: skip
    wanted |= {"adascale-a", "adascale-l", "weiper", "nci", "gmm", "openmax", "relation", "vra"}  # issue 19
    wanted |= {"nac", "gram", "mds-ensemble", "mahalanobis-pre", "rankfeat"}  # issue 19, intermediate layers
    assert wanted <= set(ALL)
    for name in ALL:
        cls = ood.DETECTORS.get(name)
        assert cls.name == name
        assert cls.needs and cls.needs <= ood.KNOWN_NEEDS


@pytest.mark.parametrize("name", ALL)
def test_fit_takes_in_distribution_data_only(name: str) -> None:
    params = list(inspect.signature(ood.DETECTORS.get(name).fit).parameters)
    assert params[:3] == ["self", "model", "data"]
    assert not any("ood" in p or "out" in p for p in params)


@pytest.mark.parametrize("name", ALL)
def test_scores_shape_finite_deterministic_and_model_restored(name: str, small_net, small_data, small_test) -> None:
    small_net.train()  # a model left in train mode must come back in train mode
    small_net.hidden.weight.requires_grad_(False)
    before = _snapshot(small_net)
    x_before = small_test.clone()
    det = ood.create(name).fit(small_net, small_data)
    s1 = det.score(small_net, small_test)
    s2 = ood.create(name).fit(small_net, small_data).score(small_net, small_test)
    assert s1.shape == (small_test.shape[0],)
    assert s1.dtype == torch.float32
    assert torch.isfinite(s1).all()
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    assert _same(before, _snapshot(small_net))
    assert torch.equal(small_test, x_before)


@pytest.mark.parametrize("name", ALL)
def test_not_fitted_error(name: str, small_net, small_test) -> None:
    det = ood.create(name)
    if det.requires_fit:
        with pytest.raises(NotFittedError, match="fit"):
            det.score(small_net, small_test)
    else:
        assert det.score(small_net, small_test).shape == (small_test.shape[0],)


@pytest.mark.parametrize("name", ALL)
def test_model_restored_after_an_exception(name: str, small_net, small_data) -> None:
    det = ood.create(name).fit(small_net, small_data)
    before = _snapshot(small_net)
    with pytest.raises(Exception):  # noqa: B017 (any error: the model must be restored whatever it is)
        det.score(small_net, torch.rand(4, 1, 5, 5))  # wrong shape for the net
    assert _same(before, _snapshot(small_net))


def test_shared_pass_matches_single_detectors(small_net, small_data, small_test) -> None:
    dets = [ood.create(n) for n in ALL]
    ood.fit_detectors(dets, small_net, small_data)
    together = ood.score_detectors(dets, small_net, small_test)
    for det in dets:
        alone = ood.create(det.name).fit(small_net, small_data).score(small_net, small_test)
        torch.testing.assert_close(together[det.name], alone, rtol=1e-5, atol=1e-6)


def test_shared_pass_makes_one_forward_pass(small_net, small_data, small_test) -> None:
    shared = [ood.create(n) for n in ALL if ood.DETECTORS.get(n).needs <= ood.SHARED_NEEDS]
    calls = []
    handle = small_net.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        ood.fit_detectors(shared, small_net, small_data)
        assert sum(calls) == len(small_data)
        calls.clear()
        ood.score_detectors(shared, small_net, small_test)
        assert sum(calls) == small_test.shape[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ALL)
def test_separates_digits_from_noise(name: str, digits_fit, digits_model, digits_test_x, noise_x) -> None:
    det = ood.create(name).fit(digits_model, digits_fit)
    a = float(auroc(det.score(digits_model, digits_test_x), det.score(digits_model, noise_x)))
    assert a > 0.6, f"{name}: AUROC {a:.3f} against noise"


@pytest.fixture(scope="module")
def digits_model() -> nn.Module:
    from mlsafety import zoo

    return zoo.load_model("digits-cnn")


@pytest.fixture(scope="module")
def digits_fit():  # type: ignore[no-untyped-def]
    from mlsafety import zoo

    return zoo.load_dataset("digits", "train")


@pytest.fixture(scope="module")
def digits_test_x() -> torch.Tensor:
    from mlsafety import zoo

    return zoo.load_dataset("digits", "test").x[:200]


@pytest.fixture(scope="module")
def noise_x() -> torch.Tensor:
    from mlsafety import zoo

    return zoo.load_dataset("noise").x[::3]


@pytest.mark.parametrize("name", ALL)
def test_fit_reads_a_dataloader_and_a_torch_dataset_like_an_array_dataset(name: str, small_net, small_data, small_test):
    from torch.utils.data import DataLoader, TensorDataset

    want = ood.create(name).fit(small_net, small_data).score(small_net, small_test)
    pairs = TensorDataset(small_data.x, small_data.y)
    for form in (pairs, DataLoader(pairs, batch_size=16)):
        got = ood.create(name).fit(small_net, form).score(small_net, small_test)
        torch.testing.assert_close(got, want)  # a loader's own batches may round differently


def test_fit_refuses_data_it_cannot_read(small_net) -> None:
    from mlsafety.core import InputError

    with pytest.raises(InputError, match="data: cannot read data of type str"):
        ood.create("mahalanobis").fit(small_net, "train.npz")
