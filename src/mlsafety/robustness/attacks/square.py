"""Square: the score-based black-box attack by random square-shaped updates (Andriushchenko,
Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial attack via random
search", 2020), L-inf and L2. Reads logits only; no gradients."""

from __future__ import annotations

import math

import torch

from mlsafety.core import Classifier, Param
from mlsafety.robustness.attacks._objectives import ce_loss, margin
from mlsafety.robustness.attacks.base import TARGETED, Attack, lp_norm, register_attack

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """Share of pixels changed at iteration ``it``: ``p_init`` halved at the paper's milestones
    (stated for 10,000 queries and rescaled to ``n_queries``)."""
    it = int(it / n_queries * 10000)
    div = 512
    for limit, d in _SCHEDULE:
        if it <= limit:
            div = d
            break
    return p_init / div


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    return int(torch.randint(lo, hi, (1,), generator=g, device=g.device))


def _signs(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (2 * torch.randint(0, 2, shape, generator=g, device=g.device) - 1).to(device=device, dtype=torch.float32)


def _eta_rectangles(a: int, b: int) -> torch.Tensor:
    delta = torch.zeros(a, b)
    ca, cb = a // 2 + 1, b // 2 + 1
    ra, rb = ca - 1, cb - 1
    for counter in range(max(ca, cb)):
        delta[max(ra, 0) : min(ra + 2 * counter + 1, a), max(rb, 0) : min(rb + 2 * counter + 1, b)] += (
            1.0 / (counter + 1) ** 2
        )
        ra -= 1
        rb -= 1
    return delta / (delta.pow(2).sum().sqrt() + 1e-12)


def _meta_pseudo_gaussian(s: int, g: torch.Generator) -> torch.Tensor:
    """The L2 attack's window pattern: two pseudo-Gaussian bumps of opposite sign, unit norm."""
    delta = torch.zeros(s, s)
    delta[: s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2 :] = -_eta_rectangles(s - s // 2, s)
    delta = delta / (delta.pow(2).sum().sqrt() + 1e-12)
    if bool(torch.rand(1, generator=g, device=g.device) > 0.5):
        delta = delta.t()
    return delta


@register_attack("square", tags=("black-box",))
class Square(Attack):
    """Random search: propose a square window change, keep it when the margin loss drops.

    L-inf proposals set one random square per image (per-image location and per-channel sign) to
    the corner ``x +- eps``; L2 proposals move mass between two windows with a pseudo-Gaussian
    pattern, keeping the norm at ``eps``. The window area follows ``p_init`` and the paper's
    halving schedule. Points stop querying once misclassified (or on target); in targeted mode the
    search lowers the cross-entropy of the target class instead of the margin.
    """

    n_queries = Param(5000, int, low=1, doc="model queries per point (AutoAttack uses 5000)")
    p_init = Param(
        0.8, float, low=0, low_open=True, high=1, doc="initial share of pixels in a window (AutoAttack: 0.8)"
    )
    targeted = TARGETED

    def _scores(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(margin, loss)``: the point is adversarial when margin < 0; the search lowers loss."""
        logits = clf.logits(x)
        if t is None:
            m = margin(logits, y)
            return m, m
        return margin(logits, t).neg(), ce_loss(logits, t)

    @torch.no_grad()
    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        n, c, _, w = x.shape
        dev = x.device
        if self.norm == "linf":
            x_best = (x + self.eps * _signs((n, c, 1, w), g, dev).to(x.dtype)).clamp(0.0, 1.0)
        else:
            x_best = self._l2_init(x, g)
        m_best, l_best = self._scores(clf, x_best, y, target)
        for it in range(self.n_queries - 1):
            idx = (m_best > 0).nonzero()[:, 0]
            if idx.numel() == 0:
                break
            xc, xb = x[idx], x_best[idx]
            p = p_selection(self.p_init, it, self.n_queries)
            if self.norm == "linf":
                x_new = self._linf_proposal(xc, xb, p, g)
            else:
                x_new = self._l2_proposal(xc, xb, p, g)
            m_new, l_new = self._scores(clf, x_new, y[idx], None if target is None else target[idx])
            better = l_new < l_best[idx]
            sel = idx[better]
            l_best[sel] = l_new[better]
            m_best[sel] = m_new[better]
            x_best[sel] = x_new[better]
        return x_best

    def _linf_proposal(self, x: torch.Tensor, x_best: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1) if min(h, w) > 1 else 1
        vh = torch.randint(0, h - s + 1, (n,), generator=g, device=g.device).to(x.device)
        vw = torch.randint(0, w - s + 1, (n,), generator=g, device=g.device).to(x.device)
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = (ar_h[None] >= vh[:, None]) & (ar_h[None] < vh[:, None] + s)
        cols = (ar_w[None] >= vw[:, None]) & (ar_w[None] < vw[:, None] + s)
        window = rows[:, None, :, None] & cols[:, None, None, :]
        corner = (x + self.eps * _signs((n, c, 1, 1), g, x.device).to(x.dtype)).clamp(0.0, 1.0)
        return torch.where(window, corner, x_best)

    def _l2_init(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        delta = torch.zeros_like(x)
        s = max(h // 5, 1)
        sp = (h - s * 5) // 2 if h >= 5 else 0
        vh = sp
        for _ in range(h // s):
            vw = sp
            for _ in range(w // s):
                pattern = _meta_pseudo_gaussian(s, g).to(x)[: max(0, min(s, h - vh)), : max(0, min(s, w - vw))]
                delta[:, :, vh : vh + s, vw : vw + s] += pattern * _signs((n, c, 1, 1), g, x.device).to(x.dtype)
                vw += s
            vh += s
        delta = delta / (lp_norm(delta, "l2").reshape(-1, 1, 1, 1) + 1e-12)
        return (x + self.eps * delta).clamp(0.0, 1.0)

    def _l2_proposal(self, x: torch.Tensor, x_best: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        view = (-1, 1, 1, 1)
        delta = x_best - x
        s = max(round(math.sqrt(p * h * w)), 3)
        s = s + 1 if s % 2 == 0 else s
        s = min(s, h, w)
        vh, vw = _randint(0, h - s + 1, g), _randint(0, w - s + 1, g)
        vh2, vw2 = _randint(0, h - s + 1, g), _randint(0, w - s + 1, g)
        win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        mask = torch.zeros_like(x)
        mask[win1] = 1.0
        mask[win2] = 1.0
        norm_img = lp_norm(delta, "l2").reshape(view)
        norm_windows = lp_norm(delta * mask, "l2").reshape(view)
        old = delta[win1]
        old = old / (old.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt() + 1e-12)
        new = _meta_pseudo_gaussian(s, g).to(x)[None, None] * _signs((n, c, 1, 1), g, x.device).to(x.dtype) + old
        budget = (torch.clamp(self.eps**2 - norm_img**2, min=0.0) / c + norm_windows**2).sqrt()
        new = new / (new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt() + 1e-12) * budget
        delta = delta.clone()
        delta[win2] = 0.0
        delta[win1] = new
        delta = delta / (lp_norm(delta, "l2").reshape(view) + 1e-12) * self.eps
        return (x + delta).clamp(0.0, 1.0)
