"""Sums of values weighted by integer counts whose bits do not depend on how the sums are ordered.

A bootstrap resample is a row of integer counts, and many resampled statistics are products
``counts @ values``. A BLAS product splits its sums across threads by the thread count and the
shape (MKL splits the inner dimension of a short, wide product): two runs of one audit on 1 and 2
intra-op threads (``mlsafety`` chooses them from the free cores) gave classwise-ECE intervals that
differed in the 16th digit. :func:`count_weighted_sums` makes every partial sum exact, so any order,
thread count or kernel gives the same bits.

Each column of values is scaled by a power of two ``E`` (exact) to ``|u| <= 1`` and split as
``u = hi + mid + rest`` with ``hi`` a multiple of ``2^-s`` and ``mid`` of ``2^-2s``, where
``2^s`` times the largest row total of counts stays within float64's 53 bits. Every product of a
count with ``hi`` or ``mid`` and every partial sum of them is then a float64 integer multiple of a
power of two below ``2^53``: computed exactly, in any order. The result ``(S_hi + S_mid) E`` rounds
once; the dropped ``rest`` (below ``2^-2s`` per value) moves it by less than ``W 2^-2s E`` (W: the row
total), far below the ulp of a sum of a few thousand terms: the exact-split idea of error-free
transformations (Ogita, Rump & Oishi, "Accurate sum and dot product", SIAM J. Sci. Comput. 2005),
applied so that the result is order-free rather than correctly rounded.
"""

from __future__ import annotations

import math

import torch

from mlsafety.core._errors import InputError


def count_weighted_sums(counts: torch.Tensor, values: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """``counts @ values`` in float64, the same bits whatever the thread count or summation order.

    Args:
        counts: (B, N) non-negative integer counts (e.g. bootstrap resamples), any dtype.
        values: (N,) or (N, K) finite values.
        probabilities: the caller knows every value lies in [0, 1] (e.g. a softmax of finite logits): the
            pass over the values that finds each column's scale and checks them is skipped (the scale is 1).
            A value outside [0, 1] would then be summed without the exactness guarantee.

    Returns:
        (B,) or (B, K) float64.

    Raises:
        InputError: counts that are negative or not integers, or values that are not finite (the
            exactness argument needs both).
    """
    w = counts.to(torch.float64)
    v = values.to(torch.float64)
    vector = v.ndim == 1
    if vector:
        v = v[:, None]
    if w.ndim != 2 or v.ndim != 2 or w.shape[1] != v.shape[0]:
        raise InputError(
            "counts (B, N) and values (N,) or (N, K) must agree in N, "
            f"got {tuple(counts.shape)} and {tuple(values.shape)}"
        )
    if bool((w < 0).any()) or not torch.equal(w, w.round()):
        raise InputError("counts must be non-negative integers (bootstrap resample counts)")
    if w.numel() == 0 or v.numel() == 0:
        out = torch.zeros(w.shape[0], v.shape[1], dtype=torch.float64, device=w.device)
        return out[:, 0] if vector else out
    total = float(w.sum(dim=1).max())
    s = 52 - max(1, math.ceil(math.log2(total + 1)))
    if s < 8:
        raise InputError(f"counts sum to {total:.0f} in a row, too many to sum exactly in float64 (at most 2^44)")
    # E = 2^e > max |v| per column (frexp: max |v| = m 2^e with m in [0.5, 1); 1 for an all-zero column),
    # so u = v / E lies in (-1, 1) (or [0, 1] with E = 1 for probabilities); every step below scales by powers
    # of two or drops bits, so is exact. In units of 2^-s and 2^-2s: hi = floor(u 2^s) and
    # mid = floor(frac(u 2^s) 2^s), integers of at most 2^s
    if probabilities:
        scale = None
        t = v * 2.0**s  # a new tensor: v may be the caller's
    else:
        low, high = torch.aminmax(v, dim=0)  # NaN where a column holds a NaN, +-inf where it holds an inf
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise InputError("values must be finite to be summed exactly; drop or replace the NaN / inf entries")
        scale = torch.ldexp(torch.ones_like(v[0]), torch.frexp(torch.maximum(-low, high))[1])
        t = (v / scale).mul_(2.0**s)  # in two steps: 2^s / E alone would overflow for tiny columns
    hi = torch.floor(t)
    mid = t.sub_(hi).mul_(2.0**s).floor_()
    out = (w @ hi).mul_(2.0**-s).add_((w @ mid).mul_(2.0 ** (-2 * s)))
    if scale is not None:
        out.mul_(scale)
    return out[:, 0] if vector else out
