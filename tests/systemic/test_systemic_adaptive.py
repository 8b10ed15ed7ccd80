"""The monitor-aware attack: threat-model conformance and that it beats an attack blind to the monitor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, InputError, Outputs, forward, generator
from mlsafety.systemic import Monitor, Outcome, failures, margin, monitor_aware_attack


def _state(model: nn.Module) -> tuple[list[bool], list[bool], dict[str, torch.Tensor]]:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _blind(scores: torch.Tensor | None, conf: torch.Tensor | None) -> torch.Tensor:
    assert conf is not None
    return torch.full_like(conf, -1.0)  # never flagged: plain margin PGD that stops at the first error


def test_margin_is_positive_exactly_when_misclassified() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 2])
    assert margin(logits, y).tolist() == [-1.0, 3.0, 1.0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_conformance_ball_range_shape_determinism_and_model_restored(tiny_net: nn.Module, norm: str) -> None:
    g = generator(0, "adaptive-conf")
    x = torch.rand(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    x_copy = x.clone()
    tiny_net.train()  # the attack must run in eval mode and give the mode back
    before = _state(tiny_net)
    eps = 0.1 if norm == "linf" else 0.5

    def run() -> torch.Tensor:
        return monitor_aware_attack(
            tiny_net, x, y, _blind, eps=eps, norm=norm, steps=5, generator=generator(0, "start"), batch_size=7
        )

    adv = run()
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert torch.equal(x, x_copy)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    d = (adv - x).flatten(1)
    size = d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert torch.equal(adv, run())
    after = _state(tiny_net)
    assert before[0] == after[0] and before[1] == after[1]
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])


def test_model_restored_after_an_exception(tiny_net: nn.Module) -> None:
    before = _state(tiny_net)

    def broken(scores: torch.Tensor | None, conf: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        monitor_aware_attack(tiny_net, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), broken, steps=2)
    after = _state(tiny_net)
    assert before[0] == after[0] and before[1] == after[1]


def test_rejects_bad_norm(tiny_net: nn.Module) -> None:
    with pytest.raises(InputError):
        monitor_aware_attack(tiny_net, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), _blind, norm="l1")


def test_adaptive_beats_blind_attack_on_embedded_model(digits_model: nn.Module, digits_test) -> None:  # type: ignore[no-untyped-def]
    from mlsafety import zoo

    clf = Classifier(digits_model)
    val = zoo.load_dataset("digits", "val")
    x, y = digits_test.x[:120], digits_test.y[:120]
    val_out = forward(clf, val.x)
    correct = ~failures(val_out.logits, val.y)
    # monitor: energy score and confidence, thresholds at 5% false alarms on clean validation data
    energy = -torch.logsumexp(val_out.logits, dim=1)
    mon = Monitor.fit("energy+confidence", energy, correct, 0.05, val_confidence=val_out.probs.amax(1))

    def score_fn(out: Outputs) -> torch.Tensor:
        return -torch.logsumexp(out.logits, dim=1)

    def outcome(adv: torch.Tensor) -> Outcome:
        out = forward(clf, adv)
        return Outcome(failures(out.logits, y), mon.flags(score_fn(out), out.probs.amax(1)))

    kw = {"eps": 0.1, "steps": 15, "generator": generator(0, "adaptive-test")}
    blind = outcome(monitor_aware_attack(clf, x, y, _blind, **kw))
    adaptive_x = monitor_aware_attack(clf, x, y, mon.violation, score_fn, **kw)
    adaptive = outcome(adaptive_x)
    assert blind.failure_rate().value > 0.2  # the attack is real
    assert adaptive.escaped_failure_rate().value > blind.escaped_failure_rate().value + 0.1
    # what the attack counts as an escape is one when measured independently
    out = forward(clf, adaptive_x)
    escaped = adaptive.escaped
    assert bool((out.pred[escaped] != y[escaped]).all())
    assert bool((mon.violation(score_fn(out), out.probs.amax(1))[escaped] <= 0).all())
