"""STRIP (Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks", ACSAC 2019).

An input that carries a trigger keeps its (target) prediction when another image is superimposed
on it, so the predictions over several superimpositions have low entropy; a clean input's
prediction scatters. Superimposition follows the paper (``cv2.addWeighted(x, 1, x', 1, 0)``): the
pixel-wise sum, saturated to [0, 1].

Input level: the score of an input is minus its mean entropy over ``overlays`` superimpositions
with random clean images (higher = more likely triggered); the decision threshold on the
entropy is its ``frr`` quantile on clean inputs (the paper's 1% false-rejection rate), taken so
that a new clean input falls below it with probability ``frr`` (:func:`frr_cut`). The paper
takes the quantile of a normal distribution fitted to the clean entropies, which assumes that
shape of the tail; this one is distribution-free.
Model level: the share of the run-time ``probe`` inputs flagged at that threshold. A model whose
probe traffic is flagged much more often than ``frr`` is serving triggered inputs.
"""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param
from mlsafety.monitoring.trojans.scanners._base import ScanData, Scanner, SeedScan, register_scanner


def strip_entropy(
    clf: Classifier, x: torch.Tensor, pool: torch.Tensor, overlays: int, g: torch.Generator, batch_size: int = 1024
) -> torch.Tensor:
    """Mean prediction entropy (nats) of each input in ``x`` over ``overlays`` superimpositions with ``pool`` images.

    Args:
        clf: the model (frozen by the caller).
        x: inputs (N, C, H, W) in [0, 1].
        pool: clean images to superimpose (M, C, H, W).
        overlays: superimpositions per input.
        g: generator choosing the overlay images.
        batch_size: inputs per forward pass (each expanded ``overlays`` times).
    """
    device = clf.device
    n = x.shape[0]
    idx = torch.randint(0, pool.shape[0], (n, overlays), generator=g)
    out = torch.empty(n, device=device)
    step = max(1, batch_size // overlays)
    with torch.inference_mode():
        for start in range(0, n, step):
            xb = x[start : start + step].to(device)
            ob = pool[idx[start : start + step].flatten()].to(device)
            mixed = (xb.repeat_interleave(overlays, dim=0) + ob).clamp(0, 1)
            p = clf.logits(mixed).softmax(dim=1)
            ent = -(p * p.clamp_min(1e-12).log()).sum(dim=1)
            out[start : start + step] = ent.reshape(-1, overlays).mean(dim=1)
    return out


def frr_cut(clean: torch.Tensor, frr: float) -> torch.Tensor:
    """The entropy cut at which a new clean input is flagged (entropy below it) with probability ``frr``.

    A new clean input falls below the k-th smallest of n clean values with probability k / (n + 1), so
    the cut is the clean values' quantile at plotting positions k / (n + 1) (Hyndman & Fan's type 6,
    "Sample quantiles in statistical packages", 1996): the order statistic at 1-based rank
    ``frr * (n + 1)``, interpolated linearly between ranks. The default quantile (ranks
    ``1 + frr * (n - 1)``) sits about one rank higher: a false-rejection rate of 1.8%, not 1%, with
    120 clean inputs. With fewer than ``1 / frr - 1`` clean inputs no rank is low enough; the
    smallest value is used (a rate of ``1 / (n + 1)``).

    Args:
        clean: entropies (n,) of clean inputs.
        frr: the false-rejection rate, in (0, 1).

    Returns:
        a 0-d float64 tensor.
    """
    v = clean.double().flatten().sort().values
    n = v.numel()
    pos = min(max(frr * (n + 1) - 1, 0.0), n - 1.0)  # 0-based rank
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


@register_scanner("strip", tags=("share-score",))
class STRIP(Scanner):
    """Input-level trojan detection by superimposition entropy; model-level score from the probe traffic.

    Score: share of ``probe`` inputs whose entropy falls below the clean ``frr`` quantile (:func:`frr_cut`);
    verdict: score > ``threshold``. ``sample_scores`` are minus the entropies of the probe inputs
    (higher = more likely triggered), for input-level AUROC. The suspected target is the most
    common prediction among the flagged probe inputs. The seeds change the overlay choices.
    """

    needs = frozenset({"clean", "probe"})
    threshold = Param(0.1, float, doc="share of flagged probe inputs above which the model is flagged")
    overlays = Param(
        16, int, low=1, doc="superimpositions per input (the paper: 100 on CIFAR; small images need fewer)"
    )
    frr = Param(
        0.01, float, low=0, low_open=True, high=1, high_open=True, doc="clean false-rejection rate setting the cut"
    )

    def _scan(self, clf: Classifier, data: ScanData, g: torch.Generator) -> SeedScan:
        assert data.probe is not None
        pool = data.clean.x
        clean_ent = strip_entropy(clf, pool, pool, self.overlays, g)
        probe_ent = strip_entropy(clf, data.probe, pool, self.overlays, g)
        cut = frr_cut(clean_ent, self.frr).to(probe_ent.dtype)
        flagged = probe_ent < cut
        targets: list[int] = []
        if bool(flagged.any()):
            with torch.inference_mode():
                pred = clf.logits(data.probe[flagged.cpu()].to(clf.device)).argmax(dim=1)
            targets = [int(torch.mode(pred).values)]
        share = float(flagged.float().mean())
        return SeedScan(
            score=share,
            targets=targets if share > self.threshold else [],
            sample_scores=-probe_ent,
            extra={"entropy_threshold": float(cut), "clean_entropy_mean": float(clean_ent.mean())},
        )
