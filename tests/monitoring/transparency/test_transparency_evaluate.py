"""transparency.evaluate: sanity-check summaries, IG completeness and class visualisations with intervals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, derive_seed, generator
from mlsafety.metrics import bootstrap_mean
from mlsafety.monitoring import transparency as tr
from tests.support.family import check_family

test_attribution_family = check_family(tr.ATTRIBUTIONS)


def test_sanity_summary_is_the_sanity_check_averaged_per_input(tiny_net: nn.Module) -> None:
    x = torch.rand(6, 1, 8, 8, generator=generator(0, "x"))
    methods = {"saliency": tr.create("saliency"), "ig": tr.create("integrated-gradients", steps=8)}
    report = tr.sanity_summary(methods, tiny_net, x, ("cascading", "independent"), 0.5,
                               seed_for=lambda m, mode: derive_seed(7, m, mode))  # fmt: skip
    assert list(report.results) == ["saliency", "ig"] and report.n_inputs == 6
    for name, method in methods.items():
        for mode in ("cascading", "independent"):
            direct = tr.sanity_check(method, tiny_net, x, mode=mode, generator=generator(0, "sanity", mode))
            s = report.results[name][mode]
            assert torch.equal(s.result.spearman, direct.spearman) and s.passed == direct.passed
            per_input = direct.spearman.mean(dim=0) if mode == "independent" else direct.spearman[-1]
            want = bootstrap_mean(per_input.float(), seed=derive_seed(7, name, mode), name=f"{name}-{mode}")
            assert s.spearman == want
    passed = [n for n, v in report.results.items() if all(s.passed for s in v.values())]
    assert report.passed_methods == passed and report.pass_share == len(passed) / 2
    assert tr.sanity_summary(methods, tiny_net, x, modes=()).pass_share is None


def test_ig_completeness_is_the_mean_absolute_gap(tiny_net: nn.Module) -> None:
    x = torch.rand(5, 1, 8, 8, generator=generator(0, "ig"))
    ig = tr.IntegratedGradients(steps=4, method="riemann-left")
    est = tr.ig_completeness(tiny_net, x, 1, ig, seed=2)
    _, delta = ig.attribute_with_delta(tiny_net, x, 1)
    assert est.value == pytest.approx(float(delta.abs().mean()))
    assert est.ci_low <= est.value <= est.ci_high
    fine = tr.ig_completeness(tiny_net, x, 1, tr.IntegratedGradients(steps=64), seed=2)
    assert fine.value < est.value  # a finer quadrature closes the gap


def test_class_visualisations_refuse_non_images(tiny_net: nn.Module) -> None:
    vis = tr.class_visualisations(tiny_net, (1, 8, 8), 2, steps=3, generator=generator(0, "vis"))
    assert vis.images.shape == (2, 1, 8, 8) and vis.confidence.shape == (2,)
    assert vis.mean_confidence.value == pytest.approx(float(vis.confidence.double().mean()))
    with pytest.raises(InputError, match="image inputs"):
        tr.class_visualisations(tiny_net, (8, 8), 2)


def test_class_visualisation_confidence_is_each_images_own_class_probability(tiny_net: nn.Module) -> None:
    vis = tr.class_visualisations(tiny_net, (1, 8, 8), 3, steps=3, generator=generator(0, "vis-conf"))
    tiny_net.eval()
    with torch.no_grad():
        probs = tiny_net(vis.images).softmax(dim=1)
    torch.testing.assert_close(vis.confidence, probs[torch.arange(3), torch.arange(3)])  # image k, class k
