"""Corruption error (CE), mean corruption error (mCE) and relative mCE (Hendrycks & Dietterich, 2019).

For corruption ``c`` with top-1 errors ``E[s, c]`` over severities ``s``:

* unnormalised: ``CE_c = mean_s E[s, c]`` and relative ``CE_c = mean_s (E[s, c] - E_clean)``;
* normalised by a baseline model (ImageNet-C uses AlexNet):
  ``CE_c = sum_s E[s, c] / sum_s E_base[s, c]`` and
  ``relative CE_c = sum_s (E[s, c] - E_clean) / sum_s (E_base[s, c] - E_base_clean)``.

mCE and relative mCE are the means over corruptions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

from mlsafety.core import InputError

ALEXNET_ERRORS: dict[str, float] = {
    "gaussian-noise": 0.886428,
    "shot-noise": 0.894468,
    "impulse-noise": 0.922640,
    "defocus-blur": 0.819880,
    "glass-blur": 0.826268,
    "motion-blur": 0.785948,
    "zoom-blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic-transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg-compression": 0.606500,
}
"""AlexNet's top-1 error on ImageNet-C, averaged over the five severities (github.com/hendrycks/robustness)."""

ALEXNET_CLEAN_ERROR = 0.4345
"""AlexNet's clean top-1 error on the ImageNet validation set, the baseline of relative mCE."""


@dataclass(frozen=True)
class CorruptionSummary:
    """Per-corruption CE and relative CE, their means, and whether they are baseline-normalised."""

    ce: dict[str, float]
    relative_ce: dict[str, float]
    mce: float
    relative_mce: float
    normalised: bool


def check_baseline(errors: Mapping[str, float], clean_error: float) -> None:
    """Refuse baseline errors the normalised forms cannot divide by: each in (0, 1] and above the clean error."""
    ok = not isinstance(clean_error, bool) and isinstance(clean_error, Real) and 0 <= clean_error < 1
    if not ok:
        raise InputError(f"the baseline's clean error must be a number in [0, 1), got {clean_error!r}")
    for name, e in errors.items():
        if isinstance(e, bool) or not isinstance(e, Real) or not 0 < e <= 1:  # numpy scalars are Real too
            raise InputError(f"the baseline error of {name!r} must be a number in (0, 1], got {e!r}")
        if e <= clean_error:
            raise InputError(
                f"the baseline error of {name!r} ({e:g}) must be above the baseline's clean error ({clean_error:g}): "
                "the relative mCE divides by their difference"
            )


def mce(
    errors: Mapping[str, Sequence[float]],
    clean_error: float,
    baseline: Mapping[str, float] | None = None,
    baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
) -> CorruptionSummary:
    """CE per corruption, mCE and relative mCE from top-1 errors.

    Args:
        errors: corruption name -> errors at each severity (all five for the normalised form).
        clean_error: the model's error on clean data.
        baseline: corruption name -> the baseline model's error averaged over the five severities
            (e.g. :data:`ALEXNET_ERRORS`); None gives the unnormalised form.
        baseline_clean_error: the baseline's clean error (used with ``baseline``).

    Raises:
        InputError: no corruption or no errors for one; with ``baseline``: a corruption it lacks, fewer than five
            severities, a baseline error outside (0, 1] or not above ``baseline_clean_error``.
    """
    if not errors:
        raise InputError("mCE needs the errors of at least one corruption")
    ce: dict[str, float] = {}
    rel: dict[str, float] = {}
    for name, errs in errors.items():
        errs = [float(e) for e in errs]
        if not errs:
            raise InputError(f"no errors given for corruption {name!r}")
        mean = sum(errs) / len(errs)
        if baseline is None:
            ce[name] = mean
            rel[name] = mean - clean_error
            continue
        if name not in baseline:
            raise InputError(f"no baseline error for corruption {name!r}; the baseline has {', '.join(baseline)}")
        if len(errs) != 5:
            raise InputError(f"the normalised CE of {name!r} needs errors at all five severities, got {len(errs)}")
        check_baseline({name: baseline[name]}, baseline_clean_error)  # a ZeroDivisionError or a negative mCE else
        ce[name] = mean / baseline[name]
        rel[name] = (mean - clean_error) / (baseline[name] - baseline_clean_error)
    return CorruptionSummary(
        ce, rel, sum(ce.values()) / len(ce), sum(rel.values()) / len(rel), normalised=baseline is not None
    )
