"""Best-of-n on a language model from one cached pool: sampling, caching, the curve and its peak."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlsafety.core import InputError, LanguageModel
from mlsafety.metrics import Estimate
from mlsafety.monitoring.proxy_gaming import lm as pg
from tests.support.text import tiny_llama

PROMPTS = ["the movie was", "this book is", "the food was"]


@pytest.fixture(scope="module")
def tiny_lm() -> LanguageModel:
    return LanguageModel(tiny_llama(0))


def test_sampling_is_seeded_per_prompt_and_cached(
    tiny_lm: LanguageModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = pg.sample_continuations(tiny_lm, PROMPTS, 6, 4, 1.0, seed=1, batch_size=4)
    b = pg.sample_continuations(tiny_lm, PROMPTS[1:], 6, 4, 1.0, seed=1, batch_size=4)
    assert a.shape == (3, 6) and a.continuations[1:] == b.continuations  # a prompt's samples ignore the others
    assert len(set(a.continuations[0])) > 1  # sampled, not greedy
    assert a.texts()[7] == PROMPTS[1] + a.continuations[1][1]
    cache = tmp_path / "samples.json"
    first = pg.sample_continuations(tiny_lm, PROMPTS[:2], 6, 4, 1.0, seed=1, batch_size=4, cache=cache)
    assert first.continuations == a.continuations[:2]

    def refuse(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("sampled again although the cache holds these prompts")

    monkeypatch.setattr(tiny_lm, "generate", refuse)
    again = pg.sample_continuations(tiny_lm, PROMPTS[:2], 6, 4, 1.0, seed=1, batch_size=4, cache=cache)
    assert again.continuations == first.continuations and pg.Samples.load(cache).matches(PROMPTS[:2], again.settings)
    monkeypatch.undo()
    more = pg.sample_continuations(tiny_lm, PROMPTS, 6, 4, 1.0, seed=1, batch_size=4, cache=cache)  # resumes
    assert more.continuations == a.continuations


def test_sampling_refuses_bad_input(tiny_lm: LanguageModel) -> None:
    with pytest.raises(InputError, match="prompt set is empty"):
        pg.sample_continuations(tiny_lm, [], 4)
    with pytest.raises(InputError, match="at least 1"):
        pg.sample_continuations(tiny_lm, PROMPTS, 0)
    with pytest.raises(InputError, match="temperature"):
        pg.sample_continuations(tiny_lm, PROMPTS, 4, temperature=0.0)


def _planted(p: int = 40, m: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Proxy x ~ N(0, 1); gold = x - 0.35 x^2 (rises, then falls as best-of-n pushes x up)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p, m, generator=g, dtype=torch.float64)
    return x, x - 0.35 * x * x


def test_curve_known_answers() -> None:
    proxy, gold = _planted()
    curve = pg.overoptimization_curve(proxy, gold, (1, 2, 4, 8, 16, 32, 64), n_boot=200)
    zp, zg = pg.standardise_pool(proxy), pg.standardise_pool(gold)
    # n = 1 is the base policy: the pool mean of the standardised rewards, 0
    assert abs(curve.gold[0].value) < 1e-9 and abs(curve.proxy[0].value) < 1e-9
    # n = m picks each prompt's proxy-argmax: its gold, averaged over prompts
    best = zg.gather(1, zp.argmax(1, keepdim=True)).mean()
    torch.testing.assert_close(torch.tensor(curve.gold[-1].value, dtype=torch.float64), best)
    torch.testing.assert_close(
        curve.kl,
        torch.log(torch.tensor(curve.ns, dtype=torch.float64))
        - (torch.tensor(curve.ns) - 1.0) / torch.tensor(curve.ns),
    )
    proxies = [e.value for e in curve.proxy]
    assert proxies == sorted(proxies)  # the optimised reward only rises
    assert all(e.ci_low <= e.value <= e.ci_high for e in curve.gold)
    peak = pg.mean_curve_peak(curve, n_boot=200)
    # E[gold] of best-of-n for x - 0.35 x^2 peaks where E[max] ~ 1/(2 * 0.35) ~ 1.4: n ~ 4-8
    assert peak.interior and peak.n in (4, 8, 16)
    assert peak.d.ci_low <= peak.d.value <= peak.d.ci_high


def test_curve_without_overoptimisation_keeps_rising() -> None:
    proxy, _ = _planted()
    curve = pg.overoptimization_curve(proxy, 2 * proxy + 1, n_boot=100)  # gold = an increasing map of the proxy
    assert curve.ns == (1, 2, 4, 8, 16, 32, 64)
    torch.testing.assert_close(curve.per_prompt_gold, curve.per_prompt_proxy)
    assert not pg.mean_curve_peak(curve, n_boot=100).interior


def test_curve_refuses_bad_input() -> None:
    proxy, gold = _planted(4, 8)
    with pytest.raises(InputError, match=r"same shape|both be"):
        pg.overoptimization_curve(proxy, gold[:, :4])
    with pytest.raises(InputError, match="every n"):
        pg.overoptimization_curve(proxy, gold, (0, 2))
    with pytest.raises(InputError, match="every n"):
        pg.overoptimization_curve(proxy, gold, (16,))
    with pytest.raises(InputError, match="at least 1"):
        pg.powers_of_two(0)
    with pytest.raises(InputError, match="same score"):
        pg.overoptimization_curve(torch.ones(4, 8), gold)
    assert pg.powers_of_two(48) == (1, 2, 4, 8, 16, 32, 48)


def test_samples_file_round_trip_and_refusal(tmp_path: Path) -> None:
    s = pg.Samples(["a", "b"], [["x", "y"], ["z", "w"]], pg.SampleSettings("m", 2, 3, 1.0, 0, 4), 10.0)
    back = pg.Samples.load(s.save(tmp_path / "s.json"))
    assert back == s
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="delete it to resample"):
        pg.Samples.load(tmp_path / "bad.json")


def test_monitor_fires_on_gaming_and_not_without_it() -> None:
    proxy, gold = _planted()
    noise = torch.randn(proxy.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    curve = pg.overoptimization_curve(proxy, gold, n_boot=100)
    peak = pg.mean_curve_peak(curve, n_boot=100)
    alarm = pg.monitor_alarm(curve, proxy, {"held-out": gold + 0.3 * noise})  # a noisy copy of the gold
    assert alarm.ns == (2, 4, 8, 16, 32)  # n <= m / 2: the pool is split in halves
    assert alarm.n is not None and alarm.n < peak.n and peak.interior  # fires before the gold falls
    assert peak.falls and peak.fall is not None and peak.fall.ci_low > 0  # a real fall, not a wobble
    # the fall is gold at the peak minus gold at the largest n, averaged over prompts
    expected = float(curve.per_prompt_gold[:, peak.index].mean() - curve.per_prompt_gold[:, -1].mean())
    assert abs(peak.fall.value - expected) < 1e-12
    # a gold of unrelated noise: its mean curve mostly peaks inside, but that wobble is rarely a real fall
    flats = []
    for s in range(40):
        g = torch.randn(proxy.shape, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)
        flats.append(pg.mean_curve_peak(pg.overoptimization_curve(proxy, g, n_boot=10), n_boot=200))
    assert sum(f.interior for f in flats) >= 20 and sum(f.falls for f in flats) <= 4  # measured 28 and 1
    assert alarm.d is not None and abs(alarm.d - float(pg.bon_kl(alarm.n)[0]) ** 0.5) < 1e-12
    rising = pg.monitor_alarm(curve, proxy, {"held-out": proxy + noise})  # trusted rises with the proxy: no gaming
    assert rising.n is None
    summary = pg.curve_summary(curve, proxy, {"held-out": gold + 0.3 * noise}, n_boot=100)
    assert summary["peak"]["n"] == peak.n and summary["monitor"]["outcome"] == "hit"
    assert len(summary["monitor"]["shortfall"]) == len(summary["monitor"]["p_values"]) == 5
    assert summary["fit"]["alpha"][1] <= summary["fit"]["alpha"][0] <= summary["fit"]["alpha"][2]
    assert summary["fit"]["beta"][0] > 0  # the planted gold turns down
    assert "monitor" not in pg.curve_summary(curve, proxy, None, n_boot=20)  # only the gold: no monitor


def test_alarm_outcome_against_the_peak() -> None:
    d = Estimate(1.0, 0.5, 1.5, 10)
    interior, edge = pg.Peak(3, 8, d, d, True), pg.Peak(5, 32, d, d, False)
    assert [pg.alarm_outcome(n, interior) for n in (4, 8, 16, None)] == ["hit", "late", "late", "miss"]
    assert [pg.alarm_outcome(n, edge) for n in (4, None)] == ["false_alarm", "quiet"]


def test_fit_does_not_need_n_equal_1_in_the_curve() -> None:
    # d (alpha - beta d) is 0 at d = 0, so the n = 1 point adds nothing to the least squares, and the pooled
    # standardisation puts the base policy's mean gold at 0: leaving n = 1 out must not move alpha and beta.
    # Subtracting the gold at the smallest n (n = 2) instead gave alpha 0.46 for 1.42 here
    proxy, gold = _planted()
    ns = (1, 2, 4, 8, 16, 32, 64)
    full = pg.curve_summary(pg.overoptimization_curve(proxy, gold, ns, n_boot=20), proxy, None, n_boot=20)
    cut = pg.curve_summary(pg.overoptimization_curve(proxy, gold, ns[1:], n_boot=20), proxy, None, n_boot=20)
    assert cut["fit"]["alpha"][0] == pytest.approx(full["fit"]["alpha"][0], abs=1e-12)
    assert cut["fit"]["beta"][0] == pytest.approx(full["fit"]["beta"][0], abs=1e-12)
    assert full["fit"]["alpha"][0] == pytest.approx(1.416, abs=1e-3)


def test_curve_refuses_unsorted_n() -> None:
    # the peak's fall is read against the last n as the largest: with ns (1, 64, 4, 2) a peak at n = 4 fell
    # "to" n = 2 (0.24 instead of 0.14 against n = 64) and counted as interior
    proxy, gold = _planted()
    for ns in ((1, 64, 4, 2), (1, 2, 2, 4)):
        with pytest.raises(InputError, match="increasing"):
            pg.overoptimization_curve(proxy, gold, ns, n_boot=10)
