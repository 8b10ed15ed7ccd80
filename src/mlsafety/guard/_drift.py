"""Drift alarm: a conformal Shiryaev-Roberts procedure over the stream of monitor scores.

Each incoming score ``s_t`` gets a conformal p-value against the validation scores ``v_1..v_n``
(higher = more anomalous)::

    p_t = (#{i: v_i > s_t} + U_t (#{i: v_i = s_t} + 1)) / (n + 1),   U_t ~ Uniform(0, 1]

and bets on small p-values with the power calibrator ``f(p) = kappa p^(kappa - 1)`` (``E f(U) = 1``).
The statistic ``R_t = (1 + R_{t-1}) f(p_t)`` (``R_0 = 0``) is the Shiryaev-Roberts statistic of the
conformal test martingale: when the stream is exchangeable with the validation data the p-values are
uniform, ``R_t - t`` is a martingale, and by optional stopping the mean number of inputs before a
false alarm (average run length, ARL) is at least the alarm level ``A`` (``R_t >= A``).

References: Vovk, Nouretdinov, Gammerman, "Testing exchangeability on-line" (ICML 2003); Vovk,
"Testing randomness online" (Statistical Science 2021) and Volkhonskiy et al., "Inductive conformal
martingales for change-point detection" (COPA 2017) for the Shiryaev-Roberts form with a fixed
calibration set.

Deviation, stated: the p-values use one fixed validation set (the inductive form), so conditional on
that set they are uniform only up to its sampling error (each p-value's distribution is off by about
``1/sqrt(n)``); the ARL bound holds on average over validation sets and is checked by simulation in
the tests (``tests/guard/test_guard_drift.py``) with a fresh validation set per replicate.
"""

from __future__ import annotations

import math

import torch

from mlsafety.core import InputError

MAX_ARL = 1e6
"""The highest alarm level taken (a judgement, not a theorem). The ARL bound holds on average over validation
sets; conditional on the one set a guard keeps, the p-values are off by about ``1/sqrt(n)`` and the mean run
length falls short of ``A`` by a factor that grows with ``A`` (a large-deviation estimate puts it near
``A^(1 - theta)``, ``theta`` a little below 1: in the worst 5% of sets of n = 2000, about 4x at ``A = 1e4``, 8x at
1e6, 10x at 1e7, 900x at 1e20). Up to 1e6 the level can still be checked by simulating run lengths (each
replicate a few times ``A`` inputs; the tests check ``A = 50``)."""


def check_settings(arl: float, kappa: float) -> None:
    """Raise :class:`InputError` (one line) unless ``1 < arl <= MAX_ARL`` and ``0 < kappa < 1``, both finite."""
    if not (isinstance(arl, (int, float)) and math.isfinite(arl) and 1 < arl <= MAX_ARL):
        raise InputError(f"drift alarm arl must be a number > 1 and at most {MAX_ARL:g}, got {arl!r}")
    if not (isinstance(kappa, (int, float)) and 0.0 < kappa < 1.0):
        raise InputError(f"drift alarm kappa must lie in (0, 1), got {kappa!r}")


class DriftAlarm:
    """Sequential test that the monitor scores still come from the validation distribution.

    Args:
        validation_scores: (n,) finite monitor scores of the validation inputs (the guard's
            ``score``), the reference distribution.
        arl: the alarm level ``A``, at most :data:`MAX_ARL`; the mean number of in-distribution inputs
            before a false alarm is at least this (see the module docstring).
        kappa: the calibrator's exponent in (0, 1); smaller bets harder on very small p-values.
        seed: seeds the tie-breaking uniforms ``U_t`` (so a replayed stream gives the same alarms).

    Example:
        >>> alarm = DriftAlarm(val_scores, arl=1000)
        >>> alarm.update(guard(x).score)   # per-input alarm flags; alarm.alarm latches
    """

    MAX_ARL = MAX_ARL

    def __init__(self, validation_scores: torch.Tensor, arl: float = 1000.0, kappa: float = 0.5, seed: int = 0) -> None:
        v = validation_scores.detach().reshape(-1).double().cpu()
        if v.numel() < 2:
            raise InputError("the drift alarm needs at least 2 validation scores")
        if not bool(torch.isfinite(v).all()):
            raise InputError("validation scores for the drift alarm contain NaN or infinite values")
        check_settings(arl, kappa)
        self.reference = v.sort().values
        self.arl = float(arl)
        self.kappa = float(kappa)
        self.seed = seed
        self._g = torch.Generator().manual_seed(seed)
        self.statistic = 0.0  # R_t
        self.steps = 0  # inputs seen
        self.alarms = 0  # alarms raised (the statistic restarts after each)
        self.first_alarm: int | None = None  # 1-based input index of the first alarm

    @property
    def alarm(self) -> bool:
        """True once an alarm has been raised (latched until :meth:`reset`)."""
        return self.alarms > 0

    def reset(self) -> None:
        """Forget the stream (after the drift was handled)."""
        self.statistic, self.steps, self.alarms, self.first_alarm = 0.0, 0, 0, None

    def p_values(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Conformal p-values of ``scores`` against the validation scores, ties broken by ``u`` in (0, 1]."""
        s = scores.detach().reshape(-1).double().cpu()
        n = self.reference.numel()
        below_or_equal = torch.searchsorted(self.reference, s, right=True)
        below = torch.searchsorted(self.reference, s, right=False)
        greater = n - below_or_equal
        equal = below_or_equal - below
        return (greater + u * (equal + 1)) / (n + 1)

    def bet(self, p: torch.Tensor) -> torch.Tensor:
        """The power calibrator ``kappa p^(kappa - 1)``."""
        return self.kappa * p.pow(self.kappa - 1.0)

    def update(self, scores: torch.Tensor) -> torch.Tensor:
        """Feed scores in stream order; returns (N,) bool, True where an alarm was raised."""
        s = scores.detach().reshape(-1)
        if not bool(torch.isfinite(s).all()):
            raise InputError("drift alarm scores contain NaN or infinite values")
        u = 1.0 - torch.rand(s.numel(), generator=self._g, dtype=torch.float64)  # (0, 1]
        factors = self.bet(self.p_values(s, u)).tolist()
        raised = torch.zeros(s.numel(), dtype=torch.bool)
        r = self.statistic
        for i, f in enumerate(factors):
            r = (1.0 + r) * f
            self.steps += 1
            if r >= self.arl:
                raised[i] = True
                self.alarms += 1
                if self.first_alarm is None:
                    self.first_alarm = self.steps
                r = 0.0
        self.statistic = r
        return raised
