"""Grokking: the Fourier measures on hand-built logits, a seconds-long run's plumbing, and the cached recipe run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.monitoring.interp.emergence import detect_emergence, leading_indicators
from mlsafety.monitoring.interp.grokking import (
    all_pairs,
    excluded_loss,
    fourier_basis,
    grokking_recipe,
    key_frequencies,
    progress_measures,
    restricted_contrast,
    restricted_loss,
)

CACHED = Path(__file__).parents[2] / "data" / "interp_grokking_run.json"


@pytest.mark.parametrize("p", [7, 13])
def test_fourier_basis_is_orthonormal(p: int) -> None:
    F = fourier_basis(p)
    assert torch.allclose(F @ F.T, torch.eye(p, dtype=torch.float64), atol=1e-12)


def _key_logits(p: int, freqs: list[int], scale: float = 4.0) -> torch.Tensor:
    ab, _ = all_pairs(p)
    s = (ab[:, 0] + ab[:, 1]).double()[:, None] - torch.arange(p, dtype=torch.float64)
    return sum(scale * torch.cos(2 * math.pi * k * s / p) for k in freqs)  # type: ignore[return-value]


def test_restricted_loss_of_a_model_made_of_key_frequencies_is_its_loss() -> None:
    p, freqs = 13, [2, 5]
    logits = _key_logits(p, freqs)
    _, y = all_pairs(p)
    full = float(torch.nn.functional.cross_entropy(logits, y))
    assert restricted_loss(logits, freqs) == pytest.approx(full, rel=1e-9)
    assert full < 0.5  # the cosines peak at c = a + b: the hand-built model is right
    train = torch.arange(0, p * p, 3)
    assert excluded_loss(logits, freqs, train) == pytest.approx(math.log(p), rel=1e-9)  # nothing left
    assert restricted_loss(logits, [3]) == pytest.approx(math.log(p), rel=1e-9)  # wrong frequency


def test_a_memoriser_has_no_key_frequency_contrast_but_a_fourier_model_does() -> None:
    p, freqs = 53, [4, 11, 17]
    _, y = all_pairs(p)
    g = torch.Generator().manual_seed(0)
    train = torch.randperm(p * p, generator=g)[: round(0.3 * p * p)]
    memoriser = torch.randn(p * p, p, generator=g, dtype=torch.float64)
    memoriser[train, y[train]] += 40.0  # a lookup table: right on the training pairs only
    # the linear restriction keeps part of any margin, in key and non-key frequencies alike ...
    assert restricted_loss(memoriser, freqs) < math.log(p) - 0.5
    # ... so only the contrast with random non-key sets says whether the key frequencies matter
    assert abs(restricted_contrast(memoriser, freqs)) < 0.1
    fourier = _key_logits(p, freqs) + torch.randn(p * p, p, generator=g, dtype=torch.float64)
    assert restricted_contrast(fourier, freqs) < -2.0


def test_key_frequencies_are_read_from_the_embedding() -> None:
    p = 13
    F = fourier_basis(p)
    g = torch.Generator().manual_seed(0)
    emb = 3 * F[3][:, None] * torch.randn(1, 16, generator=g) + 2 * F[10][:, None] * torch.randn(1, 16, generator=g)
    emb = emb + 0.01 * torch.randn(p, 16, generator=g, dtype=torch.float64)
    assert key_frequencies(emb) == [2, 5]  # row 3 is cos k=2, row 10 sin k=5


def test_a_short_run_trains_and_every_measure_is_computed() -> None:
    run = grokking_recipe(p=11, steps=60, every=20, train_fraction=0.5, d_model=32, n_heads=2, d_mlp=64)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    m = progress_measures(run)
    assert m.steps == [0, 20, 40, 60]
    assert m.train_loss[-1] < 0.8 * m.train_loss[0]
    for series in (m.test_loss, m.weight_norm, m.restricted_loss, m.excluded_loss, m.test_acc):
        assert len(series) == 4 and all(math.isfinite(v) for v in series)
    assert m.test_correct.shape == (4, int(run.test.numel()))
    assert all(before[k].equal(v) for k, v in run.model.state_dict().items())
    assert not run.model.training
    assert set(m.key_freqs) <= set(range(1, 6))


def test_bad_input_is_one_line() -> None:
    with pytest.raises(InputError, match="odd modulus"):
        fourier_basis(12)
    with pytest.raises(InputError, match=r"\(p\^2, p\)"):
        restricted_loss(torch.zeros(5, 5), [1])
    with pytest.raises(InputError, match="train_fraction"):
        grokking_recipe(p=7, steps=1, train_fraction=1.0)


def _unpack(hexes: list[str], n: int) -> torch.Tensor:
    rows = []
    for h in hexes:
        bits = bin(int(h, 16))[2:].zfill(n)
        rows.append(torch.tensor([c == "1" for c in bits]))
    return torch.stack(rows)


def test_cached_recipe_run_shows_a_delayed_jump_led_by_the_progress_measures() -> None:
    run = json.loads(CACHED.read_text())
    m = run["measures"]
    steps = m["steps"]
    outcomes = _unpack(run["test_correct_hex"], run["n_test"])
    assert outcomes.float().mean(1).sub(torch.tensor(m["test_acc"])).abs().max() < 1e-6
    e = detect_emergence(steps, outcomes, threshold=0.5)
    assert e.step is not None and e.step == run["emergence"]["step"]
    memorised = next(s for s, a in zip(steps, m["train_acc"], strict=True) if a > 0.99)
    assert memorised < e.step  # train accuracy first, test accuracy much later: grokking
    assert e.ci_low is not None and e.ci_high is not None and e.ci_high - e.ci_low <= 0.2 * steps[-1]
    leads = leading_indicators(steps, {k: m[k] for k in ("restricted_contrast", "test_loss")}, outcomes, n_boot=50)
    rows = {r.name: r for r in leads.indicators}
    assert leads.accuracy_low <= leads.accuracy_step <= leads.accuracy_high
    assert rows["restricted_contrast"].precedes  # the key frequencies' advantage forms before the accuracy moves
