"""Activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by
Activation Clustering", 2018).

Poisoned training samples are classified as their (target) label for a different reason than the
clean ones, so within the target class the penultimate activations split into two clusters. For
every class: centre the activations, reduce them to ``dims`` dimensions (PCA here; the paper uses
ICA, which is stochastic and slower: its ``dims`` components are the principal components
whitened to unit variance and then rotated, and k-means is unaffected by the rotation but not by
the whitening, so the clusters and silhouettes can differ from the paper's), split them with 2-means
and measure the split with the silhouette coefficient. The smaller cluster of a well-split class
is the suspected poison.
"""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param
from mlsafety.monitoring.trojans.scanners._base import ScanData, Scanner, SeedScan, register_scanner
from mlsafety.monitoring.trojans.scanners._features import kmeans2, pca, silhouette, train_features


@register_scanner("activation-clustering", tags=("seed-spread",))
class ActivationClustering(Scanner):
    """Two-means clustering of each class's activations on the training set.

    Score: the largest silhouette coefficient over classes whose smaller cluster holds at most
    ``max_share`` of the class (higher = more likely trojaned); verdict: score > ``threshold``.
    ``per_class`` holds every class's silhouette (0 for classes whose split is too even);
    ``sample_scores`` for each training sample the standardised distance to its class's large
    cluster minus the distance to the small one (higher = more likely poisoned). The seeds change
    the k-means initialisations.
    """

    needs = frozenset({"clean", "train"})
    threshold = Param(0.55, float, doc="silhouette above which the model is flagged")
    dims = Param(10, int, low=1, doc="dimensions kept before clustering (10 in the paper)")
    max_share = Param(
        0.35,
        float,
        low=0,
        low_open=True,
        high=0.5,
        high_open=True,
        doc="largest share of a class the poison cluster may hold (the paper's 35%)",
    )
    min_class = Param(10, int, low=1, doc="classes with fewer samples are skipped")

    def _scan(self, clf: Classifier, data: ScanData, g: torch.Generator) -> SeedScan:
        assert data.train is not None
        feats = train_features(clf, data.train)
        y = data.train.y.to(feats.device)
        k = clf.num_classes
        per_class = torch.zeros(k)
        sample = torch.zeros(feats.shape[0], device=feats.device)
        for c in range(k):
            idx = (y == c).nonzero().flatten()
            if len(idx) < self.min_class:
                continue
            z = pca(feats[idx], self.dims)
            labels = kmeans2(z, g)
            sizes = torch.bincount(labels, minlength=2)
            small = int(sizes.argmin())
            centres = torch.stack(
                [z[labels == j].mean(dim=0) if bool((labels == j).any()) else z.mean(0) for j in (0, 1)]
            )
            dist = torch.cdist(z, centres)
            scale = z.std().clamp_min(1e-12)
            sample[idx] = (dist[:, 1 - small] - dist[:, small]) / scale
            if float(sizes[small]) / len(idx) <= self.max_share:
                per_class[c] = silhouette(z, labels)
        best = int(per_class.argmax())
        score = float(per_class[best])
        return SeedScan(
            score=score,
            targets=[best] if score > self.threshold else [],
            per_class=per_class,
            sample_scores=sample.cpu(),
        )
