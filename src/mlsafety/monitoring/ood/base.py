"""The detector family: the :class:`Detector` base class, its registry and factory, small shared helpers.

A detector turns inputs into anomaly scores (higher = more anomalous). It declares what it needs:

``logits``, ``features``
    computable from one forward pass (:class:`~mlsafety.core.Outputs`). Such detectors implement
    :meth:`Detector._fit` / :meth:`Detector._score`, so the engine
    (:mod:`~mlsafety.monitoring.ood.engine`) can feed every one of them from the same pass.
``layers``
    intermediate activations (the outputs of named layers, pooled or reduced as the detector asks:
    :meth:`Detector.layer_taps`), taken by forward hooks in the same pass as the logits. A detector that
    needs no more than ``logits``, ``features`` and ``layers`` is *layered*: it implements
    :meth:`Detector._fit` / :meth:`Detector._score` reading :attr:`~mlsafety.core.Outputs.layers`, and the
    engine feeds it from the pass it makes anyway. Default layers: :func:`~mlsafety.core.block_layers`.
``grad``, ``input-grad``, ``multi-pass``, ``intervention``
    need the model itself (gradients, input pre-processing, several stochastic passes, a pass with a
    layer's output changed); they override :meth:`Detector._fit_model` / :meth:`Detector._score_model`
    and run on their own (with ``layers`` too when they read intermediate layers).

Hyper-parameters are declared with :class:`~mlsafety.core.Param` (the family kit gives the
constructor, validation, ``repr``, ``get_params`` and the parameters stored in result rows);
registry tags select groups of detectors (:data:`QUICK`: the handful of the quick audit profile and
of ``mlsafety ood eval``; :data:`IMAGE`, :data:`TEXT`: the modalities a detector supports;
:data:`NEEDS_DROPOUT`, :data:`NEEDS_MEMBERS`: what a model must offer).

Example:
    >>> det = DETECTORS.create("energy").fit(model, train_data)
    >>> scores = det.score(model, x)  # (N,), higher = more anomalous
    >>> DETECTORS.tagged(QUICK)       # ["energy", "knn", "mahalanobis", ...]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch

from mlsafety.core import (
    Classifier,
    HyperParams,
    InputError,
    LayerReduce,
    ModelLike,
    Outputs,
    Registry,
    as_classifier,
    block_layers,
    check_images,
    check_is_fitted,
    check_layer_names,
    frozen,
)
from mlsafety.monitoring.ood.engine import FitData, collect_inputs, collect_outputs, labels_or_pred, reuse

SHARED_NEEDS = frozenset({"logits", "features"})
"""What one shared forward pass provides."""

LAYERED_NEEDS = SHARED_NEEDS | {"layers"}
"""What one forward pass with hooks on intermediate layers provides."""

KNOWN_NEEDS = frozenset({"logits", "features", "layers", "grad", "input-grad", "multi-pass", "intervention"})

QUICK = "quick"
"""Tag of the detectors of the quick audit profile and of ``mlsafety ood eval``'s default (logit,
distance and shaping families)."""
IMAGE = "image"
"""Tag of detectors that work on image models (each one does)."""
TEXT = "text"
"""Tag of detectors that work on text models: those fed by the shared forward pass (logits and the
head's input features). Detectors that perturb or differentiate the input (ODIN) or run the inputs
through the model again (MC dropout, ensembles) are image-only: they need pixel inputs."""
NEEDS_DROPOUT = "needs-dropout"
"""Tag of detectors that need dropout layers in the model."""
NEEDS_MEMBERS = "needs-members"
"""Tag of detectors that need several models (an ensemble), not one."""
OPT_IN = "opt-in"
"""Tag of detectors the audit's full profile leaves out unless they are named (``[params.ood] detectors``,
``--ood-detector``): those that cost more than a shared pass (gradients, a pass of their own) or read
intermediate layers, added after the first wave, so the default audit's detectors and rows stay as they were."""
NEEDS_HEAD_WEIGHTS = "needs-head-weights"
"""Tag of detectors that recompute logits from features with the head's weights (``W f + b``, :func:`head_of`):
they need a head whose logits are an affine map of its pooled input (a Linear, or a 1x1 convolution followed by
average pooling; :attr:`~mlsafety.core.HeadInfo.affine`)."""

D = TypeVar("D", bound="Detector")


class Detector(HyperParams):
    """Base class of OOD detectors: ``fit(model, data)`` on in-distribution data, ``score(model, x)``.

    Subclasses set ``needs`` and ``requires_fit``, declare their hyper-parameters as
    :class:`~mlsafety.core.Param` class attributes and write either :meth:`_fit` / :meth:`_score`
    (from shared forward outputs) or :meth:`_fit_model` / :meth:`_score_model` (from the model).
    Learned state ends in ``_``. The base class wraps the model, checks inputs, computes the
    forward pass, restores the model and raises :class:`~mlsafety.core.NotFittedError` when a
    detector that learns state is used unfitted.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    requires_fit: ClassVar[bool] = False
    fit_held_out: ClassVar[bool] = False
    """True for a detector whose method fits it on held-out data, not the model's training data (a
    temperature fitted on inputs the model has memorised comes out too sharp); a
    :class:`~mlsafety.monitoring.ood.ScoreCache` given ``held_out`` data fits it there."""

    # -- public API ----------------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """True when one shared forward pass (logits, features) is all the detector needs."""
        return self.needs <= SHARED_NEEDS

    @property
    def layered(self) -> bool:
        """True when a forward pass with hooks on intermediate layers is all the detector needs (it reads
        :attr:`~mlsafety.core.Outputs.layers`, asked for by :meth:`layer_taps`)."""
        return "layers" in self.needs and self.needs <= LAYERED_NEEDS

    def layer_taps(self, clf: Classifier) -> dict[str, tuple[str, LayerReduce]]:
        """The intermediate activations this detector reads: ``{key: (module name, reduce)}`` (none by
        default; layered detectors override it)."""
        return {}

    def fit(self: D, model: ModelLike, data: FitData, batch_size: int = 256) -> D:
        """Learn what the detector needs from in-distribution ``data`` only; returns ``self``.

        Labels are used where the method needs classes (e.g. Mahalanobis' class means); where
        ``data`` has none (or ``-1``), the model's predictions stand in.
        """
        clf = as_classifier(model)
        if self.shared and type(self)._fit is Detector._fit:
            self.fitted_ = True  # stateless: no forward pass needed
        elif self.shared:
            outputs, labels = collect_outputs(clf, data, batch_size, features="features" in self.needs)
            self.fit_outputs(clf, outputs, labels)
        elif self.layered:
            outputs, labels = collect_outputs(clf, data, batch_size, layers=self.layer_taps(clf))
            self.fit_outputs(clf, outputs, labels)
        else:
            x, y = collect_inputs(data)
            self._fit_model(clf, x, y)
            self.fitted_ = True
        return self

    def score(self, model: ModelLike, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Anomaly scores ``(N,)`` for inputs ``x`` (N, C, H, W) in [0, 1]; higher = more anomalous."""
        clf = as_classifier(model)
        self._check_fitted()
        if self.shared:
            outputs, _ = collect_outputs(clf, x, batch_size, features="features" in self.needs)
            return self.score_outputs(clf, outputs)
        if self.layered:
            outputs, _ = collect_outputs(clf, x, batch_size, layers=self.layer_taps(clf))
            return self.score_outputs(clf, outputs)
        return self._finish(self._score_model(clf, x, batch_size))

    def fit_outputs(self: D, model: ModelLike, outputs: Outputs, labels: torch.Tensor | None = None) -> D:
        """Fit from forward outputs of in-distribution data (``labels`` (N,) optional); returns self."""
        self._check_shared()
        clf = as_classifier(model)
        self._check_outputs(outputs)
        self._check_layers(clf, outputs)
        labels = reuse("labels", (outputs, labels), lambda: labels_or_pred(labels, outputs))
        self._fit(clf, outputs, labels)
        self.fitted_ = True
        return self

    def score_outputs(self, model: ModelLike, outputs: Outputs) -> torch.Tensor:
        """Anomaly scores ``(N,)`` from forward outputs (no forward pass of its own), detached, float32."""
        return self._finish(self.score_graph(model, outputs))

    def score_graph(self, model: ModelLike, outputs: Outputs) -> torch.Tensor:
        """Anomaly scores ``(N,)`` from forward outputs as the method computes them: not detached, in
        the method's own dtype, so gradients flow back to the outputs (a monitor-aware attack
        differentiates them). Fit the detector on tensors made outside ``torch.inference_mode``
        when its learned state has to take part in autograd."""
        self._check_shared()
        self._check_fitted()
        self._check_outputs(outputs)
        clf = as_classifier(model)
        self._check_layers(clf, outputs)
        return self._score(clf, outputs)

    def prepared_scorer(self) -> Callable[[Outputs], torch.Tensor] | None:
        """A scorer of forward outputs equal to :meth:`score_outputs` (the same float32 scores, bit for bit)
        for callers that score many small batches with one fitted detector (the runtime guard): what
        ``score_outputs`` derives from the fitted state on every call is derived once, and the checks
        are left to the caller. Built from the state as it is now: build it again after moving the
        state to another device. None (the default): no such scorer; use :meth:`score_outputs`."""
        return None

    def unusable(self, model: ModelLike, probe: torch.Tensor) -> str | None:
        """Why this detector cannot run on ``model`` (one line), found on a few ``probe`` inputs without
        fitting; None when it can (the default). The audit skips such a detector with the reason."""
        return None

    def plan(self, outputs: Outputs) -> None:
        """Announce work this detector will ask of the bank search when scoring ``outputs``, so
        that the engine can do it together with other detectors' (nothing by default)."""

    # -- to write ------------------------------------------------------------------------------
    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        """Learn state from in-distribution outputs (nothing by default)."""

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        raise NotImplementedError(f"detector {self.name!r} must implement _score or _score_model")

    def _fit_model(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Learn state with access to the model (nothing by default)."""

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        raise NotImplementedError(f"detector {self.name!r} must implement _score_model")

    # -- chores --------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.requires_fit:
            check_is_fitted(self, hint="call .fit(model, in_distribution_data) first")

    def _check_shared(self) -> None:
        if not (self.shared or self.layered):
            raise InputError(
                f"detector {self.name!r} needs {sorted(self.needs - SHARED_NEEDS)}, which a shared forward pass "
                "cannot give; call fit(model, data) / score(model, x) instead"
            )

    def _check_outputs(self, outputs: Outputs) -> None:
        if "features" in self.needs and outputs.features is None:
            raise InputError(
                f"detector {self.name!r} needs penultimate features; the model has no nn.Linear head "
                "(wrap it with mlsafety.core.Classifier(model, head='name'))"
            )

    def _check_layers(self, clf: Classifier, outputs: Outputs) -> None:
        if self.layered:
            missing = [k for k in self.layer_taps(clf) if k not in (outputs.layers or {})]
            if missing:
                raise InputError(
                    f"detector {self.name!r} needs intermediate layers {missing}, which these forward outputs lack; "
                    "call fit(model, data) / score(model, x), or fit_detectors / score_detectors with the inputs"
                )

    @staticmethod
    def _finish(scores: torch.Tensor) -> torch.Tensor:
        return scores.detach().float().reshape(-1)


DETECTORS: Registry[Detector] = Registry("detector")
register = DETECTORS.register


def create(name: str, **params: Any) -> Detector:
    """A detector by registry name with hyper-parameters ``params`` (paper defaults otherwise)."""
    return DETECTORS.create(name, **params)


def available() -> list[str]:
    """Registered detector names, sorted."""
    return DETECTORS.available()


# -- small helpers the detectors share -------------------------------------------------------------
def preprocessed_scores(
    clf: Classifier,
    x: torch.Tensor,
    batch_size: int,
    step: float,
    objective: Callable[[torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Scores after the input pre-processing of ODIN (Liang et al. 2018) and Mahalanobis (Lee et al. 2018):
    per batch, one signed-gradient step of ``step`` (pixel units) that *raises* ``objective(x)`` (summed over
    the batch; e.g. the top log-softmax, or minus the smallest Mahalanobis distance), clamped to [0, 1], then
    ``score(x)`` of the moved inputs without gradients. ``step`` 0 scores the inputs as they are. The model
    is frozen (no parameter gradients) and restored."""
    check_images(x)
    out = []
    with frozen(clf.module):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(clf.device)
            if step > 0:
                with torch.enable_grad():
                    xg = xb.detach().clone().requires_grad_(True)
                    objective(xg).sum().backward()
                    grad = xg.grad
                assert grad is not None
                xb = (xb + step * grad.sign()).clamp(0, 1)
            with torch.inference_mode():
                out.append(score(xb))
    return torch.cat(out)


def head_of(clf: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's weight ``(K, D)`` and bias ``(K,)``, detached."""
    return clf.head_weight, clf.head_bias


def energy_of(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``-T logsumexp(logits / T)`` (N,); higher = more anomalous."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def resolve_layers(clf: Classifier, layers: tuple[str, ...] | None, who: str) -> list[str]:
    """The layers a detector reads: ``layers`` (checked: a missing one is named with the valid names), else
    :func:`~mlsafety.core.block_layers` of the model (its block outputs, the head left out). Layers are chosen
    before the pass that traces the head, so a classifier no pass has traced leaves out the pre-trace guess
    (the last Linear registered): give ``Classifier(model, head=...)`` or ``layers`` when the head is another."""
    if layers is not None:
        names = list(layers)
        check_layer_names(clf.module, names)
    else:
        names = block_layers(clf.module, clf.head_name)
    if not names:
        raise InputError(
            f"{who} found no intermediate layer in this model (no child with parameters besides the head); "
            "name some with layers=[module names]"
        )
    return names


def layers_problem(clf: Classifier, layers: tuple[str, ...] | None, who: str) -> str | None:
    """:func:`resolve_layers`' refusal as a phrase (None when the layers resolve): for :meth:`Detector.unusable`."""
    try:
        resolve_layers(clf, layers, who)
    except InputError as e:
        return str(e)
    return None


def features_of(outputs: Outputs) -> torch.Tensor:
    """The penultimate features of ``outputs``; an :class:`InputError` when the model has none."""
    if outputs.features is None:
        raise InputError("this detector needs penultimate features; the model has no nn.Linear head")
    return outputs.features
