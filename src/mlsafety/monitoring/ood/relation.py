"""Neural relation graph (Kim et al., "Neural Relation Graph: A Unified Framework for Identifying
Label Noise and Outlier Data", NeurIPS 2023), its OOD score."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, TEXT, Detector, features_of, register


@register("relation", tags=(IMAGE, TEXT, OPT_IN))
class Relation(Detector):
    """Anomaly score ``-sum_j k(x, x_j)^t [k(x, x_j) > threshold]`` over the in-distribution bank ``x_j``.

    The relation kernel of two inputs is ``k(x, x') = max(cos(f, f'), 0) * (p . p')``: the clipped
    cosine similarity of their features times the inner product of their softmax probability vectors
    (the paper's kernel, high when two inputs look alike *and* are predicted alike). An input's score
    is the total weight of its edges to the in-distribution graph; edges not above ``threshold`` are
    cut, as in the paper. The bank is every fit input (unit features ``bank_``, probabilities
    ``probs_``), searched exactly in blocks of ``chunk`` queries.

    Args:
        power: the kernel's exponent ``t`` (OpenOOD's default; the paper sweeps 1 to 8).
        threshold: edges whose weight is not above it are cut (the paper's default).
        chunk: queries per block (memory ``chunk x N_fit`` floats).
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    power = Param(1.0, float, low=0, low_open=True, doc="exponent t of the relation kernel")
    threshold = Param(0.03, float, low=0, doc="edges not above this weight are cut")
    chunk = Param(1024, int, low=1, store=False, doc="queries per block of kernel values")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        self.bank_ = torch.nn.functional.normalize(features_of(outputs).float(), dim=1)
        self.probs_ = outputs.logits.float().softmax(dim=1)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        f = torch.nn.functional.normalize(features_of(outputs).float(), dim=1)
        p = outputs.logits.float().softmax(dim=1)
        bank, probs = self.bank_.to(f.device), self.probs_.to(f.device)
        out = []
        for start in range(0, f.shape[0], self.chunk):
            rel = (f[start : start + self.chunk] @ bank.T).clamp_min_(0)  # (chunk, N_fit), worked on in place
            rel.mul_(p[start : start + self.chunk] @ probs.T).masked_fill_(rel <= self.threshold, 0.0)
            out.append((rel if self.power == 1 else rel.pow_(self.power)).sum(dim=1))
        return -torch.cat(out) if out else f.new_zeros(0)
