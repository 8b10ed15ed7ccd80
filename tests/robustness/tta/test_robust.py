"""The defences: MedBN's median statistics and alpha-BN's mixture, by hand and against an outlier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import InputError
from mlsafety.robustness.tta import AlphaBN, MedBN, TeBN, median_statistics


def _input_bn(c: int = 16) -> nn.Module:
    """Flatten -> BatchNorm1d -> Linear: the normalisation acts on the pixels themselves."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(c), nn.Linear(c, 3)).eval()


def test_medbn_normalises_with_the_median_by_hand() -> None:
    net = _input_bn()
    x = torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    flat = x.flatten(1)
    med = flat.median(dim=0).values  # odd batch: the middle value
    mad2 = (flat - med).square().median(dim=0).values
    bn, lin = net[1], net[2]
    expected = lin((flat - med) / torch.sqrt(mad2 + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(MedBN().adapt(net, x), expected.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(med, flat.mean(dim=0))


def test_median_statistics_per_group() -> None:
    x = torch.randn(3, 5, 2, 3)
    med, var = median_statistics(x)
    torch.testing.assert_close(med[1, 0], x[1, :, 0].flatten().median())
    torch.testing.assert_close(var[2, 1], (x[2, :, 1].flatten() - med[2, 1]).square().median())


def test_an_outlier_moves_medbn_far_less_than_tebn() -> None:
    net = _input_bn()
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 0.02 + 0.49  # a tight batch
    bad = x.clone()
    bad[-1] = 1.0  # one malicious input at the edge of the box: 25 spreads away
    shift = {m: (m.adapt(net, bad)[:-1] - m.adapt(net, x)[:-1]).abs().mean() for m in (TeBN(), MedBN())}
    tebn, medbn = shift.values()
    assert medbn < 0.5 * tebn  # one order statistic against a collapsed variance


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_bn_mixes_training_and_test_statistics(alpha: float) -> None:
    net = _input_bn()
    bn = net[1]
    bn.running_mean.fill_(0.2)
    bn.running_var.fill_(0.05)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    flat = x.flatten(1)
    mean = alpha * bn.running_mean + (1 - alpha) * flat.mean(0)
    var = alpha * bn.running_var + (1 - alpha) * flat.var(0, unbiased=False)
    expected = net[2]((flat - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias).detach()
    torch.testing.assert_close(AlphaBN(alpha=alpha).adapt(net, x), expected, atol=1e-5, rtol=1e-5)
    if alpha == 0.0:
        torch.testing.assert_close(AlphaBN(alpha=0.0).adapt(net, x), TeBN().adapt(net, x))
    if alpha == 1.0:
        with torch.no_grad():
            torch.testing.assert_close(AlphaBN(alpha=1.0).adapt(net, x), net(x))


def test_alpha_bn_needs_running_statistics() -> None:
    net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16, track_running_stats=False), nn.Linear(16, 3)).eval()
    with pytest.raises(InputError, match="running statistics"):
        AlphaBN().adapt(net, torch.rand(4, 1, 4, 4))


def test_median_statistics_take_the_lower_middle_value_of_an_even_count() -> None:
    """The documented convention (the authors' torch.median): an even count gives the lower of the
    two middle values, for the centre and for the squared deviations alike."""
    x = torch.tensor([4.0, 0.0, 1.0, 10.0]).reshape(1, 4, 1)  # one group, four inputs, one channel
    med, var = median_statistics(x)
    assert med.item() == 1.0  # sorted 0, 1, 4, 10: the lower middle value, not 2.5
    assert var.item() == 1.0  # squared deviations 9, 1, 0, 81 -> sorted 0, 1, 9, 81: lower middle 1, not 5
