"""Known answers on linear models, IG completeness, and agreement with Captum on the embedded model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlsafety.core import generator
from mlsafety.monitoring import transparency as tr
from mlsafety.monitoring.transparency.integrated_gradients import METHODS


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, 16, generator=generator(0, "w")))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def linear() -> Linear:
    return Linear().eval()


@pytest.fixture
def x4() -> torch.Tensor:
    return torch.rand(4, 1, 4, 4, generator=generator(0, "x4"))


def test_gradient_methods_on_a_linear_model(linear: Linear, x4: torch.Tensor) -> None:
    w = linear.fc.weight[1].detach().view(1, 1, 4, 4)
    assert torch.allclose(tr.attribute("saliency", linear, x4, 1, abs=False), w.expand_as(x4))
    assert torch.allclose(tr.attribute("saliency", linear, x4, 1), w.abs().expand_as(x4))
    assert torch.allclose(tr.attribute("input-x-gradient", linear, x4, 1), x4 * w)
    # The gradient of a linear model does not depend on the noise: SmoothGrad = w, squared = w^2, var = 0.
    assert torch.allclose(tr.attribute("smoothgrad", linear, x4, 1), w.expand_as(x4), atol=1e-6)
    assert torch.allclose(tr.attribute("smoothgrad-sq", linear, x4, 1), (w * w).expand_as(x4), atol=1e-6)
    assert tr.attribute("vargrad", linear, x4, 1).abs().max() < 1e-5
    for method in METHODS:  # every quadrature is exact for a constant gradient
        ig = tr.attribute("integrated-gradients", linear, x4, 1, method=method, steps=7, baseline=0.25)
        assert torch.allclose(ig, (x4 - 0.25) * w, atol=1e-5)


def test_occlusion_matches_a_brute_force_loop(linear: Linear, x4: torch.Tensor) -> None:
    out = tr.attribute("occlusion", linear, x4, 2, window=2, stride=1)
    expected = torch.zeros_like(x4)
    count = torch.zeros_like(x4)
    with torch.no_grad():
        full = linear(x4)[:, 2]
        for top in range(3):
            for left in range(3):
                occluded = x4.clone()
                occluded[..., top : top + 2, left : left + 2] = 0
                drop = (full - linear(occluded)[:, 2]).view(-1, 1, 1, 1)
                expected[..., top : top + 2, left : left + 2] += drop
                count[..., top : top + 2, left : left + 2] += 1
    assert torch.allclose(out, expected / count, atol=1e-5)


def test_occlusion_on_colour_with_a_stride_that_leaves_an_edge_and_a_grey_baseline() -> None:
    """Every channel occluded at once; a stride of 2 over width 6 with window 3 adds the last column position
    (3) so the edge is covered; each pixel averages the drops of the patches covering it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 6, 3)).eval()
    x = torch.rand(2, 3, 5, 6, generator=generator(0, "occ-colour"))
    target = torch.tensor([0, 2])
    out = tr.attribute("occlusion", model, x, target, window=3, stride=2, baseline=0.5, batch_size=5)
    expected, count = torch.zeros_like(x), torch.zeros_like(x)
    with torch.no_grad():
        full = model(x).gather(1, target[:, None])[:, 0]
        for top in (0, 2):
            for left in (0, 2, 3):
                occluded = x.clone()
                occluded[..., top : top + 3, left : left + 3] = 0.5
                drop = (full - model(occluded).gather(1, target[:, None])[:, 0]).view(-1, 1, 1, 1)
                expected[..., top : top + 3, left : left + 3] += drop
                count[..., top : top + 3, left : left + 3] += 1
    assert bool((count > 0).all())
    torch.testing.assert_close(out, expected / count, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_integrated_gradients_completeness_within_the_reported_delta(method: str, digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_test.x[:6], digits_test.y[:6]
    ig = tr.IntegratedGradients(method=method, steps=50, batch_size=37)  # batches that split inputs
    attr, delta = ig.attribute_with_delta(digits_model, x, y)
    with torch.no_grad():
        gap = (
            digits_model(x).gather(1, y[:, None])[:, 0] - digits_model(torch.zeros_like(x)).gather(1, y[:, None])[:, 0]
        )
    assert torch.allclose(attr.flatten(1).sum(dim=1) - gap, delta, atol=1e-4)
    # More steps make the quadrature better: the delta shrinks.
    _, fine = tr.IntegratedGradients(method=method, steps=400).attribute_with_delta(digits_model, x, y)
    assert fine.abs().mean() < delta.abs().mean() or delta.abs().max() < 1e-3
    assert fine.abs().max() < 0.05 * gap.abs().max()


def test_quadrature_weights_integrate_polynomials() -> None:
    for method in METHODS:
        a, w = tr.quadrature(method, 64)
        assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-9)
        assert abs(float((w * a * a).sum()) - 1 / 3) < 0.02
    a, w = tr.quadrature("gausslegendre", 5)
    assert abs(float((w * a**9).sum()) - 0.1) < 1e-12  # exact up to degree 2n - 1


@pytest.mark.parametrize("steps", [2, 3, 50])
def test_trapezoid_is_the_textbook_rule_not_captums(steps: int) -> None:
    a, w = tr.quadrature("riemann-trapezoid", steps)
    h = 1 / (steps - 1)
    want = torch.full((steps,), h, dtype=torch.float64)
    want[0] = want[-1] = h / 2
    torch.testing.assert_close(w, want, rtol=1e-15, atol=0)
    torch.testing.assert_close(a, torch.linspace(0, 1, steps, dtype=torch.float64), rtol=0, atol=1e-15)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-14)  # Captum's weights sum to (steps - 1) / steps
    assert math.isclose(float((w * a).sum()), 0.5, rel_tol=1e-14)  # exact for a linear integrand


captum = pytest.importorskip("captum.attr")
# Captum warns when it switches on requires_grad for the inputs it is given; that is its documented behaviour.
CAPTUM_WARNING = "ignore:Input Tensor.*did not already require gradients:UserWarning"


@pytest.mark.filterwarnings(CAPTUM_WARNING)
@pytest.mark.parametrize("method", METHODS)
def test_integrated_gradients_agrees_with_captum(method: str, digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_test.x[:8], digits_test.y[:8]
    ours = tr.attribute("integrated-gradients", digits_model, x, y, method=method)
    name = {"gausslegendre": "gausslegendre"}.get(method, method.replace("-", "_"))
    theirs = captum.IntegratedGradients(digits_model).attribute(x, target=y, n_steps=50, method=name)
    if method == "riemann-trapezoid":
        # Captum's trapezoid weights are 1/n with halved ends: they sum to (n-1)/n, not 1. Ours are the
        # textbook rule (1/(n-1), halved ends), i.e. Captum's times n/(n-1).
        theirs = theirs * 50 / 49
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.filterwarnings(CAPTUM_WARNING)
def test_saliency_and_occlusion_agree_with_captum(digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_test.x[:8], digits_test.y[:8]
    assert torch.allclose(
        tr.attribute("saliency", digits_model, x, y), captum.Saliency(digits_model).attribute(x, target=y)
    )
    theirs = captum.Occlusion(digits_model).attribute(x, sliding_window_shapes=(1, 2, 2), strides=1, target=y)
    assert torch.allclose(tr.attribute("occlusion", digits_model, x, y), theirs, atol=1e-5)
    theirs = captum.InputXGradient(digits_model).attribute(x, target=y)
    assert torch.allclose(tr.attribute("input-x-gradient", digits_model, x, y), theirs, atol=1e-6)


class Recorder(nn.Module):
    """A linear model that keeps every input it is run on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("name", ["smoothgrad", "smoothgrad-sq", "vargrad"])
def test_noise_is_a_share_of_each_inputs_value_range(name: str) -> None:
    """Smilkov et al.'s noise level is sigma / (x_max - x_min) of the input: 0.15 of a range of 4 is 0.6, of a
    range of 0.2 it is 0.03, whatever the input's offset."""
    g = generator(0, "ranges")
    wide = 2 + 4 * torch.rand(1, 1, 4, 4, generator=g)  # values in [2, 6]
    narrow = 0.4 + 0.2 * torch.rand(1, 1, 4, 4, generator=g)
    x = torch.cat([wide, narrow])
    model = Recorder().eval()
    tr.attribute(name, model, x, 0, n_samples=400, stdev=0.15)
    noisy = torch.cat(model.seen).view(2, 400, 16)  # copies are grouped by input
    noise_sd = (noisy - x.view(2, 1, 16)).std(dim=(1, 2))
    want = 0.15 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    torch.testing.assert_close(noise_sd, want, rtol=0.05, atol=0)


class Quadratic(nn.Module):
    """logit_c = sum_i a_ci x_i^2 / 2, so d logit_c / dx = a_c * x; keeps every input it is run on."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(3, 16, generator=generator(0, "quad")))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return 0.5 * (x.flatten(1) ** 2) @ self.a.T


def test_noisy_gradient_reductions_by_hand(x4: torch.Tensor) -> None:
    """Mean, mean square and (population) variance of the gradients a_c * (x + noise) at the copies actually run."""
    grads = {}
    for name in ("smoothgrad", "smoothgrad-sq", "vargrad"):
        model = Quadratic().eval()
        out = tr.attribute(name, model, x4, 2, n_samples=9, batch_size=5)  # batches that split inputs
        noisy = torch.cat(model.seen).view(4, 9, 1, 4, 4)
        grads[name] = (out, model.a[2].detach().view(1, 1, 4, 4) * noisy)
    out, g = grads["smoothgrad"]
    torch.testing.assert_close(out, g.mean(1))
    out, g = grads["smoothgrad-sq"]
    torch.testing.assert_close(out, (g * g).mean(1))
    out, g = grads["vargrad"]
    torch.testing.assert_close(out, g.var(1, unbiased=False), atol=1e-6, rtol=1e-4)
