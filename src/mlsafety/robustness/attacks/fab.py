"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", 2020), the minimum-norm member of AutoAttack."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param, rand_like, randn_like
from mlsafety.robustness.attacks.base import TargetSweep, lp_norm, project, register_attack

BISECTION_STEPS = 40


def boundary_step(p: torch.Tensor, w: torch.Tensor, r: torch.Tensor, norm: str) -> torch.Tensor:
    """Smallest perturbation ``d`` (in ``norm``) with ``w . d = r`` and ``p + d`` in [0, 1].

    The box-constrained solutions have the form ``d_i = clip(s * u_i, -p_i, 1 - p_i)`` with
    ``u = sign(r) * sign(w)`` (L-inf) or ``u = sign(r) * w`` (L2) (the KKT conditions), and
    ``|w . d(s)|`` grows with ``s``; ``s`` is found by bisection for all points at once. When the
    hyperplane cannot be reached inside the box, the largest move towards it is returned.
    """
    view = (-1,) + (1,) * (p.ndim - 1)
    sgn = torch.sign(r).reshape(view)
    u = sgn * (torch.sign(w) if norm == "linf" else w)
    lo_box, hi_box = -p, 1.0 - p
    target = r.abs()

    def reach(s: torch.Tensor) -> torch.Tensor:
        d = torch.minimum(torch.maximum(s.reshape(view) * u, lo_box), hi_box)
        return (w * d).flatten(1).sum(1).abs()

    if norm == "linf":
        lo = torch.zeros_like(r)
        hi = torch.ones_like(r)
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            ok = reach(mid) >= target
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
    else:
        wn = w.flatten(1).norm(dim=1) ** 2 + 1e-20
        lo = target / wn  # unclipped solution: a lower bound
        hi = lo.clone()
        for _ in range(60):  # grow the bracket geometrically
            short = reach(hi) < target
            if not bool(short.any()):
                break
            hi = torch.where(short, hi * 4.0, hi)
        for _ in range(BISECTION_STEPS):
            mid = torch.sqrt(lo * hi + 1e-30)
            ok = reach(mid) >= target
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
    return torch.minimum(torch.maximum(hi.reshape(view) * u, lo_box), hi_box)


@register_attack("fab-t", tags=("white-box", "minimum-norm"))
class FABT(TargetSweep):
    """Targeted FAB: walk to the linearised boundary towards each of the top-k other classes.

    Each step linearises ``z_t - z_y`` at the current point, projects both the current point and
    the original input onto that hyperplane (inside the box), and moves to a convex combination
    biased towards the original input, with a slight overshoot. Once adversarial, it steps back
    towards the input to shrink the perturbation. A point counts as broken only with a successful
    point inside the eps-ball; the best one found is also projected onto the ball and re-checked.
    Restarts after the first start from random points of the ball.
    """

    alpha_max = Param(0.1, float, low=0, high=1, doc="largest weight of the original input in the combination")
    eta = Param(1.05, float, low=0, low_open=True, doc="overshoot of the projection onto the boundary")
    beta = Param(0.9, float, low=0, high=1, doc="how far back towards the input a successful point moves")

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        targets = self.target_classes(clf, x)
        x_adv = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for tgt in targets:
            for restart in range(self.restarts):
                idx = (~done).nonzero()[:, 0]
                if idx.numel() == 0:
                    return x_adv
                out, hit = self._run(clf, x[idx], y[idx], tgt[idx], g, restart > 0)
                x_adv[idx[hit]] = out[hit]
                done[idx[hit]] = True
        return x_adv

    def _run(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, g: torch.Generator, rand: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        view = (-1,) + (1,) * (x.ndim - 1)
        if rand:
            noise = 2 * rand_like(x, g) - 1 if self.norm == "linf" else randn_like(x, g)
            noise = noise / (lp_norm(noise, self.norm).reshape(view) + 1e-12)
            xk = (x + 0.5 * self.eps * noise).clamp(0.0, 1.0)
        else:
            xk = x.clone()
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        rows = torch.arange(n, device=x.device)
        for _ in range(self.steps):
            xg = xk.detach().requires_grad_(True)
            logits = clf.logits(xg)
            h = logits[rows, t] - logits[rows, y]
            (w,) = torch.autograd.grad(h.sum(), xg)
            with torch.no_grad():
                h = h.detach()
                d_cur = boundary_step(xk, w, -h, self.norm)
                r_orig = -(h + (w * (x - xk)).flatten(1).sum(1))
                d_orig = boundary_step(x, w, r_orig, self.norm)
                n_cur, n_orig = lp_norm(d_cur, self.norm), lp_norm(d_orig, self.norm)
                alpha = (n_cur / (n_cur + n_orig + 1e-12)).clamp(0.0, self.alpha_max).reshape(view)
                xk = ((1 - alpha) * (xk + self.eta * d_cur) + alpha * (x + self.eta * d_orig)).clamp(0.0, 1.0)
                adv = clf.logits(xk).argmax(dim=1) != y
                dist = lp_norm(xk - x, self.norm)
                closer = adv & (dist < best_norm)
                best[closer] = xk[closer]
                best_norm[closer] = dist[closer]
                xk = torch.where(adv.reshape(view), x + self.beta * (xk - x), xk)
                if bool((best_norm <= self.eps).all()):
                    break
        with torch.no_grad():
            inside = best_norm <= self.eps * (1 + 1e-6)
            # A best point outside the ball may still be adversarial once projected onto it.
            proj = project(best, x, self.eps, self.norm)
            still = clf.logits(proj).argmax(dim=1) != y
            hit = inside | (torch.isfinite(best_norm) & still)
            out = torch.where(inside.reshape(view), best, proj)
        return out, hit
