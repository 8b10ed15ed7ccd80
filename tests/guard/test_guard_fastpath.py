"""The guard's per-call fast path gives exactly what the general path (the audit's) gives."""

from __future__ import annotations

import torch
from torch import nn

from mlsafety.core import Classifier
from mlsafety.guard import Guard
from mlsafety.guard._guard import ACCEPTED, HIGH_SCORE, LOW_CONFIDENCE
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
