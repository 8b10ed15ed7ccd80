"""Sentiment reward scorers for texts: the gold reward and weaker proxies (the real-LM variant of issue 17).

Gao, Schulman & Hilton (2022, "Scaling Laws for Reward Model Overoptimization") label samples with a
large *gold* reward model and train *proxy* reward models of several sizes on fewer of its labels. We
have no 6B gold model; the analogue here is a sentiment task:

* gold (:class:`GoldScorer`): ``minilm-mr``, the strongest sentiment classifier in the zoo (MiniLM with
  a fine-tuned top layer, trained on all of ``mr``'s 6,043 training labels); reward = its log-odds
  ``logit(positive) - logit(negative)``.
* proxies (:class:`LinearProxy`, built by :func:`train_text_proxy`): logistic regression on ``n_labels``
  seeded ``mr`` training sentences, over bag-of-words counts (``"bow"``: the vocabulary of those
  sentences only) or frozen ``minilm`` sentence embeddings (``"minilm"``); reward = the log-odds.
  Weaker by fewer labels (``n_labels``) or by fewer features (``max_features``: the ``k`` most
  frequent words of the training sentences, or the top ``k`` principal components of their embeddings).

Departures from the paper: the proxies learn from the human ``mr`` labels, not from the gold model's
labels (both are trained on the same kind of labels, so the gold is the best-informed, not the source
of the proxies' labels), and the rewards are standardised under the base policy's samples later, by
:func:`mlsafety.monitoring.proxy_gaming.lm.overoptimization_curve`, not here.

A scorer is any callable ``texts -> Tensor (N,)``: the contract of ``mlsafety audit --reward FILE.py:factory``
and ``--gold FILE.py:factory``; :func:`check_scorers` checks a pair against it. Example factory files:
``examples/proxy_gaming/gold.py`` and ``examples/proxy_gaming/proxy.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mlsafety.core import InputError, Texts, forward, generator
from mlsafety.zoo import load_dataset, load_model

Scorer = Callable[[Sequence[str]], torch.Tensor]
"""A reward for texts: N strings -> float tensor (N,), higher = more of what is rewarded."""

Features = Literal["bow", "minilm"]
FEATURES: tuple[str, ...] = ("bow", "minilm")


def _log_odds(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 1] - logits[:, 0]).double().cpu()


class GoldScorer:
    """The gold sentiment reward: ``minilm-mr``'s log-odds of *positive* for each text.

    Args:
        model: a two-class text classifier (label 1 = positive); default: the zoo's ``minilm-mr``.
        batch_size: texts per forward pass.
    """

    input_type = "text"

    def __init__(self, model: nn.Module | None = None, batch_size: int = 256) -> None:
        self.model = model if model is not None else load_model("minilm-mr")
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = forward(self.model, Texts(list(texts)), batch_size=self.batch_size, features=False)
        return _log_odds(out.logits)


def embed_minilm(texts: Sequence[str], encoder: nn.Module | None = None, batch_size: int = 256) -> torch.Tensor:
    """Frozen ``minilm`` sentence embeddings (mean-pooled, not normalised) of ``texts``: float64 (N, 384)."""
    enc = encoder if encoder is not None else load_model("minilm")
    return forward(enc, Texts(list(texts)), batch_size=batch_size, features=False).logits.double().cpu()


class LinearProxy:
    """A proxy sentiment reward: logistic regression on few labels; reward = its log-odds of *positive*.

    Constructors store settings; :meth:`fit` learns (``vectorizer_``, ``classifier_``).

    Args:
        features: ``"bow"`` (binary bag-of-words over the training sentences' vocabulary) or
            ``"minilm"`` (frozen ``minilm`` embeddings).
        c: inverse L2 strength of the logistic regression (scikit-learn's ``C``).
        encoder: the ``minilm`` encoder for ``"minilm"`` features; default: the zoo's.
        max_features: a proxy that sees fewer features: ``"bow"`` keeps the ``k`` most frequent words of
            the training sentences, ``"minilm"`` the top ``k`` principal components of their embeddings
            (at most the number of training sentences); None: all.
    """

    input_type = "text"

    def __init__(
        self,
        features: Features = "minilm",
        c: float = 1.0,
        encoder: nn.Module | None = None,
        max_features: int | None = None,
    ) -> None:
        if features not in FEATURES:
            raise InputError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        if not c > 0:
            raise InputError(f"c must be > 0, got {c!r}")
        if max_features is not None and (
            isinstance(max_features, bool) or not isinstance(max_features, int) or max_features < 1
        ):
            raise InputError(f"max_features must be a positive integer or None, got {max_features!r}")
        self.features = features
        self.c = c
        self.encoder = encoder
        self.max_features = max_features
        self.vectorizer_: Any = None
        self.projection_: Any = None  # (mean, components) of the kept principal components ("minilm")
        self.classifier_: Any = None

    def _project(self, x: np.ndarray) -> np.ndarray:
        if self.projection_ is None:
            return x
        mean, components = self.projection_
        return np.asarray((x - mean) @ components.T)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        if self.encoder is None:
            self.encoder = load_model("minilm")
        return embed_minilm(texts, self.encoder)

    def _x(self, texts: Sequence[str]) -> Any:
        if self.features == "bow":
            return self.vectorizer_.transform(list(texts))
        return self._project(self._embed(texts).cpu().numpy())  # the encoder may run on a GPU

    def fit(self, texts: Sequence[str], labels: torch.Tensor, embeddings: torch.Tensor | None = None) -> LinearProxy:
        """Learn from ``texts`` and 0/1 ``labels`` (1 = positive); both classes must occur.

        ``embeddings``: the texts' ``minilm`` embeddings (N, 384) when already computed (``"minilm"`` only)."""
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression

        y = labels.detach().cpu().numpy()
        if len(texts) != len(y) or len(set(y.tolist())) != 2:
            raise InputError("a proxy needs as many 0/1 labels as texts, with both classes present")
        k = self.max_features
        if self.features == "bow":
            self.vectorizer_ = CountVectorizer(binary=True, lowercase=True, max_features=k).fit(list(texts))
            x = self._x(texts)
        else:
            if k is not None and k > len(y):
                raise InputError(
                    f"max_features={k} principal components need at least {k} training texts, got {len(y)}"
                )
            self.projection_ = None
            x = (self._embed(texts) if embeddings is None else embeddings).detach().double().cpu().numpy()
            if k is not None:
                from sklearn.decomposition import PCA

                pca = PCA(n_components=k, svd_solver="full").fit(x)
                self.projection_ = (pca.mean_, pca.components_)
                x = self._project(x)
        self.classifier_ = LogisticRegression(C=self.c, max_iter=2000).fit(x, y)
        return self

    def score_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The reward from precomputed ``minilm`` embeddings (N, 384) (:func:`embed_minilm`), so several
        ``"minilm"`` proxies share one encoder pass; float64 (N,)."""
        if self.features != "minilm" or self.classifier_ is None:
            raise InputError("score_embeddings needs a fitted proxy with features='minilm'")
        x = self._project(embeddings.detach().double().cpu().numpy())
        return torch.from_numpy(np.asarray(self.classifier_.decision_function(x), dtype=np.float64))

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if self.classifier_ is None:
            raise InputError("the proxy is not fitted: call fit(texts, labels) or use train_text_proxy(...)")
        return torch.from_numpy(np.asarray(self.classifier_.decision_function(self._x(texts)), dtype=np.float64))


def train_text_proxy(
    n_labels: int,
    features: Features = "minilm",
    seed: int = 0,
    c: float = 1.0,
    encoder: nn.Module | None = None,
    train_embeddings: torch.Tensor | None = None,
    max_features: int | None = None,
) -> LinearProxy:
    """A proxy trained on ``n_labels`` ``mr`` training sentences drawn without replacement by ``seed``.

    ``max_features``: see :class:`LinearProxy` (a proxy with fewer features, on the same labels).

    The draw is stratified only by chance (redrawn with the next stream until both classes occur),
    so the same ``(n_labels, seed)`` always gives the same proxy. ``train_embeddings``: the ``minilm``
    embeddings of the whole ``mr`` training split (:func:`embed_minilm`), so many proxies share one pass.
    """
    if not isinstance(n_labels, int) or n_labels < 2:
        raise InputError(f"n_labels must be an integer >= 2, got {n_labels!r}")
    train = load_dataset("mr", split="train")
    if n_labels > len(train):
        raise InputError(f"n_labels must be at most {len(train)} (mr's training split), got {n_labels}")
    for attempt in range(100):
        idx = torch.randperm(len(train), generator=generator(seed, "proxy", n_labels, attempt))[:n_labels]
        y = train.y[idx]
        if 0 < int(y.sum()) < n_labels:
            break
    texts = [train.x[int(i)] for i in idx]
    emb = None if train_embeddings is None or features != "minilm" else train_embeddings[idx]
    return LinearProxy(features, c, encoder, max_features).fit(texts, y, emb)


def check_scorers(scorers: dict[str, Any], probe: Sequence[str] | None) -> None:
    """Refuse scorers that differ in input type or break the contract ``texts -> Tensor (N,)`` on ``probe``.

    A scorer may declare ``input_type`` (``"text"`` here); two scorers that declare different ones, a
    scorer that raises (any exception) on a list of str, or one that returns anything but N finite
    numbers raise :class:`InputError` (one line naming the scorer). ``probe=None`` checks the input
    types only (for scorers already probed, e.g. by :func:`mlsafety.audit.load_scorer`).
    """
    types = {name: getattr(fn, "input_type", "text") for name, fn in scorers.items()}
    if len(set(types.values())) > 1:
        listed = ", ".join(f"{k} takes {v}" for k, v in types.items())
        raise InputError(f"the rewards take different input types ({listed}): give scorers of texts -> Tensor (N,)")
    if probe is None:
        return
    for name, fn in scorers.items():
        if not callable(fn):
            raise InputError(f"the {name} reward is not callable: give a function texts -> Tensor (N,)")
        try:
            out = fn(list(probe))
        except Exception as e:  # a user's scorer may raise anything; one line either way
            raise InputError(
                f"the {name} reward does not take a list of texts ({type(e).__name__}: {e}): "
                "give a function texts -> Tensor (N,)"
            ) from e
        if not isinstance(out, torch.Tensor) or out.shape != (len(probe),):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"the {name} reward returned {shape} for {len(probe)} texts: it must return a Tensor (N,)")
        if not all(math.isfinite(v) for v in out.double().tolist()):
            raise InputError(f"the {name} reward returned non-finite values: it must return finite numbers")
