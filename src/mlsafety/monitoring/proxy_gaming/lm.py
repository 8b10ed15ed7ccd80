"""Best-of-n over-optimisation on a real language model, from one cached pool of samples.

Gao, Schulman & Hilton (2022, "Scaling Laws for Reward Model Overoptimization"), section 3.1: for
best-of-n the policy's KL from the base policy is ``log n - (n - 1) / n`` and the gold reward of the
proxy's best of ``n`` samples follows ``R(d) = d (alpha - beta d)`` with ``d = sqrt(KL)``. Generation
is the cost, so (as the paper does, after Nakano et al. 2021, WebGPT, appendix) the base policy is
sampled ONCE (:func:`sample_continuations`: ``m`` continuations per prompt, saved with
:meth:`Samples.save`), every scorer scores every sample once (:func:`score_samples`), and the expected
reward of best-of-n for every ``n <= m`` comes from the unbiased sample-reuse estimator of
:mod:`mlsafety.monitoring.proxy_gaming.bestofn` (:func:`overoptimization_curve`).

Departures from the paper: rewards are standardised under the base policy's pooled samples (mean 0,
sd 1 over all prompts' samples, as the paper standardises its reward models), so the curve starts
near 0 at ``n = 1``; intervals are percentile bootstraps over prompts (the prompts are the sampling
unit; the paper shows none).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlsafety.core import InputError, LanguageModel, Progress, generator, track
from mlsafety.metrics import Estimate, bootstrap_statistic
from mlsafety.monitoring.proxy_gaming.bestofn import best_of_n_from_samples, bon_kl
from mlsafety.monitoring.proxy_gaming.fits import fit_scaling_law
from mlsafety.monitoring.proxy_gaming.monitor import MonitorResult, best_of_n_monitor

SAMPLES_FORMAT = 1
"""Version of the file :meth:`Samples.save` writes."""


@dataclass(frozen=True)
class SampleSettings:
    """What produced a pool of samples; a cached pool is reused only when every field matches."""

    model: str
    n_samples: int
    max_new_tokens: int
    temperature: float
    seed: int
    batch_size: int


@dataclass(frozen=True)
class Samples:
    """``m`` sampled continuations of each of P prompts: ``continuations[p][j]`` continues ``prompts[p]``."""

    prompts: list[str]
    continuations: list[list[str]]
    settings: SampleSettings
    tokens_per_second: float = float("nan")
    """Generated tokens (at most ``max_new_tokens`` per sample) per second of the sampling run."""

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.prompts), self.settings.n_samples

    def texts(self) -> list[str]:
        """Every sample as the whole text a reward judges (prompt + continuation), prompt-major (P * m)."""
        return [p + c for p, row in zip(self.prompts, self.continuations, strict=True) for c in row]

    def save(self, path: str | Path) -> Path:
        """Write the pool as JSON (prompts, continuations, settings) via a ``.tmp`` file and an atomic
        rename; returns the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        body = {"format": SAMPLES_FORMAT, "prompts": self.prompts, "continuations": self.continuations,
                "settings": asdict(self.settings), "tokens_per_second": self.tokens_per_second}  # fmt: skip
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, out)  # atomic: a run killed mid-write leaves the previous pool intact
        return out

    @classmethod
    def load(cls, path: str | Path) -> Samples:
        """Read a pool written by :meth:`save`."""
        try:
            body = json.loads(Path(path).read_text())
            if body.get("format") != SAMPLES_FORMAT:
                raise InputError(f"{path}: not a samples file of format {SAMPLES_FORMAT}: delete it to resample")
            settings = SampleSettings(**body["settings"])
            prompts, conts = list(body["prompts"]), [list(r) for r in body["continuations"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: cannot read the cached samples ({e}): delete it to resample") from e
        if len(conts) != len(prompts) or any(len(r) != settings.n_samples for r in conts):
            raise InputError(f"{path}: the cached samples do not match their settings: delete it to resample")
        return cls(prompts, conts, settings, float(body.get("tokens_per_second", float("nan"))))

    def matches(self, prompts: Sequence[str], settings: SampleSettings) -> bool:
        """True when this pool was sampled from ``prompts`` with ``settings`` (so it can be reused)."""
        return list(prompts) == self.prompts and settings == self.settings


def review_openings(n_prompts: int, n_words: int = 7, split: str = "test") -> list[str]:
    """Openings of ``mr`` reviews: the first ``n_words`` words of the first ``n_prompts`` reviews of
    ``split`` that have at least twice as many words (so the opening is never the whole review)."""
    from mlsafety.zoo import load_dataset

    if not isinstance(n_prompts, int) or n_prompts < 1:
        raise InputError(f"the prompt set is empty: n_prompts must be at least 1, got {n_prompts!r}")
    data = load_dataset("mr", split=split)
    out = [" ".join(t.split()[:n_words]) for t in data.x if len(t.split()) >= 2 * n_words]
    if len(out) < n_prompts:
        raise InputError(
            f"mr's {split} split has only {len(out)} reviews of >= {2 * n_words} words: ask for fewer prompts"
        )
    return out[:n_prompts]


def weights_fingerprint(lm: LanguageModel) -> str:
    """``"sha256:<hex>"`` of the model's parameters (names, shapes, dtypes and bytes): the cache key of
    a pool sampled from an unnamed model."""
    h = hashlib.sha256()
    for name, p in lm.module.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{h.hexdigest()}"


def sample_continuations(
    lm: LanguageModel,
    prompts: Sequence[str],
    n_samples: int = 256,
    max_new_tokens: int = 20,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    model_name: str = "",
    cache: str | Path | None = None,
    progress: Progress | None = None,
) -> Samples:
    """Sample ``n_samples`` continuations of every prompt from ``lm`` (batched, seeded, once).

    Each prompt's samples come from their own generator (``seed`` and the prompt's text), so a
    prompt's samples do not depend on which other prompts are sampled. With ``cache``, the pool is
    saved after every prompt and the prompts already there (same settings) are reused, so an
    interrupted run resumes and a second run samples nothing. ``tokens_per_second`` counts
    ``max_new_tokens`` per newly drawn sample (an upper bound: sequences may end early).

    The cache is keyed on ``model_name`` (trusted: name the weights, e.g. the zoo name or folder);
    without one, on :func:`weights_fingerprint` of ``lm``, so a pool from other weights is never reused.
    """
    import time

    if not prompts:
        raise InputError("the prompt set is empty: give at least one prompt")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n (the samples per prompt) must be at least 1, got {n_samples!r}")
    if not temperature > 0:
        raise InputError(f"temperature must be > 0 to sample (0 is greedy: every sample equal), got {temperature!r}")
    if cache is not None and not model_name:
        model_name = weights_fingerprint(lm)
    settings = SampleSettings(model_name, n_samples, max_new_tokens, float(temperature), seed, batch_size)
    done: dict[str, list[str]] = {}
    rate = float("nan")
    if cache is not None and Path(cache).exists():
        old = Samples.load(cache)
        if old.settings == settings:
            done = dict(zip(old.prompts, old.continuations, strict=True))
            rate = old.tokens_per_second
    todo = [i for i, p in enumerate(prompts) if p not in done]
    drawn, seconds = 0, 0.0
    for i in track(todo, progress, "sampling"):
        start = time.perf_counter()
        done[prompts[i]] = lm.generate([prompts[i]] * n_samples, max_new_tokens, temperature, None,
                                       generator(seed, "proxy-gaming", "samples", prompts[i]), batch_size)  # fmt: skip
        seconds += time.perf_counter() - start
        drawn += n_samples * max_new_tokens
        rate = drawn / max(seconds, 1e-9)
        if cache is not None:
            kept = [p for p in prompts if p in done]
            Samples(kept, [done[p] for p in kept], settings, rate).save(cache)
    return Samples(list(prompts), [done[p] for p in prompts], settings, rate)


def score_samples(samples: Samples, scorer: Any, batch_size: int = 4096) -> torch.Tensor:
    """One scoring pass over every sample (prompt + continuation): float64 (P, m)."""
    texts = samples.texts()
    parts = [scorer(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    scores = torch.cat([torch.as_tensor(p).double().reshape(-1).cpu() for p in parts])
    if scores.numel() != len(texts) or not bool(torch.isfinite(scores).all()):
        raise InputError("a reward returned the wrong number of scores or non-finite ones: it must map N texts to N")
    return scores.reshape(samples.shape)


def powers_of_two(n_max: int) -> tuple[int, ...]:
    """1, 2, 4, ..., up to ``n_max`` (``n_max`` itself when it is no power of two)."""
    if not isinstance(n_max, int) or n_max < 1:
        raise InputError(f"n must be at least 1, got {n_max!r}")
    ns = [2**k for k in range(int(math.log2(n_max)) + 1)]
    return tuple(ns if ns[-1] == n_max else [*ns, n_max])


def standardise_pool(scores: torch.Tensor) -> torch.Tensor:
    """Scores minus their mean over the whole pool (all prompts), over their sd: the base policy's samples
    stand in for pi0 (cf. :func:`mlsafety.monitoring.proxy_gaming.standardise`, exact under a known pi0)."""
    sd = scores.std()
    if not sd > 0:
        raise InputError(
            "a reward gives every sample the same score: it cannot be optimised (standardise_pool needs sd > 0)"
        )
    return (scores - scores.mean()) / sd


@dataclass(frozen=True)
class Curve:
    """Best-of-n gold and proxy reward against ``n``, with 95% bootstrap intervals over prompts.

    ``per_prompt_gold`` / ``per_prompt_proxy`` are the (P, len(ns)) unbiased estimates behind them
    (standardised rewards); ``kl`` the paper's closed form; ``d = sqrt(kl)``.
    """

    ns: tuple[int, ...]
    kl: torch.Tensor
    gold: list[Estimate]
    proxy: list[Estimate]
    per_prompt_gold: torch.Tensor
    per_prompt_proxy: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> torch.Tensor:
        return self.kl.sqrt()

    @property
    def gold_mean(self) -> torch.Tensor:
        return self.per_prompt_gold.mean(0)


def overoptimization_curve(
    proxy_scores: torch.Tensor,
    gold_scores: torch.Tensor,
    ns: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Curve:
    """Gold and proxy reward of best-of-n by the proxy, for every ``n`` in ``ns``, from one pool.

    Args:
        proxy_scores: (P prompts, m samples) the optimised reward of each cached sample.
        gold_scores: (P, m) the gold reward of the same samples.
        ns: the n values (each 1 <= n <= m, strictly increasing); default: 1, 2, 4, ..., m.
        n_boot: bootstrap resamples of the prompts.
        seed: the bootstrap's seed.
    """
    if proxy_scores.shape != gold_scores.shape or proxy_scores.dim() != 2:
        raise InputError(
            f"proxy and gold scores must both be (prompts, samples), got {tuple(proxy_scores.shape)} "
            f"and {tuple(gold_scores.shape)}"
        )
    p, m = proxy_scores.shape
    if p == 0 or m == 0:
        raise InputError("the sample pool is empty: give at least one prompt and one sample")
    ns = tuple(powers_of_two(m) if ns is None else ns)
    bad = [n for n in ns if not isinstance(n, int) or not 1 <= n <= m]
    if bad:
        raise InputError(f"every n must be an integer in [1, {m}] (the samples per prompt), got {bad[0]!r}")
    if any(a >= b for a, b in itertools.pairwise(ns)):
        raise InputError(f"the n values must be strictly increasing (the peak is read against the last), got {ns}")
    proxy = standardise_pool(proxy_scores.double())
    gold = standardise_pool(gold_scores.double())
    est = best_of_n_from_samples(proxy, gold, ns)
    g, r = est.gold, est.proxy
    gold_est = [_over_prompts(g[:, i], n_boot, seed, f"gold-{n}") for i, n in enumerate(ns)]
    proxy_est = [_over_prompts(r[:, i], n_boot, seed, f"proxy-{n}") for i, n in enumerate(ns)]
    return Curve(ns, bon_kl(ns), gold_est, proxy_est, g, r)


def _over_prompts(values: torch.Tensor, n_boot: int, seed: int, name: str) -> Estimate:
    return bootstrap_statistic(lambda b: b.mean(-1), values, n_boot, seed, name=f"proxy-gaming-{name}")


@dataclass(frozen=True)
class Peak:
    """Where the mean gold curve peaks: the index into ``ns``, its ``n`` and ``d``, with intervals.

    ``d`` carries a percentile bootstrap interval over prompts (the peak of each resample's mean
    curve); ``interior`` is False when the peak is the largest ``n`` (the gold has not yet fallen).
    ``fall`` is the gold at the peak minus the gold at the largest ``n``, with its bootstrap interval
    over prompts at the observed peak (0 when the peak is the largest ``n``); :attr:`falls` asks that
    interval to exclude 0. The peak is chosen on the same prompts, so the interval is a little
    optimistic: it separates a real fall from the wobble of a flat curve, not a small fall from none.
    """

    index: int
    n: int
    d: Estimate
    kl: Estimate
    interior: bool
    fall: Estimate | None = None

    @property
    def falls(self) -> bool:
        """An interior peak after which the gold falls beyond its 95% interval."""
        return self.interior and self.fall is not None and self.fall.ci_low > 0


def mean_curve_peak(curve: Curve, n_boot: int = 1000, seed: int = 0) -> Peak:
    """The observed gold peak of ``curve`` with a bootstrap interval over prompts."""
    d = curve.d

    def peak_d(batch: torch.Tensor) -> torch.Tensor:  # (B, P, T) -> (B,)
        return d[batch.mean(1).argmax(-1)]

    d_est = bootstrap_statistic(peak_d, curve.per_prompt_gold, n_boot, seed, name="proxy-gaming-peak")
    i = int(curve.gold_mean.argmax())
    kl = Estimate(d_est.value**2, d_est.ci_low**2, d_est.ci_high**2, d_est.n)

    def fall(batch: torch.Tensor) -> torch.Tensor:  # (B, P, T) -> (B,)
        return batch[:, :, i].mean(1) - batch[:, :, -1].mean(1)

    drop = bootstrap_statistic(fall, curve.per_prompt_gold, n_boot, seed, name="proxy-gaming-fall")
    return Peak(i, curve.ns[i], d_est, kl, i < len(curve.ns) - 1, drop)


@dataclass(frozen=True)
class Alarm:
    """The proxy-gaming monitor run along a best-of-n curve: the first ``n`` it fired at (None: never).

    ``ns`` are the n values it tested (``1 < n <= m // 2``: the pool is split in halves).
    """

    n: int | None
    d: float | None
    result: MonitorResult
    ns: tuple[int, ...] = ()


def monitor_alarm(
    curve: Curve,
    proxy_scores: torch.Tensor,
    trusted: Mapping[str, torch.Tensor],
    false_alarm: float = 0.05,
    seed: int = 0,
) -> Alarm:
    """Run :func:`mlsafety.monitoring.proxy_gaming.monitor.best_of_n_monitor` along the curve's n.

    The monitor tests, for every ``n`` of the curve with ``1 < n <= m // 2``, whether the
    ``trusted`` rewards (each (P, m), e.g. held-out reward models; never the gold the curve is
    judged by, or the monitor is circular) of the proxy's best-of-n fall short of what the base
    policy's own samples predict from the proxy; family-wise false-alarm rate ``false_alarm`` over
    those n when there is no gaming.
    """
    if not trusted:
        raise InputError("the monitor needs at least one trusted reward")
    m = proxy_scores.shape[-1]
    steps = tuple(n for n in curve.ns if 1 < n <= m // 2)
    if not steps:
        raise InputError(f"the monitor needs a curve with some n in [2, {m // 2}] (half the {m} samples per prompt)")
    t_all = torch.stack([v.double() for v in trusted.values()])  # (J, P, m)
    g = generator(seed, "proxy-gaming", "monitor")
    result = best_of_n_monitor(proxy_scores, t_all, steps, false_alarm, generator=g)
    if result.alarm_step is None:
        return Alarm(None, None, result, steps)
    n = steps[result.alarm_step - 1]
    return Alarm(n, float(bon_kl(n)[0].sqrt()), result, steps)


def alarm_outcome(alarm_n: int | None, peak: Peak) -> str:
    """How an alarm reads against the gold peak: ``hit`` (an interior peak, alarm at a smaller n),
    ``late`` (at or after it), ``miss`` (no alarm though gold fell), ``false_alarm`` (an alarm while
    the gold never peaked within the curve) or ``quiet`` (neither)."""
    if peak.interior:
        if alarm_n is None:
            return "miss"
        return "hit" if alarm_n < peak.n else "late"
    return "quiet" if alarm_n is None else "false_alarm"


def curve_summary(
    curve: Curve,
    proxy_scores: torch.Tensor,
    trusted: Mapping[str, torch.Tensor] | None,
    n_boot: int = 1000,
    seed: int = 0,
    false_alarm: float = 0.05,
) -> dict[str, Any]:
    """The curve, its observed peak, the fitted ``d (alpha - beta d)`` and the monitor, as plain JSON data.

    Values with intervals are ``[value, low, high]``; the fit needs at least 3 n values (n = 1 need not
    be among them: the pooled standardisation puts the base policy's mean gold at 0). With
    ``trusted`` None (only the gold available: a monitor on it would be circular) there is no
    ``monitor`` entry.
    """
    peak = mean_curve_peak(curve, n_boot, seed)
    out: dict[str, Any] = {
        "ns": list(curve.ns),
        "kl": curve.kl.tolist(),
        "d": curve.d.tolist(),
        "gold": [list(e)[:3] for e in curve.gold],
        "proxy": [list(e)[:3] for e in curve.proxy],
        "prompts": int(curve.per_prompt_gold.shape[0]),
        "peak": {
            "n": peak.n,
            "d": list(peak.d)[:3],
            "kl": list(peak.kl)[:3],
            "interior": peak.interior,
            "fall": list(peak.fall)[:3] if peak.fall is not None else None,
            "falls": peak.falls,
        },
    }
    if len(curve.ns) >= 3:
        # each prompt's curve is taken relative to its own n = 1 gold; without n = 1 the pooled standardisation
        # already puts the base policy's mean gold at 0 (relative to another n would shift the whole curve)
        fit = fit_scaling_law(curve.d, curve.per_prompt_gold, "bon", 1 in curve.ns, n_boot, seed)
        out["fit"] = {"alpha": list(fit.alpha)[:3], "beta": list(fit.beta)[:3], "r2": fit.r2,
                      "peak_d": list(fit.peak)[:3]}  # fmt: skip
    if trusted is not None:
        alarm = monitor_alarm(curve, proxy_scores, trusted, false_alarm, seed)
        out["monitor"] = {"alarm_n": alarm.n, "alarm_d": alarm.d, "outcome": alarm_outcome(alarm.n, peak),
                          "tested_ns": list(alarm.ns), "false_alarm": false_alarm, "trusted": sorted(trusted),
                          "shortfall": [list(s.gap)[:3] for s in alarm.result.steps],
                          "p_values": [s.p_value for s in alarm.result.steps]}  # fmt: skip
    return out
