"""Sanity checks (Adebayo et al. 2018): similarity measures, verdicts, and the model left unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlsafety.core import ArrayDataset, Classifier, InputError, generator
from mlsafety.monitoring import transparency as tr
from mlsafety.monitoring.transparency.base import Attribution
from tests.support.devices import refuse_global_reseeding


class InputOnly(Attribution):
    """An 'explanation' that ignores the model (an edge detector would do the same): it must fail."""

    name = "input-only"

    def __init__(self) -> None:
        pass

    def _attribute(self, clf: Classifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.arange(x[0].numel(), dtype=x.dtype, device=x.device).view(x.shape[1:])


def test_spearman_and_ssim_known_answers() -> None:
    a = torch.rand(3, 1, 8, 8, generator=generator(0, "a"))
    assert torch.allclose(tr.spearman(a, a * 2 + 1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(tr.spearman(a, -a), -torch.ones(3, dtype=torch.float64))
    assert torch.allclose(tr.ssim(a, a), torch.ones(3, dtype=torch.float64))
    b = torch.rand(3, 1, 8, 8, generator=generator(0, "b"))
    assert (tr.ssim(a, b) < 0.5).all() and (tr.spearman(a, b).abs() < 0.5).all()
    ties = torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    assert torch.allclose(tr.spearman(ties, torch.tensor([[5.0, 5.0, 6.0, 7.0]])), torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_a_model_independent_method_fails_and_the_gradient_passes(mode: str, digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    x = digits_test.x[:8]
    state = {k: v.clone() for k, v in digits_model.state_dict().items()}
    fake = tr.sanity_check(InputOnly(), digits_model, x, mode=mode)
    assert not fake.passed and fake.score > 0.99
    real = tr.sanity_check(tr.create("saliency"), digits_model, x, mode=mode)
    assert real.passed and real.score < 0.5
    layers = [n for n, _ in tr.randomizable_layers(digits_model)]
    assert real.stages == layers[::-1] and real.spearman.shape == (len(layers), 8)
    # The audited model is never changed: randomisation works on copies.
    assert all(torch.equal(v, digits_model.state_dict()[k]) for k, v in state.items())


def test_cascading_randomisation_accumulates(digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    res = tr.sanity_check(tr.create("saliency"), digits_model, digits_test.x[:8], mode="cascading")
    # After every layer is re-initialised nothing of the trained model is left: similarity near zero.
    assert abs(float(res.spearman[-1].mean())) < 0.3


def _recording_recipe(net: nn.Module, seen: list[ArrayDataset]):  # type: ignore[no-untyped-def]
    """A label-randomisation recipe that records the data it was given and returns a fresh seeded copy of net."""

    def recipe(data: ArrayDataset) -> nn.Module:
        seen.append(data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            return type(net)().eval()

    return recipe


def test_label_randomisation_uses_the_recipe(tiny_net, tiny_data) -> None:  # type: ignore[no-untyped-def]
    seen: list[ArrayDataset] = []
    recipe = _recording_recipe(tiny_net, seen)

    res = tr.sanity_check(tr.create("saliency"), tiny_net, tiny_data.x[:4], mode="label", train=recipe, data=tiny_data)
    assert res.stages == ["labels"] and res.spearman.shape == (1, 4)
    assert sorted(seen[0].y.tolist()) == sorted(tiny_data.y.tolist()) and not torch.equal(seen[0].y, tiny_data.y)
    with pytest.raises(InputError):
        tr.sanity_check(tr.create("saliency"), tiny_net, tiny_data.x[:4], mode="label")
    with pytest.raises(InputError):
        tr.sanity_check(tr.create("saliency"), tiny_net, tiny_data.x[:4], mode="shuffled")


def test_sanity_generator_decides_and_data_may_be_a_loader(tiny_net, tiny_data) -> None:  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader, TensorDataset

    from mlsafety.core import generator

    seen: list[ArrayDataset] = []
    recipe = _recording_recipe(tiny_net, seen)

    x = tiny_data.x[:4]
    for data in (tiny_data, DataLoader(TensorDataset(tiny_data.x, tiny_data.y), batch_size=7)):
        tr.sanity_check(
            tr.create("saliency"), tiny_net, x, mode="label", train=recipe, data=data, generator=generator(0, "s")
        )
    assert torch.equal(seen[0].x, seen[1].x) and torch.equal(seen[0].y, seen[1].y)
    a = tr.sanity_check(tr.create("saliency"), tiny_net, x, generator=generator(0, "a"))
    b = tr.sanity_check(tr.create("saliency"), tiny_net, x, generator=generator(0, "a"))
    c = tr.sanity_check(tr.create("saliency"), tiny_net, x, generator=generator(0, "c"))
    assert torch.equal(a.spearman, b.spearman) and not torch.equal(a.spearman, c.spearman)


def test_features_get_no_ssim_and_the_summary_stores_none() -> None:
    """SSIM is an image measure: on (N, D) features it is not computed (it used to repeat the Spearman values)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(5, 6, generator=generator(0, "features"))
    for mode in ("cascading", "independent"):
        res = tr.sanity_check(tr.create("saliency"), net, x, mode=mode)
        assert res.ssim is None and res.spearman.shape == (2, 5)
    report = tr.sanity_summary({"saliency": tr.create("saliency")}, net, x, modes=("cascading",))
    assert report.results["saliency"]["cascading"].ssim is None


def test_ssim_equals_scikit_image_with_a_uniform_window() -> None:
    skimage = pytest.importorskip("skimage.metrics")
    a = torch.rand(2, 1, 12, 12, generator=generator(0, "ssim-a"))
    b = a + 0.3 * torch.rand(2, 1, 12, 12, generator=generator(0, "ssim-b"))
    ours = tr.ssim(a, b)
    for i in range(2):
        x, y = (a[i, 0] / a[i, 0].max()).double().numpy(), (b[i, 0] / b[i, 0].max()).double().numpy()
        # population (co)variances over each 7 x 7 window, borders cropped: skimage's estimator without the
        # N / (N - 1) sample correction
        want = skimage.structural_similarity(x, y, data_range=1.0, win_size=7, use_sample_covariance=False)
        assert float(ours[i]) == pytest.approx(want, abs=1e-6)


def test_rank_correlation_with_and_without_absolute_values(tiny_net, tiny_data) -> None:  # type: ignore[no-untyped-def]
    """Adebayo et al. report both: a model with negated head weights gives input x gradient maps of the same
    magnitude and opposite sign, so the absolute rank correlation is 1 and the signed one -1."""
    negated = copy.deepcopy(tiny_net)
    with torch.no_grad():
        for p in negated.fc.parameters():
            p.neg_()
    x = tiny_data.x[:4]
    target = torch.tensor([0, 1, 2, 0])
    res = tr.sanity_check(
        tr.create("input-x-gradient"), tiny_net, x, target, mode="label", train=lambda d: negated, data=tiny_data
    )
    torch.testing.assert_close(res.spearman, torch.ones(1, 4, dtype=torch.float64))
    assert res.spearman_signed is not None
    torch.testing.assert_close(res.spearman_signed, -torch.ones(1, 4, dtype=torch.float64))
    # saliency's maps are absolute values already: both measures agree
    sal = tr.sanity_check(tr.create("saliency"), tiny_net, x, target, mode="cascading")
    assert sal.spearman_signed is not None and torch.equal(sal.spearman, sal.spearman_signed)


@pytest.mark.parametrize("threshold", [5.0, -1.5, float("nan")])
def test_a_threshold_outside_a_rank_correlation_is_refused(tiny_net, tiny_data, threshold: float) -> None:  # type: ignore[no-untyped-def]
    """Maps count as changed below the threshold: above 1 every test passed, below -1 every test failed."""
    with pytest.raises(InputError, match="rank correlation in"):
        tr.sanity_check(tr.create("saliency"), tiny_net, tiny_data.x[:4], threshold=threshold)


def test_reinitialisation_reseeds_no_generator_it_does_not_restore(tiny_net, tiny_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The re-drawn weights came from torch.manual_seed, which reseeds every GPU's generator too (never restored)."""
    want = tr.sanity_check(tr.create("saliency"), tiny_net, tiny_data.x[:4], generator=generator(0, "s"))
    refuse_global_reseeding(monkeypatch)
    got = tr.sanity_check(tr.create("saliency"), tiny_net, tiny_data.x[:4], generator=generator(0, "s"))
    assert torch.equal(got.spearman, want.spearman)
