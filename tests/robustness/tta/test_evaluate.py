"""Measurements: accuracy with and without adaptation under a planted shift, attack success rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.robustness.tta import (
    DIA,
    adaptation_accuracy,
    attack_success,
    create,
    draw_batches,
    malicious_count,
)
from tests.robustness.tta._support import head_bn, images
from tests.support.family import one_line_input_error


def _shifted_task() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A model whose first layer normalises the pixels with the clean data's statistics, labels from
    the model on clean data, and the same data shifted by +0.5 (a covariate shift TeBN undoes exactly)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16), nn.Linear(16, 4)).eval()
    clean = torch.rand(96, 1, 4, 4, generator=torch.Generator().manual_seed(4)) * 0.5
    net[1].running_mean.copy_(torch.full((16,), 0.25))
    net[1].running_var.copy_(torch.full((16,), 0.5**2 / 12))
    with torch.no_grad():
        y = net(clean).argmax(1)
    return net, clean, clean + 0.5, y


def test_tta_undoes_a_planted_shift() -> None:
    net, _, shifted, y = _shifted_task()
    res = adaptation_accuracy(net, create("tebn"), shifted, y, batch_size=32)
    with torch.no_grad():
        source = (net(shifted).argmax(1) == y).float().mean().item()
    assert res.source is not None and res.source.value == pytest.approx(source) and res.source.n == 96
    assert res.source.value < 0.5 and res.adapted.value > 0.85  # the shift breaks the model, TeBN mends it
    assert res.adapted.ci_low <= res.adapted.value <= res.adapted.ci_high
    assert res.method == "tebn" and res.stream and res.batch_size == 32
    expected = torch.cat([create("tebn").adapt(net, shifted[i : i + 32]).argmax(1) for i in range(0, 96, 32)])
    assert res.adapted.value == pytest.approx((expected == y).float().mean().item())


def test_adapted_only_skips_the_source_pass() -> None:
    net, _, shifted, y = _shifted_task()
    full = adaptation_accuracy(net, create("tebn"), shifted, y, batch_size=32)
    only = adaptation_accuracy(net, create("tebn"), shifted, y, batch_size=32, source=False)
    assert only.source is None and only.adapted == full.adapted


def test_a_last_batch_of_one_joins_the_one_before() -> None:
    net, _, shifted, y = _shifted_task()
    res = adaptation_accuracy(net, create("tent"), shifted[:65], y[:65], batch_size=32, stream=False)
    assert res.adapted.n == 65 and not res.stream


def test_attack_success_rows() -> None:
    net = head_bn()
    x = images(64, seed=7)
    with torch.no_grad():
        y = net(x).argmax(1)
    rows = attack_success(
        net, create("tebn"), x, y, DIA(steps=3), shares=(0.1, 0.25), batch_sizes=(8, 16), n_batches=5, groups_per_call=2
    )
    assert [(r.batch_size, r.share, r.n_malicious) for r in rows] == [
        (8, 0.1, 1),
        (8, 0.25, 2),
        (16, 0.1, 2),
        (16, 0.25, 4),
    ]
    for r in rows:
        assert r.method == "tebn" and r.objective == "targeted" and r.eps is None
        assert r.success.n == 5 and r.random_success.n == 5
        assert r.benign_error.n == 5 * (r.batch_size - r.n_malicious)
        assert r.others_kept is not None and r.others_kept.n == 5 * (r.batch_size - r.n_malicious - 1)
        for est in (r.success, r.benign_error, r.clean_error):
            assert 0 <= est.ci_low <= est.value <= est.ci_high <= 1
    again = attack_success(net, create("tebn"), x, y, DIA(steps=3), shares=(0.1,), batch_sizes=(8,), n_batches=5)
    assert again[0] == rows[0]  # seeded, and groups_per_call does not change the result
    ind = attack_success(
        net, create("tebn"), x, y, DIA(objective="indiscriminate", steps=3), shares=(0.2,), n_batches=2
    )
    assert ind[0].others_kept is None and ind[0].success == ind[0].benign_error and ind[0].batch_size == 64


def test_malicious_count_and_bad_shares() -> None:
    assert [malicious_count(s, 64) for s in (0.01, 0.05, 0.1, 0.2)] == [1, 3, 6, 13]
    for share in (0.0, 1.0, -0.1, 1.5):
        one_line_input_error(lambda share=share: malicious_count(share, 64), "(0, 1)")
    one_line_input_error(lambda: malicious_count(0.9, 2), "need at least 2")
    one_line_input_error(lambda: malicious_count(0.5, 3), "need at least 2")  # one benign input: no reference
    assert malicious_count(0.5, 4) == 2
    net = head_bn()
    x = images(8)
    y = torch.zeros(8, dtype=torch.long)
    one_line_input_error(lambda: attack_success(net, create("tebn"), x, y, DIA(), shares=(0.0,), batch_sizes=(4,)))
    one_line_input_error(lambda: attack_success(net, create("tebn"), x, y, DIA(), batch_sizes=(9,)), "batch size")
    one_line_input_error(lambda: adaptation_accuracy(net, create("tebn"), x, y, batch_size=1), "at least 2")
    one_line_input_error(lambda: adaptation_accuracy(net, create("tebn"), x, y[:3]), "labels")


def test_draw_batches_splits_each_batch() -> None:
    x = images(20, seed=3)
    y = torch.arange(20)
    d = draw_batches(x, y, 6, 2, 3, torch.Generator().manual_seed(0))
    assert d.index.shape == (3, 6) and d.groups == 3 and d.n_malicious == 2
    assert all(len(set(row.tolist())) == 6 for row in d.index)  # distinct inputs within a batch
    assert torch.equal(d.benign_index, d.index[:, :4].reshape(-1)) and torch.equal(d.y, d.benign_index)
    assert torch.equal(d.benign, x[d.benign_index]) and torch.equal(d.malicious, x[d.index[:, 4:].reshape(-1)])
    again = draw_batches(x, y, 6, 2, 3, torch.Generator().manual_seed(0))
    assert torch.equal(again.index, d.index)
    one_line_input_error(lambda: draw_batches(x, y, 3, 2, 1, torch.Generator()), "at least 2 benign")
    one_line_input_error(lambda: draw_batches(x, y, 21, 1, 1, torch.Generator()), "batch size")
