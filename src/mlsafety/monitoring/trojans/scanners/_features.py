"""Helpers shared by the training-data scanners: penultimate features per class, PCA, k-means."""

from __future__ import annotations

import torch

from mlsafety.core import ArrayDataset, Classifier, forward


def train_features(clf: Classifier, train: ArrayDataset, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features (N, D) of the training inputs, from one forward pass."""
    out = forward(clf, train.x, batch_size)
    assert out.features is not None
    return out.features.float()


def pca(z: torch.Tensor, dims: int) -> torch.Tensor:
    """Centred ``z`` (n, D) projected on its top ``dims`` principal directions."""
    zc = z - z.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(zc, full_matrices=False)
    return zc @ vh[: min(dims, vh.shape[0])].T


def kmeans2(z: torch.Tensor, g: torch.Generator, restarts: int = 5, iters: int = 50) -> torch.Tensor:
    """Labels (n,) in {0, 1} of the best of ``restarts`` 2-means runs (k-means++ seeding, Lloyd steps)."""
    n = z.shape[0]
    best_labels = torch.zeros(n, dtype=torch.long, device=z.device)
    best_inertia = float("inf")
    for _ in range(restarts):
        first = int(torch.randint(0, n, (1,), generator=g))
        d = ((z - z[first]) ** 2).sum(dim=1)
        probs = (d / d.sum().clamp_min(1e-12)).cpu()
        second = int(torch.multinomial(probs, 1, generator=g)) if float(d.sum()) > 0 else first
        centres = torch.stack([z[first], z[second]])
        labels = torch.zeros(n, dtype=torch.long, device=z.device)
        for _ in range(iters):
            labels_new = torch.cdist(z, centres).argmin(dim=1)
            for k in range(2):
                if bool((labels_new == k).any()):
                    centres[k] = z[labels_new == k].mean(dim=0)
            if torch.equal(labels_new, labels):
                break
            labels = labels_new
        inertia = float(((z - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_inertia, best_labels = inertia, labels.clone()
    return best_labels


def silhouette(z: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette coefficient of a two-cluster labelling (0 when one cluster is empty)."""
    if int(labels.min()) == int(labels.max()):
        return 0.0
    d = torch.cdist(z, z)
    same = labels[:, None] == labels[None, :]
    n_same = same.sum(dim=1).float() - 1
    a = (d * same).sum(dim=1) / n_same.clamp_min(1)
    b = (d * ~same).sum(dim=1) / (~same).sum(dim=1).float().clamp_min(1)
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s = torch.where(n_same > 0, s, torch.zeros_like(s))
    return float(s.mean())
