"""Spectral signatures (Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

Within the target class, the poisoned samples shift the mean of the learned representation along
one direction, which becomes the top singular vector of the centred representations. Each
sample's outlier score is its squared projection on that vector; the paper removes the
``1.5 * eps * n`` highest-scoring samples of each class of ``n`` samples (``eps``: an upper bound
on the poisoned share) and retrains; this scanner only scores (``sample_scores``).

For a model-level verdict (not in the paper) each class's signature strength is the share of its
variance on the top direction (``sigma_1^2 / sum sigma_i^2``); a poisoned class stands out from
the others. The score is the largest MAD anomaly index of these strengths (above the median).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mlsafety.core import Classifier, Param
from mlsafety.metrics import median
from mlsafety.monitoring.trojans.scanners._base import ScanData, Scanner, SeedScan, register_scanner
from mlsafety.monitoring.trojans.scanners._features import train_features
from mlsafety.monitoring.trojans.scanners.neural_cleanse import anomaly_index


@register_scanner("spectral-signatures", tags=("mad-score",))
class SpectralSignatures(Scanner):
    """Top-singular-vector outlier scores per class of the training set.

    Score: the largest anomaly index of the classes' top-direction variance share (higher = more
    likely trojaned); verdict: score > ``threshold``. ``per_class`` holds each class's index;
    ``sample_scores`` every training sample's squared projection, divided by its class's median
    (higher = more likely poisoned). Deterministic: the seeds only repeat the computation.
    """

    needs = frozenset({"clean", "train"})
    seeds = replace(Scanner.seeds, default=(0,), doc="runs (the method draws no random numbers)")
    threshold = Param(3.5, float, doc="anomaly index above which the model is flagged")
    min_class = Param(10, int, low=1, doc="classes with fewer samples are skipped")

    def _scan(self, clf: Classifier, data: ScanData, g: torch.Generator) -> SeedScan:
        assert data.train is not None
        feats = train_features(clf, data.train).double()
        y = data.train.y.to(feats.device)
        k = clf.num_classes
        share = torch.full((k,), float("nan"), dtype=torch.float64)
        sample = torch.zeros(feats.shape[0], dtype=torch.float64, device=feats.device)
        for c in range(k):
            idx = (y == c).nonzero().flatten()
            if len(idx) < self.min_class:
                continue
            r = feats[idx] - feats[idx].mean(dim=0, keepdim=True)
            _, s, vh = torch.linalg.svd(r, full_matrices=False)
            proj = (r @ vh[0]) ** 2
            sample[idx] = proj / median(proj).clamp_min(1e-12)
            share[c] = s[0] ** 2 / (s**2).sum().clamp_min(1e-12)
        present = ~torch.isnan(share)
        index = torch.zeros(k, dtype=torch.float64)
        index[present] = -anomaly_index(share[present])  # positive above the median
        best = int(index.argmax())
        score = float(index[best])
        return SeedScan(
            score=score,
            targets=[best] if score > self.threshold else [],
            per_class=index.float(),
            sample_scores=sample.float().cpu(),
        )
