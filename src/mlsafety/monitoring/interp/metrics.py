"""Patching metrics: the logit difference, its normalised form, and per-prompt results with intervals.

The logit difference ``logit(correct) - logit(wrong)`` at the answer position is the metric of Wang et al.
(2022, "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small");
normalising it so that 0 is the corrupted run and 1 the clean run follows Heimersheim and Nanda (2024,
"How to use and interpret activation patching").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy import stats

from mlsafety.core import InputError
from mlsafety.metrics import bootstrap_counts, bootstrap_mean


def logit_diff(logits_last: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """``logits_last[i, correct[i]] - logits_last[i, wrong[i]]`` per prompt.

    Args:
        logits_last: logits at the answer position ``(N, V)``.
        correct, wrong: token ids ``(N,)``.

    Returns:
        ``(N,)``.
    """
    if logits_last.ndim != 2:
        raise InputError(f"logits_last must be (N, V), got shape {tuple(logits_last.shape)}")
    n = logits_last.shape[0]
    if correct.shape != (n,) or wrong.shape != (n,):
        raise InputError(
            f"correct and wrong must be token ids of shape ({n},), got {tuple(correct.shape)} and {tuple(wrong.shape)}"
        )
    rows = torch.arange(n, device=logits_last.device)
    dev = logits_last.device
    return logits_last[rows, correct.long().to(dev)] - logits_last[rows, wrong.long().to(dev)]


def normalised(value: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """``(value - corrupted) / (clean - corrupted)``: 0 where ``value`` is the corrupted run's, 1 the clean's.

    Args:
        value: ``(N, ...)`` metric values of patched runs.
        clean, corrupted: ``(N,)`` the metric on the clean and corrupted runs of each prompt.
        tol: the smallest ``|clean - corrupted|`` accepted.

    Raises:
        InputError: a prompt whose clean and corrupted values differ by at most ``tol`` (its normalised
            value is undefined); the message names the first.
    """
    gap = (clean - corrupted).double()
    small = (gap.abs() <= tol).nonzero()
    if len(small):
        i = int(small[0])
        raise InputError(
            f"prompt {i}: the clean and corrupted metric are equal ({float(clean[i]):.6g}), so the normalised "
            "effect is undefined; use a corruption that changes the answer, or drop that prompt"
        )
    shape = (-1,) + (1,) * (value.ndim - 1)
    out = (value.double() - corrupted.double().reshape(shape)) / gap.reshape(shape)
    return out.to(value.dtype if value.is_floating_point() else torch.float32)


def t_interval(values: torch.Tensor, confidence: float = 0.95) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the first dimension with a Student-t interval, NaNs ignored (per column).

    Args:
        values: ``(N, ...)``.

    Returns:
        ``(mean, low, high)``, each ``values.shape[1:]``; low = high = mean where fewer than two values.
    """
    v = values.double()
    ok = ~torch.isnan(v)
    n = ok.sum(0)
    filled = torch.where(ok, v, torch.zeros_like(v))
    mean = filled.sum(0) / n.clamp(min=1)
    dev = torch.where(ok, v - mean, torch.zeros_like(v))
    var = (dev**2).sum(0) / (n - 1).clamp(min=1)
    q = torch.as_tensor(stats.t.ppf(0.5 + confidence / 2, (n - 1).clamp(min=1).cpu().numpy()), dtype=torch.float64)
    half = torch.where(n > 1, q.to(v.device) * (var / n.clamp(min=1)).sqrt(), torch.zeros_like(mean))
    mean = torch.where(n > 0, mean, torch.full_like(mean, float("nan")))
    return mean.float(), (mean - half).float(), (mean + half).float()


def ratio_of_means(
    raw: torch.Tensor,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    name: str = "patching",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean raw - mean corrupted) / (mean clean - mean corrupted)`` per site, with a paired bootstrap interval.

    The normalised effect of a set of prompts as a ratio of means, not a mean of per-prompt ratios: a
    prompt whose clean and corrupted logit differences nearly tie has a huge per-prompt ratio and would
    dominate the mean. Prompts are resampled together with their clean and corrupted values (paired
    percentile bootstrap, :func:`mlsafety.metrics.bootstrap_counts`); the interval is widened to contain
    the estimate. NaN entries of ``raw`` (a prompt without the site's position) leave that prompt out of
    that site's three means.

    Args:
        raw: ``(N, ...)`` patched runs' metric values.
        clean, corrupted: ``(N,)`` the unpatched runs' values.

    Returns:
        ``(estimate, low, high)``, each ``raw.shape[1:]``; NaN where the sites' prompts' mean clean and
        corrupted values are equal or no prompt has the site.
    """
    n = raw.shape[0]
    flat = raw.detach().double().cpu().reshape(n, -1)
    ok = ~torch.isnan(flat)
    shape = (-1, 1)
    gap = (clean.detach().double().cpu() - corrupted.detach().double().cpu()).reshape(shape)
    num = torch.where(ok, flat - corrupted.detach().double().cpu().reshape(shape), torch.zeros_like(flat))
    den = torch.where(ok, gap.expand_as(flat), torch.zeros_like(flat))

    def ratio(w: torch.Tensor) -> torch.Tensor:
        top, bottom = w @ num, w @ den
        return torch.where(bottom != 0, top / torch.where(bottom != 0, bottom, 1.0), float("nan"))

    value = ratio(torch.ones(1, n, dtype=torch.float64))[0]
    boot = torch.cat([ratio(w) for w in bootstrap_counts(n, n_boot, seed, name)])
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64)
    low, high = torch.nanquantile(boot, q, dim=0)
    low, high = torch.minimum(low, value), torch.maximum(high, value)
    out = raw.shape[1:]
    return value.float().reshape(out), low.float().reshape(out), high.float().reshape(out)


@dataclass(frozen=True)
class PromptMetric:
    """A metric measured on each prompt, with its mean and a 95% bootstrap interval over prompts.

    Attributes:
        values: ``(N,)`` per-prompt values.
        mean, ci_low, ci_high: the mean over prompts and its percentile-bootstrap interval
            (:func:`mlsafety.metrics.bootstrap_mean`).
    """

    values: torch.Tensor
    mean: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, values: torch.Tensor, seed: int = 0) -> PromptMetric:
        """Summarise per-prompt ``values`` ``(N,)``."""
        v = values.detach().reshape(-1).cpu()
        est = bootstrap_mean(v, seed=seed, name="interp-prompt-metric")
        return cls(v, est.value, est.ci_low, est.ci_high)

    @property
    def n(self) -> int:
        """The number of prompts."""
        return int(self.values.numel())
