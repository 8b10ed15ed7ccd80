"""Device agnosticism: detectors, calibration and selective metrics give the CPU's numbers on CUDA."""

from __future__ import annotations

import pytest
import torch

from mlsafety.monitoring import calibration as cal
from mlsafety.monitoring import ood
from mlsafety.monitoring import selective as sel

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", [n for n in ood.available() if n != "deep-ensemble"])
def test_detector_on_cuda_matches_cpu(name: str, small_net, small_data, small_test) -> None:
    import copy

    cpu = ood.create(name).fit(small_net, small_data).score(small_net, small_test)
    net = copy.deepcopy(small_net).cuda()
    det = ood.create(name).fit(net, small_data)  # inputs on the CPU move to the model's device
    got = det.score(net, small_test.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), cpu, rtol=1e-3, atol=1e-4)  # MC dropout too: its masks are drawn on the CPU


def test_calibration_and_selective_on_cuda() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 4, generator=g)
    labels = torch.randint(0, 4, (200,), generator=g)
    probs = logits.softmax(1)
    assert cal.ece(probs.cuda(), labels.cuda()) == pytest.approx(cal.ece(probs, labels), abs=1e-9)
    t_cpu = cal.TemperatureScaler().fit(logits, labels).temperature_
    assert cal.TemperatureScaler().fit(logits.cuda(), labels.cuda()).temperature_ == pytest.approx(t_cpu, rel=1e-6)
    conf, ok = probs.max(1).values, probs.argmax(1) == labels
    assert float(sel.aurc(conf.cuda(), ok.cuda())) == pytest.approx(float(sel.aurc(conf, ok)))
