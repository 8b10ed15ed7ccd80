"""The diamond-square plasma fractal of ImageNet-C (fog and frost), batched in torch.

Fournier, Fussell & Carpenter, "Computer rendering of stochastic models", Communications of the ACM
1982; ImageNet-C's ``plasma_fractal`` (Hendrycks & Dietterich 2019) is the reference.
"""

from __future__ import annotations

import torch


def plasma_fractal(n: int, mapsize: int, decay: float, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Diamond-square height maps (N, mapsize, mapsize) in [0, 1], as ImageNet-C's ``plasma_fractal``.

    ``mapsize`` must be a power of two; ``decay`` is the roughness (``wibbledecay``).
    """
    m = plasma_raw(n, mapsize, decay, g, like)
    flat = m.view(n, -1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)  # aminmax(dim=...) is many times slower on the CPU
    span = (hi - lo).clamp_min(1e-12)
    return m.sub_(lo.view(n, 1, 1)).div_(span.view(n, 1, 1))


def plasma_raw(n: int, mapsize: int, decay: float, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """The diamond-square height maps of :func:`plasma_fractal` before scaling to [0, 1].

    In ``like``'s dtype on its device (the samples are drawn on the generator's device). Each level
    draws its displacements with one ``uniform_`` over the level's three sub-grids, and the sums of
    neighbours wrap around as ``np.roll`` does in ImageNet-C.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    m = torch.empty(n, mapsize, mapsize, dtype=dtype, device=g.device)
    m[:, 0, 0] = 0.0  # every other entry is written before it is read
    step = mapsize
    wibble = 100.0
    while step >= 2:
        half = step // 2
        k = mapsize // step  # sub-grid side
        # displacements wibble * U(-wibble, wibble) for the diamond, the row and the column points
        noise = torch.empty(3, n, k, k, dtype=dtype, device=g.device).uniform_(
            -wibble * wibble, wibble * wibble, generator=g
        )
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        down, right = _roll_add(ul, 1), _roll_add(ul, 2)  # corner pairs along each axis, used twice
        # diamond step: the mean of the four corners of each square (wrapping), plus noise
        sq = _roll_add(down, 2)
        dr = m[:, half:mapsize:step, half:mapsize:step]
        torch.add(noise[0], sq, alpha=0.25, out=dr)  # written straight into the strided sub-grid
        # square step: each edge midpoint from its two corners and the two diamond centres beside it
        lt = _roll_add(dr, 1, shift=1).add_(right)
        torch.add(noise[1], lt, alpha=0.25, out=m[:, 0:mapsize:step, half:mapsize:step])
        tt = _roll_add(dr, 2, shift=1).add_(down)
        torch.add(noise[2], tt, alpha=0.25, out=m[:, half:mapsize:step, 0:mapsize:step])
        step //= 2
        wibble /= decay
    return m.to(like.device)


def _roll_add(a: torch.Tensor, dim: int, shift: int = -1) -> torch.Tensor:
    """``a + torch.roll(a, shift, dims=dim)`` for a shift of +-1, without the rolled copy."""
    out = torch.empty_like(a)
    size = a.shape[dim]
    if size == 1:
        return torch.add(a, a, out=out)
    if shift == -1:  # out[i] = a[i] + a[i + 1], out[-1] = a[-1] + a[0]
        torch.add(a.narrow(dim, 0, size - 1), a.narrow(dim, 1, size - 1), out=out.narrow(dim, 0, size - 1))
        torch.add(a.narrow(dim, size - 1, 1), a.narrow(dim, 0, 1), out=out.narrow(dim, size - 1, 1))
    else:  # out[i] = a[i] + a[i - 1], out[0] = a[0] + a[-1]
        torch.add(a.narrow(dim, 1, size - 1), a.narrow(dim, 0, size - 1), out=out.narrow(dim, 1, size - 1))
        torch.add(a.narrow(dim, 0, 1), a.narrow(dim, size - 1, 1), out=out.narrow(dim, 0, 1))
    return out
