"""The guard's per-call fast path gives exactly what the general path (the audit's) gives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, Outputs
from mlsafety.guard import Guard, GuardOutput, _guard
from mlsafety.guard._guard import ACCEPTED, FEW, HIGH_SCORE, LOW_CONFIDENCE
from mlsafety.monitoring import ood
from mlsafety.systemic import Monitor


def _setup(seed: int = 0) -> tuple[nn.Module, Monitor, ood.Detector, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 8 * 8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3),
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(120, 1, 8, 8, generator=g)
    model.eval()
    clf = Classifier(model)
    with torch.no_grad():
        feats, logits = clf.features_and_logits(x[:80])
    labels = logits.argmax(dim=1)
    from mlsafety.core import Outputs

    det = ood.create("mahalanobis").fit_outputs(clf, Outputs(logits, feats), labels)
    scores = det.score_outputs(clf, Outputs(logits, feats))
    correct = torch.ones(80, dtype=torch.bool)
    # a high false-alarm rate, so both parts reject some of the held-out inputs
    mon = Monitor.fit("mahalanobis+confidence", scores, correct, 0.4, logits.softmax(1).amax(1), detector="mahalanobis")
    return model, mon, det, x[80:]


def _reference(model: nn.Module, mon: Monitor, det: ood.Detector, x: torch.Tensor) -> tuple:
    """The general path, written out: Classifier pass in eval mode, score_outputs, Monitor.flags/violation."""
    from mlsafety.core import Outputs

    clf = Classifier(model)
    with torch.no_grad():
        feats, logits = clf.features_and_logits(x)
    scores = det.score_outputs(clf, Outputs(logits, feats))
    conf = logits.softmax(dim=1).amax(dim=1)
    flagged = mon.flags(scores, conf)
    violation = mon.violation(scores.double(), conf.double()).float()
    return logits, ~flagged, violation, scores > mon.score_threshold, conf < mon.confidence_threshold


def test_fast_path_equals_general_path_in_eval_and_train_mode() -> None:
    model, mon, det, x = _setup()
    _, _, _, high, low = _reference(model, mon, det, x)
    assert 0 < int(high.sum()) < len(x) and 0 < int(low.sum()) < len(x)  # both parts take part
    guard = Guard(model, mon, det)
    with torch.no_grad():
        for train in (False, True, False):  # first call traces, then the fast path; train: the model's modes
            for b in (1, 7, len(x)):
                model.eval()  # the reference on the same batch (same kernels), then the guard in the mode set
                ref_logits, ref_accept, ref_violation, high, low = _reference(model, mon, det, x[:b])
                model.train(train)
                out = guard(x[:b])
                assert torch.equal(out.logits, ref_logits)
                assert torch.equal(out.accept, ref_accept)
                assert torch.equal(out.score, ref_violation)
                want = [
                    f"{HIGH_SCORE} and {LOW_CONFIDENCE}" if h and c else HIGH_SCORE if h else LOW_CONFIDENCE if c
                    else ACCEPTED
                    for h, c in zip(high.tolist(), low.tolist(), strict=True)
                ]  # fmt: skip
                assert out.reasons == want
            assert all(m.training == train for m in model.modules())  # modes left as they were


def test_confidence_only_guard_answers_in_eval_mode_and_restores_modes() -> None:
    model, _, _, x = _setup()
    model.eval()
    with torch.no_grad():
        want = model(x)
    conf = want.softmax(1).amax(1)
    mon = Monitor.fit("confidence", None, torch.ones(len(x), dtype=torch.bool), 0.2, val_confidence=conf)
    guard = Guard(model, mon)
    model.train()  # dropout (p = 0.5) would change the logits if the guard ran the model in train mode
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(guard(x).logits, want)
    assert all(m.training for m in model.modules())


def _both_paths(guard: Guard, outputs: Outputs, monkeypatch: pytest.MonkeyPatch) -> tuple[GuardOutput, GuardOutput]:
    """:meth:`Guard.decide` on the same outputs by the Python-float path (a few inputs) and the tensor path."""
    assert outputs.logits.shape[0] <= FEW
    few = guard.decide(outputs)
    with monkeypatch.context() as m:
        m.setattr(_guard, "FEW", 0)
        tensor = guard.decide(outputs)
    return few, tensor


def _same(a: GuardOutput, b: GuardOutput) -> None:
    assert torch.equal(a.logits, b.logits) and torch.equal(a.accept, b.accept)
    assert a.accept.dtype == b.accept.dtype and a.score.dtype == b.score.dtype
    assert torch.equal(a.score, b.score) and a.reasons == b.reasons


def test_few_inputs_compare_with_thresholds_rounded_as_torch_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 score compared with a float64 threshold: torch rounds the threshold to float32 first.
    Thresholds a hair away from an input's own score and confidence (equal to them once rounded) must
    give the same decisions on the Python-float path as on the tensor path."""
    model, mon, det, x = _setup()
    guard = Guard(model, mon, det)
    with torch.no_grad():
        guard(x[:2])  # traces the head
        out = guard.outputs(x[:5])
        score = float(guard._scorer(out)[0])  # type: ignore[misc]
        conf = float(out.probs.amax(dim=1)[0])
    decisions = set()
    for st_step, ct_step in ((-math.inf, math.inf), (math.inf, -math.inf)):
        tight = Monitor(
            "mahalanobis+confidence", "mahalanobis", score_threshold=math.nextafter(score, st_step),
            confidence_threshold=math.nextafter(conf, ct_step), score_scale=mon.score_scale,
            confidence_scale=mon.confidence_scale,
        )  # fmt: skip
        assert tight.score_threshold != score and tight.confidence_threshold != conf
        with torch.no_grad():
            few, tensor = _both_paths(Guard(model, tight, det), out, monkeypatch)
        _same(few, tensor)
        decisions.add(bool(few.accept[0]))
    assert decisions == {True}  # equal once rounded: neither part rejects the first input


@pytest.mark.parametrize("kind", ["score only", "confidence only", "both"])
def test_few_inputs_path_equals_tensor_path(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, mon, det, x = _setup()
    m = {
        "score only": Monitor("mahalanobis", "mahalanobis", score_threshold=mon.score_threshold, score_scale=0.7),
        "confidence only": Monitor("confidence", None, confidence_threshold=mon.confidence_threshold,
                                   confidence_scale=2.0),
        "both": mon,
    }[kind]  # fmt: skip
    g = Guard(model, m, det if m.detector else None)
    accepted = 0
    with torch.no_grad():
        g(x[:2])
        for i in range(0, len(x), FEW):
            few, tensor = _both_paths(g, g.outputs(x[i : i + FEW]), monkeypatch)
            _same(few, tensor)
            accepted += int(few.accept.sum())
    assert 0 < accepted < len(x)  # both decisions taken


def test_head_hook_keeps_nothing_outside_a_guard_pass_and_leaves_with_the_guard() -> None:
    model, mon, det, x = _setup()
    head = model[-1]
    guard = Guard(model, mon, det)
    with torch.no_grad():
        guard(x[:3])
        guard(x[:3])  # the fast pass: the hook is on the head
        assert len(head._forward_pre_hooks) == 1
        model(x)  # the model used outside the guard: nothing kept
        assert guard._capture.stop() is None
        copy = __import__("copy").deepcopy(model)  # a guarded model can still be copied
        torch.testing.assert_close(copy(x), model(x))
    del guard
    __import__("gc").collect()
    assert len(head._forward_pre_hooks) == 0


def test_threads_sharing_a_guard_each_get_their_own_inputs_features() -> None:
    """The head's input is kept per thread: guards called from several threads at once (a server's
    worker pool) score each thread's own inputs."""
    from concurrent.futures import ThreadPoolExecutor

    model, mon, det, x = _setup()
    guard = Guard(model, mon, det)
    batches = [x[i : i + 4] for i in range(0, len(x), 4)]
    with torch.no_grad():
        guard(x[:2])
        want = [guard(b) for b in batches]

    def close(a: GuardOutput, b: GuardOutput) -> None:
        # close, not equal: threads running at once may split a reduction differently on another machine;
        # another thread's features give scores that are nowhere near
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.score, b.score, rtol=1e-4, atol=1e-5)
        assert a.reasons == b.reasons

    def judge(i: int) -> GuardOutput:
        with torch.no_grad():
            outs = [guard(batches[i]) for _ in range(50)]
        for o in outs[1:]:
            close(o, outs[0])
        return outs[0]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(judge, range(len(batches))))
    for a, b in zip(got, want, strict=True):
        close(a, b)


def test_a_guard_can_be_copied_and_saved_whole() -> None:
    """torch.save / copy.deepcopy of a guard that has answered (head hook on, prepared scorer built)."""
    import copy
    import io

    model, mon, det, x = _setup()
    guard = Guard(model, mon, det)
    with torch.no_grad():
        guard(x[:2])
        want = guard(x[:5])
    buf = io.BytesIO()
    torch.save(guard, buf)
    buf.seek(0)
    for other in (copy.deepcopy(guard), torch.load(buf, weights_only=False)):
        with torch.no_grad():
            _same(other(x[:5]), want)
            _same(other(x[:5]), want)  # its own head hook feeds its own passes
