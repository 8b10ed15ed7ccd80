"""Gold reward for ``mlsafety audit --gold examples/proxy_gaming/gold.py:gold`` (and ``overoptimization lm``).

The zoo's strongest sentiment scorer, ``minilm-mr`` (trained on all of mr's training labels): the
log-odds of *positive* for each text, a float tensor (N,).
"""

from __future__ import annotations

from mlsafety.monitoring.proxy_gaming.scorers import GoldScorer


def gold() -> GoldScorer:
    return GoldScorer()
