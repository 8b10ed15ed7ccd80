"""Hooks of the monitor-aware attack: loss ordering, success = misclassified and unflagged, and that
an attack using them lets more failures escape a monitor than the same attack blind to it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, Outputs, forward
from mlsafety.systemic import Monitor, MonitorAwareObjective, Outcome, failures, wrong_margin


def test_wrong_margin_is_positive_exactly_when_misclassified() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 2])
    assert wrong_margin(logits, y).tolist() == [-1.0, 3.0, 1.0]


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_loss_orders_correct_below_flagged_wrong_below_escaped_and_success_matches_flags() -> None:
    model = _Linear()
    # feature detector: the score is the first feature; flagged above 0.5
    mon = Monitor("f0", "f0", score_threshold=0.5)

    def score_fn(out: Outputs) -> torch.Tensor:
        assert out.features is not None
        return out.features[:, 0]

    obj = MonitorAwareObjective(model, mon, score_fn, needs_features=True)
    #                   correct         wrong+flagged   wrong+unflagged (escaped)
    x = torch.tensor([[0.9, 0.1], [0.9, 0.95], [0.2, 0.4]]).reshape(3, 1, 1, 2)
    y = torch.tensor([0, 0, 0])
    # class 1 wins for rows 1 and 2; row 1 is flagged (0.9 > 0.5), row 2 is not
    xg = x.clone().requires_grad_(True)
    loss = obj.loss(model(xg), y, xg)
    assert loss[0] <= 0 < loss[1] < loss[2] == 1.0
    (grad,) = torch.autograd.grad(loss[1], xg)
    assert float(grad.flatten(1)[1, 0]) < 0  # climbing the loss lowers the detector's score
    assert obj.success(model(x), y, x).tolist() == [False, False, True]


def test_adaptive_pgd_beats_blind_pgd_on_embedded_model(digits_model: nn.Module, digits_test) -> None:  # type: ignore[no-untyped-def]
    from mlsafety import zoo
    from mlsafety.robustness.attacks import PGD

    clf = Classifier(digits_model)
    val = zoo.load_dataset("digits", "val")
    x, y = digits_test.x[:120], digits_test.y[:120]
    val_out = forward(clf, val.x)
    correct = ~failures(val_out.logits, val.y)

    def score_fn(out: Outputs) -> torch.Tensor:  # energy
        return -torch.logsumexp(out.logits, dim=1)

    mon = Monitor.fit("energy+confidence", score_fn(val_out), correct, 0.05, val_confidence=val_out.probs.amax(1))

    def outcome(adv: torch.Tensor) -> Outcome:
        out = forward(clf, adv)
        return Outcome(failures(out.logits, y), mon.flags(score_fn(out), out.probs.amax(1)))

    obj = MonitorAwareObjective(clf, mon, score_fn)
    blind = outcome(PGD(eps=0.1, steps=15, seed=1)(clf, x, y))
    adaptive_x = PGD(eps=0.1, steps=15, seed=1, loss=obj.loss, success=obj.success)(clf, x, y)
    adaptive = outcome(adaptive_x)
    assert blind.failure_rate().value > 0.2  # the attack is real
    assert adaptive.escaped_failure_rate().value > blind.escaped_failure_rate().value + 0.1
    # what the hooks count as an escape is one when measured independently
    assert torch.equal(obj.success(clf.logits(adaptive_x), y, adaptive_x), adaptive.escaped)


def test_selective_loss_values_by_hand_and_success_needs_both_parts_under() -> None:
    model = _Linear()  # logits = x
    # combined monitor: score = first logit, flagged above 0.5 (spread 0.5); confidence below 0.6 (spread 0.1)
    mon = Monitor("dc", "z0", score_threshold=0.5, confidence_threshold=0.6, score_scale=0.5, confidence_scale=0.1)

    def score_fn(out: Outputs) -> torch.Tensor:
        return out.logits[:, 0]

    obj = MonitorAwareObjective(model, mon, score_fn)
    x = torch.tensor([[0.9, 0.1], [0.2, 3.0], [0.9, 1.0], [0.2, 0.4]]).reshape(4, 1, 1, 2)
    y = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        logits = model(x)
        loss = obj.loss(logits, y, x)
    conf = logits.softmax(1).amax(1)
    # row 0 correct: the margin 0.1 - 0.9; row 1 wrong, score 0.2 (under), confident: escaped, loss 1
    # row 2 wrong, score 0.9: v = max((0.9 - 0.5) / 0.5, (0.6 - conf) / 0.1); row 3 wrong, score under, but
    # conf = softmax(0.2, 0.4) = 0.55 < 0.6: flagged by confidence alone, v = 0.05 / 0.1
    v2 = max(0.8, (0.6 - float(conf[2])) / 0.1)
    v3 = (0.6 - float(conf[3])) / 0.1
    assert v3 > 0 and (0.2 - 0.5) / 0.5 < 0
    assert loss.tolist() == pytest.approx([-0.8, 1.0, 1 / (1 + v2), 1 / (1 + v3)], rel=1e-5)
    assert obj.success(logits, y, x).tolist() == [False, True, False, False]
    assert torch.equal(obj.success(logits, y, x), failures(logits, y) & ~mon.flags(logits[:, 0], conf))
