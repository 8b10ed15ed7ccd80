"""Learning to reject meets OOD: the side-by-side table against hand computations, MSP's optimality for
misclassification rejection on a planted case, and the defence-in-depth criterion as the same rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, generator
from mlsafety.monitoring.ood.reject import combined_risk, combined_risk_estimate, evaluate_reject, reject_table
from mlsafety.systemic import Monitor, ScoredSet, validation_escape

# six in-distribution inputs: anomaly scores and whether the model answers each correctly
SCORES = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
CORRECT = torch.tensor([True, True, False, True, False, False])
OOD = torch.tensor([0.5, 0.95, 0.7, 1.0])


def test_aurc_and_augrc_against_a_hand_computation() -> None:
    # accepted in order of rising score: 0.1 ok, 0.2 wrong, 0.35 wrong, 0.4 ok, 0.8 ok, 0.9 wrong
    # cumulative errors 0 1 2 2 2 3 over accepted 1..6
    aurc = (0 + 1 / 2 + 2 / 3 + 2 / 4 + 2 / 5 + 3 / 6) / 6
    augrc = (0 + 1 / 2 + 3 / 2 + 2 + 2 + 5 / 2) / 6 / 6  # trapezoids: mean of the errors before and after each
    table = reject_table({"d": SCORES}, CORRECT, {"far": {"d": OOD}}, n_boot=50)
    row = table.row("d")
    assert row.aurc.value == pytest.approx(aurc, abs=1e-12)
    assert row.augrc.value == pytest.approx(augrc, abs=1e-12)
    assert row.aurc.ci_low <= row.aurc.value <= row.aurc.ci_high
    # AUROC by pairs: OOD 0.5 and 0.7 each beat 4 of the 6 ID scores, 0.95 and 1.0 all 6
    assert row.ood["far"]["auroc"].value == pytest.approx((4 + 6 + 4 + 6) / 24, abs=1e-12)
    assert table.accuracy == pytest.approx(0.5)


def test_combined_risk_against_a_hand_computation() -> None:
    # correct ID scores 0.1, 0.4, 0.8; false-alarm rate 0.2 -> k = floor(0.6) = 0 -> t = 0.8 (flag > 0.8)
    # ID accepted and wrong: 0.35, 0.2 -> 2/6; OOD accepted: 0.5, 0.7 -> 2/4
    want = 0.75 * (2 / 6) + 0.25 * (2 / 4)
    assert combined_risk(SCORES, CORRECT, OOD, ood_share=0.25, false_alarm_rate=0.2) == pytest.approx(want)
    # a false-alarm rate of 0.34 lets one correct input be flagged: k = 1 -> t = 0.4; accepted wrong 0.35, 0.2
    assert combined_risk(SCORES, CORRECT, OOD, 0.5, 0.34) == pytest.approx(0.5 * 2 / 6 + 0.5 * 0 / 4)
    est = combined_risk_estimate(SCORES, CORRECT, OOD, 0.25, 0.2, n_boot=200, seed=3)
    assert est.value == pytest.approx(want)
    assert est.ci_low <= want <= est.ci_high and est.ci_high > est.ci_low
    with pytest.raises(InputError, match="ood_share must lie in"):
        combined_risk(SCORES, CORRECT, OOD, ood_share=1.5)


def test_defence_in_depth_criterion_is_the_combined_risk_at_half() -> None:
    g = generator(0, "reject-did")
    s = torch.randn(200, generator=g).round(decimals=1)  # ties on purpose
    correct = torch.rand(200, generator=g) > 0.3
    o = (torch.randn(150, generator=g) + 1).round(decimals=1)
    for fa in (0.05, 0.1):
        mon = Monitor.fit("d", s, correct, fa, detector="d")
        val = ScoredSet(~correct, torch.ones(200), {"d": s})
        out = ScoredSet(torch.ones(150, dtype=torch.bool), torch.ones(150), {"d": o})
        assert validation_escape(mon, val, out).value == pytest.approx(combined_risk(s, correct, o, 0.5, fa), abs=1e-12)


class _Identity(nn.Module):
    """Logits = the flattened input (features = the same), so the test plants the logits directly."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(k, k)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(k))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(x))


def test_msp_is_best_for_rejecting_mistakes_and_not_for_ood() -> None:
    g = generator(0, "reject-planted")
    n = 60
    # correct: label 0, a wide margin at a modest scale (MSP > 0.98, max logit 5-7)
    right = torch.zeros(n, 3)
    right[:, 0] = 5 + 2 * torch.rand(n, generator=g)
    # wrong: label 1 but class 0 barely ahead at a large scale (MSP < 0.7, max logit 10-12, high energy)
    wrong = torch.zeros(n // 3, 3)
    wrong[:, 0] = 10 + 2 * torch.rand(n // 3, generator=g)
    wrong[:, 1] = wrong[:, 0] - 0.2 - 0.6 * torch.rand(n // 3, generator=g)
    x = torch.cat([right, wrong]).reshape(-1, 1, 1, 3)
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n // 3, dtype=torch.long)])
    fit = (right[: n // 2].reshape(-1, 1, 1, 3), torch.zeros(n // 2, dtype=torch.long))
    # OOD: confident (MSP ~ 1) but far from every training feature
    ood = torch.zeros(40, 3)
    ood[:, 2] = 25 + torch.rand(40, generator=g)
    model = _Identity(3)
    dets = ["msp", "max-logit", "energy", "entropy", "knn"]
    table = evaluate_reject(dets, model, fit, x, y, {"far": ood.reshape(-1, 1, 1, 3)}, n_boot=50)
    aurc = {d: table.value(d, "aurc") for d in dets}
    # MSP ranks every correct answer above every mistake: the oracle's AURC, which nothing beats
    e, total = n // 3, n + n // 3
    oracle = sum((k - n) / k for k in range(n + 1, total + 1)) / total
    assert aurc["msp"] == pytest.approx(oracle, abs=1e-12)
    assert table.best("aurc") in {d for d in dets if aurc[d] == pytest.approx(aurc["msp"], abs=1e-12)}
    assert min(aurc.values()) >= aurc["msp"] - 1e-12
    assert aurc["max-logit"] > aurc["msp"] + 0.2 and aurc["energy"] > aurc["msp"] + 0.2
    assert e == len(wrong)
    # for OOD detection MSP is not optimal: the distance detector wins here
    assert table.best("auroc", "far") == "knn"
    assert table.value("knn", "auroc", "far") == pytest.approx(1.0)
    assert table.value("msp", "auroc", "far") < 0.5
    assert table.best("combined_risk") == "knn"
    assert "msp" in table.markdown() and "far combined risk" in table.markdown()


def test_the_monitor_choice_follows_the_expected_ood_share() -> None:
    from mlsafety.systemic import candidate_monitors, choose_monitor

    g = generator(0, "reject-share")
    n, m = 300, 200
    wrong = torch.rand(n, generator=g) < 0.2
    # confidence knows the mistakes (low on every wrong answer); the detector is blind to them
    val_conf = torch.where(wrong, 0.4 + 0.1 * torch.rand(n, generator=g), 0.9 + 0.1 * torch.rand(n, generator=g))
    val = ScoredSet(wrong, val_conf, {"d": torch.rand(n, generator=g)})
    # outliers: confident answers, but the detector scores every one above every validation input
    out = ScoredSet(torch.ones(m, dtype=torch.bool), 0.9 + 0.1 * torch.rand(m, generator=g),
                    {"d": 2 + torch.rand(m, generator=g)})  # fmt: skip
    cands = candidate_monitors(val, ["d"], 0.05, 0.5)
    assert choose_monitor(cands, val, out, ood_share=0.0)[0].name == "confidence"
    assert choose_monitor(cands, val, out, ood_share=1.0)[0].name in {"d", "d+confidence"}
    best, crit = choose_monitor(cands, val, out)  # the default (one half each) keeps the former criterion
    assert crit[best.name].value == pytest.approx(
        0.5 * float((val.outcome(best).escaped).double().mean())
        + 0.5 * float(out.outcome(best).escaped.double().mean())
    )
