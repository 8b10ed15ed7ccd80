"""Proxy rewards for ``mlsafety audit --reward examples/proxy_gaming/proxy.py:bow_50`` (or ``minilm_200``,
``bow_top30``).

Weaker sentiment scorers: logistic regression on few mr training labels (seeded), over bag-of-words
counts or frozen MiniLM embeddings, or on more labels but fewer features; each returns the log-odds
of *positive*, a float tensor (N,).
"""

from __future__ import annotations

from mlsafety.monitoring.proxy_gaming.scorers import LinearProxy, train_text_proxy


def bow_50() -> LinearProxy:
    """Bag-of-words proxy on 50 labels: the most gameable."""
    return train_text_proxy(50, "bow", seed=0)


def minilm_200() -> LinearProxy:
    """MiniLM-embedding proxy on 200 labels."""
    return train_text_proxy(200, "minilm", seed=0)


def bow_top30() -> LinearProxy:
    """Bag-of-words proxy on 1000 labels that sees only the 30 most frequent words: fewer features."""
    return train_text_proxy(1000, "bow", seed=0, max_features=30)
