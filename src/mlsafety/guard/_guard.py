"""The runtime guard: the model and the monitor the audit chose, in one ``nn.Module``.

``guard(x)`` runs the model once (a hook on the head reads the features, as the shared forward
pass does, :meth:`mlsafety.core.Classifier.features_and_logits`) and returns the logits, the
monitor's decision (accept / reject), its score and a reason for every input. The decision is
:meth:`mlsafety.systemic.Monitor.flags` on the same detector score and confidence the audit's
defence-in-depth check computes, so a guard flags exactly the inputs the audit's monitor flags.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, Outputs, device_of, eval_mode, pool_features
from mlsafety.monitoring import ood
from mlsafety.systemic import Monitor

ACCEPTED = "accepted"
HIGH_SCORE = "detector score above threshold"
LOW_CONFIDENCE = "confidence below threshold"


@dataclass(frozen=True)
class GuardOutput:
    """What the guard says about a batch of N inputs.

    Attributes:
        logits: (N, K) the model's logits.
        accept: (N,) bool, True when the monitor lets the answer through.
        score: (N,) float, the monitor's violation (:meth:`~mlsafety.systemic.Monitor.violation`:
            how far inside the rejected region, in validation standard deviations; > 0 is rejected).
        reasons: one reason per input (``accepted``, or which part of the monitor rejected it).
    """

    logits: torch.Tensor
    accept: torch.Tensor
    score: torch.Tensor
    reasons: list[str]

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


REASONS = {
    (True, True): f"{HIGH_SCORE} and {LOW_CONFIDENCE}",
    (True, False): HIGH_SCORE,
    (False, True): LOW_CONFIDENCE,
    (False, False): ACCEPTED,
}
"""The reason for each (score above its threshold, confidence below its threshold)."""

FEW = 16
"""Batches of at most this many inputs are decided on Python floats (:meth:`Guard._decide_few`)."""

SEP = "::"


def detector_state(det: ood.Detector) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The fitted detector's learned state (attributes ending in ``_``) as flat tensors and plain values.

    A tuple or list of tensors is stored element by element (``name::0``, ``name::1``...) and its
    kind and length recorded among the plain values (``{"name": {"sequence": "tuple", "len": 3}}``).

    Raises:
        InputError: state of another type (the detector cannot be exported).
    """
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for k, v in vars(det).items():
        if not k.endswith("_"):
            continue
        if isinstance(v, torch.Tensor):
            tensors[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in v):
            tensors.update({f"{k}{SEP}{i}": t for i, t in enumerate(v)})
            plain[k] = {"sequence": type(v).__name__, "len": len(v)}
        elif isinstance(v, (bool, int, float, str, type(None))):
            plain[k] = {"value": v}
        else:
            raise InputError(
                f"detector {det.name!r} keeps state {k} of type {type(v).__name__}, which a guard cannot store"
            )
    return tensors, plain


def restore_state(det: ood.Detector, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    """Set the state :func:`detector_state` took apart back on ``det``."""
    for k, v in tensors.items():
        if SEP not in k:
            setattr(det, k, v)
    for k, spec in plain.items():
        if "value" in spec:
            setattr(det, k, spec["value"])
        else:
            items = [tensors[f"{k}{SEP}{i}"] for i in range(int(spec["len"]))]
            setattr(det, k, tuple(items) if spec["sequence"] == "tuple" else items)


def _move(v: Any, fn: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return fn(v)
    if isinstance(v, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in v):
        return type(v)(fn(t) for t in v)
    return v


class _HeadInput:
    """A forward pre-hook that keeps the head's first positional input, only between :meth:`start` and
    :meth:`stop` and only for the thread that called them (a model used elsewhere meanwhile is untouched)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def start(self) -> None:
        self._local.on, self._local.value = True, None

    def stop(self) -> torch.Tensor | None:
        value, self._local.on, self._local.value = getattr(self._local, "value", None), False, None
        return value

    def __reduce__(self) -> tuple[type, tuple[()]]:  # a copied or pickled model gets an idle hook
        return (_HeadInput, ())

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        local = self._local
        if getattr(local, "on", False) and args and isinstance(args[0], torch.Tensor):
            local.value = args[0]


@functools.lru_cache(maxsize=64)
def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``, as torch rounds a Python number it compares with a tensor of that dtype."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype).item())


def _first_parameter(model: nn.Module) -> list[nn.Parameter]:
    return [p for p, _ in zip(model.parameters(), range(1), strict=False)]


class Guard(nn.Module):
    """A classifier guarded by a fitted monitor (one forward pass for logits, score and decision).

    Device follows the model: ``guard.to("cuda")`` moves the model and the detector's state, and
    inputs are moved to the model's device. Use it as any module in an inference loop::

        guard = load_guard("guard-dir", model)
        with torch.no_grad():
            out = guard(x)          # GuardOutput: logits, accept, score, reasons
            answered = out.pred[out.accept]

    Args:
        model: the classifier module (inputs in [0, 1], as the audit fed it).
        monitor: thresholds and parts, as the audit's defence-in-depth check chose them.
        detector: the monitor's fitted detector (None for a confidence-only monitor).
        head: the dotted name of the layer whose input is the features (None: found by tracing).
    """

    def __init__(
        self, model: nn.Module, monitor: Monitor, detector: ood.Detector | None = None, head: str | None = None
    ) -> None:
        super().__init__()
        if (monitor.detector is None) != (detector is None):
            raise InputError(
                f"monitor {monitor.name!r} and the detector given do not match (detector {monitor.detector!r})"
            )
        if detector is not None and not detector.shared:
            raise InputError(
                f"detector {detector.name!r} needs more than one forward pass; a guard takes shared-pass detectors"
            )
        self.model = model
        self.monitor = monitor
        self.detector = detector
        self.head = head
        self._clf = Classifier(model, head=head)
        self._needs_features = detector is not None and "features" in detector.needs
        # The per-call fast path (same outputs, less Python per call; see forward): what the audit's
        # general path re-derives on every call is taken once here.
        self._params = _first_parameter(model)  # the inputs go to its device
        self._submodules = list(model.modules())  # eval mode is checked on these, not switched and restored
        self._fast_score = False
        self._scorer: Callable[[Outputs], torch.Tensor] | None = None
        if detector is not None:
            detector._check_fitted()  # refused now, not on the first call
            self._fast_score = detector.shared and not detector.layered
            self._scorer = detector.prepared_scorer() if self._fast_score else None
        self._capture = _HeadInput()  # the head's input, read by a hook put on the head at the first fast pass
        self._capture_hook: Any = None

    def _apply(self, fn: Any, recurse: bool = True) -> Guard:  # type: ignore[override]
        super()._apply(fn, recurse)
        self._params = _first_parameter(self.model)  # a conversion may have replaced the parameters
        if self.detector is not None:  # the detector's learned state follows the model's device
            for k, v in list(vars(self.detector).items()):
                if k.endswith("_"):
                    setattr(self.detector, k, _move(v, fn))
            if self._scorer is not None:  # its prepared copies too
                self._scorer = self.detector.prepared_scorer()
        return self

    def outputs(self, x: torch.Tensor) -> Outputs:
        """Logits (and the features the detector needs) from one forward pass, on the model's device."""
        x = x.to(self._params[0].device if self._params else device_of(self.model))
        with torch.no_grad():
            if not self._needs_features:  # eval mode as on the features path: no dropout in a guarded answer
                with eval_mode(self.model, any(m.training for m in self._submodules)):
                    return Outputs(self._clf.logits(x), None)
            head = self._clf.head
            if self._clf.head_info is None or head is None or any(m.training for m in self._submodules):
                feats, logits = self._clf.features_and_logits(x)  # traces the head / switches to eval mode
                return Outputs(logits, feats)
            return self._eval_pass(x)

    def _eval_pass(self, x: torch.Tensor) -> Outputs:
        """:meth:`~mlsafety.core.Classifier.features_and_logits` for a model already in eval mode with its
        head traced, in the model's current mode (its submodules are not walked to switch and restore
        their modes), the head's input read by a hook that stays on the head (put there once, not once
        per call; it keeps nothing while no guard pass runs, and the guard's deletion removes it)."""
        head = self._clf.head
        cap = self._capture
        if self._capture_hook is None:
            self._capture_hook = head.register_forward_pre_hook(cap)  # type: ignore[union-attr]
            weakref.finalize(self, self._capture_hook.remove)
        cap.start()
        try:
            logits = self._clf.logits(x)
        finally:
            feats = cap.stop()
        if feats is None:  # the head took its input by keyword: the general path's hook reads those
            feats, logits = self._clf.features_and_logits(x, train=True)
            return Outputs(logits, feats)
        return Outputs(logits, pool_features(feats, head))

    def decide(self, outputs: Outputs) -> GuardOutput:
        """The monitor's decision on forward ``outputs`` (no forward pass)."""
        mon = self.monitor
        scores = None
        det = self.detector
        if det is not None:  # score_outputs' body, its checks done once at construction
            fast = self._fast_score and (outputs.features is not None or "features" not in det.needs)
            if fast and self._scorer is not None:
                scores = self._scorer(outputs)
            elif fast:
                scores = det._finish(det._score(self._clf, outputs))
            else:
                scores = det.score_outputs(self._clf, outputs)
        # the confidence only where the monitor reads it (a detector-only monitor ignores it)
        confidence = outputs.probs.amax(dim=1) if mon.confidence_threshold is not None else None
        if outputs.logits.shape[0] <= FEW and (mon.score_threshold is not None or confidence is not None):
            return self._decide_few(outputs.logits, scores, confidence)
        # Monitor.flags with its two comparisons kept for the reasons (each made once, not twice)
        high = low = None
        if mon.score_threshold is not None:
            if scores is None:
                raise InputError(f"monitor {mon.name!r} needs detector scores")
            high = scores.reshape(-1) > mon.score_threshold
        if confidence is not None and mon.confidence_threshold is not None:
            low = confidence.reshape(-1) < mon.confidence_threshold
        if high is not None and low is not None:
            flagged = high | low.to(high.device)
        elif high is not None or low is not None:
            flagged = high if high is not None else low  # type: ignore[assignment]
        else:
            flagged = mon.flags(scores, outputs.probs.amax(dim=1))  # a monitor of neither part: its own error
        violation = mon.violation(
            None if scores is None else scores.double(), None if confidence is None else confidence.double()
        ).float()
        n = flagged.shape[0]
        hi = high.tolist() if high is not None else [False] * n  # one transfer each, not one per input
        lo = low.tolist() if low is not None else [False] * n
        reasons = [REASONS[(h, c)] for h, c in zip(hi, lo)]
        return GuardOutput(outputs.logits, ~flagged, violation, reasons)

    def _decide_few(
        self, logits: torch.Tensor, scores: torch.Tensor | None, confidence: torch.Tensor | None
    ) -> GuardOutput:
        """:meth:`decide`'s tensor arithmetic done on Python floats, for a few inputs (fewer operations), with
        equal results bit for bit: a tensor's element is a Python float exactly; a comparison with a
        threshold is made, as torch makes it, against the threshold rounded to the tensor's dtype; the
        violation's float64 steps round as torch's do."""
        mon = self.monitor
        st, ct = mon.score_threshold, mon.confidence_threshold
        if st is not None and scores is None:
            raise InputError(f"monitor {mon.name!r} needs detector scores")
        s = scores.reshape(-1).tolist() if st is not None else None  # type: ignore[union-attr]
        c = confidence.reshape(-1).tolist() if confidence is not None else None
        st_cmp = _rounded(st, scores.dtype) if st is not None else None  # type: ignore[union-attr]
        ct_cmp = _rounded(ct, confidence.dtype) if c is not None else None  # type: ignore[union-attr]
        reasons, accept, violation = [], [], []
        for i in range(logits.shape[0]):
            si = s[i] if s is not None else math.nan
            ci = c[i] if c is not None else math.nan
            high = st_cmp is not None and si > st_cmp
            low = ct_cmp is not None and ci < ct_cmp
            v_high = (si - st) / mon.score_scale if st is not None else None
            v_low = (ct - ci) / mon.confidence_scale if ct_cmp is not None else None  # type: ignore[operator]
            if v_high is None or v_low is None:
                v = v_high if v_low is None else v_low
            else:  # torch.maximum: NaN when either is
                v = math.nan if math.isnan(v_high) or math.isnan(v_low) else max(v_high, v_low)
            reasons.append(REASONS[(high, low)])
            accept.append(not (high or low))
            violation.append(v)
        dev = logits.device
        return GuardOutput(
            logits,
            torch.tensor(accept, dtype=torch.bool, device=dev),
            torch.tensor(violation, dtype=torch.float32, device=dev),
            reasons,
        )

    def forward(self, x: torch.Tensor) -> GuardOutput:  # type: ignore[override]
        """Logits, decision, score and reason for inputs ``x`` (N, C, H, W) in [0, 1]."""
        return self.decide(self.outputs(x))
