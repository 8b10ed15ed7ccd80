"""Detectors that score from the shared forward outputs keep their working memory bounded in N
(issue 12, point 6): KL matching works on blocks of rows instead of several (N, K) float64 arrays."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring import ood


def test_kl_matching_in_blocks_equals_the_one_shot_formula() -> None:
    """2,500 inputs x 1,000 classes: more rows than one block of 2^21 / K = 2,097, so a block that
    drops or repeats rows, or mixes templates across blocks, changes the scores."""
    g = torch.Generator().manual_seed(0)
    k = 1_000
    model = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, k)))
    fit = Outputs(torch.randn(3_000, k, generator=g) * 3, None)
    det = ood.create("kl-matching")
    ood.fit_detectors([det], model, None, outputs=fit, labels=torch.zeros(3_000, dtype=torch.long))
    logits = torch.randn(2_500, k, generator=g) * 3
    got = ood.score_detectors([det], model, outputs=Outputs(logits, None))["kl-matching"]
    logp = logits.double().log_softmax(dim=1)
    p = logp.exp()
    want = ((p * logp).sum(dim=1, keepdim=True) - p @ det.templates_.log().T).amin(dim=1)
    assert got.shape == (2_500,)
    assert got.tolist() == pytest.approx(want.float().tolist(), rel=1e-6)  # scores are returned in float32
