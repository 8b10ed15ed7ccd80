"""The ``tta`` check and the ``tta-attack`` hazard it hands to defence in depth (issue 18)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from mlsafety import zoo
from mlsafety.audit import CHECKS, AuditContext, AuditData, Row
from mlsafety.core import Classifier, Hazard, InputError

SMALL: dict[str, Any] = {
    "methods": ["tebn"],
    "corruptions": ["contrast"],
    "batch_size": 32,
    "shares": [0.2],
    "attack_batches": 4,
    "attack_steps": 3,
    "attack_on": "clean",
}


@pytest.fixture(scope="module")
def bn_setting() -> tuple[Classifier, AuditData]:
    data = AuditData(zoo.load_dataset("digits", "test"), zoo.load_dataset("digits", "val"))
    return Classifier(zoo.load_model("digits-cnn-bn")), data


def _run(setting: tuple[Classifier, AuditData], checks: dict[str, dict[str, Any]]) -> tuple[list[Row], AuditContext]:
    clf, data = setting
    ctx = AuditContext(clf, data, seed=0, check_params=checks)
    made = [CHECKS.create(n, **p) for n, p in checks.items()]
    ctx.planned_hazards = [Hazard.parse(h) for c in made for h in c.hazards(ctx)]
    rows = [r for c in made for t in c.tasks(ctx) for r in t.run().rows]
    return rows, ctx


def _get(rows: list[Row], hazard: str, metric: str) -> Row:
    (row,) = [r for r in rows if r.hazard == hazard and r.metric == metric]
    return row


def _tebn_by_hand(model: nn.Module, x: torch.Tensor, b: int) -> torch.Tensor:
    """Batch norm in training mode normalises with the batch's mean and biased variance: TeBN, per batch."""
    m = copy.deepcopy(model).eval()
    for layer in m.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.train()
    with torch.no_grad():
        return torch.cat([m(xb).argmax(1) for xb in x.split(b)])


def test_accuracy_rows_match_a_hand_stream_and_tta_helps_under_contrast(bn_setting):
    rows, ctx = _run(bn_setting, {"tta": {**SMALL, "shares": [0.2], "objectives": ["indiscriminate"]}})
    clf, data = bn_setting
    for hazard in ("clean", "corruption/contrast/3"):
        x, y = ctx.hazard(hazard).x, data.test.y
        static, tebn = _get(rows, hazard, "accuracy_no_adaptation"), _get(rows, hazard, "tebn_accuracy")
        with torch.no_grad():
            assert static.value == pytest.approx((clf.module(x).argmax(1) == y).float().mean().item())
        hand = (_tebn_by_hand(clf.module, x, 32) == y).float().mean().item()
        assert abs(tebn.value - hand) <= 2 / len(y)  # a tie or two may fall either way on another CPU
        assert tebn.n == len(y) and tebn.ci_low <= tebn.value <= tebn.ci_high
    # contrast at severity 3 shrinks the batch statistics; re-estimating them undoes most of it
    assert _get(rows, "corruption/contrast/3", "tebn_accuracy").value > (
        _get(rows, "corruption/contrast/3", "accuracy_no_adaptation").value + 0.2
    )


def test_attack_rows_and_the_tta_attack_hazard_reach_defence_in_depth(bn_setting):
    """The monitor sees the adapted model's outputs: defence in depth's failure rate on the hazard is
    the tta check's indiscriminate success, the benign error under attack (same inputs, labels and
    adapted predictions). The attacked batches come from the ``attack_on`` corruption."""
    tta_params = {
        **SMALL,
        "objectives": ["targeted", "stealthy", "indiscriminate"],
        "attack_on": "corruption/contrast/3",
    }
    rows, ctx = _run(bn_setting, {"tta": tta_params, "defence-in-depth": {"monitors": ["energy"], "adaptive": False}})
    key = "tta-attack/tebn/0.2"
    assert Hazard.tta_attack("tebn", 0.2) in ctx.planned_hazards
    for metric in ("targeted_success_rate", "stealthy_success_rate", "batches_flipped_rate"):
        assert _get(rows, key, metric).n == 4  # one trial per attacked batch
    assert _get(rows, key, "stealthy_others_kept_rate").n == 4 * (32 - 6 - 1)  # the target is not an other
    err = _get(rows, key, "indiscriminate_success_rate")
    assert err.n == 4 * (32 - 6) and err.params["malicious"] == 6 and err.params["attack_on"] == "corruption/contrast/3"
    data = ctx.hazard(key)
    assert err.value == pytest.approx(data.result.benign_error.float().mean().item())  # the paper's measure
    assert torch.equal(data.x, ctx.hazard("corruption/contrast/3").x[data.index])  # attacked under the shift
    assert torch.equal(ctx.outputs(key).logits, data.outputs.logits)
    assert torch.equal(ctx.outputs(key).pred.reshape(4, -1), data.result.logits.argmax(-1))  # the best iterate
    failure = [r for r in rows if r.hazard == key and r.metric == "failure_rate"]
    assert failure and failure[0].value == pytest.approx(err.value)
    assert _get(rows, key, "escaped_failure_rate").value <= err.value
    assert ctx.outputs(key).features is not None and ctx.outputs(key).features.shape == (err.n, 128)


def test_same_seed_same_rows_and_the_model_is_left_unchanged(bn_setting):
    clf, _ = bn_setting
    state = {k: v.clone() for k, v in clf.module.state_dict().items()}
    params = {"tta": {**SMALL, "corruptions": [], "objectives": ["indiscriminate"], "attack_steps": 2}}
    a, _ = _run(bn_setting, params)
    b, _ = _run(bn_setting, params)
    assert [(r.hazard, r.metric, r.value) for r in a] == [(r.hazard, r.metric, r.value) for r in b]
    assert not clf.module.training and all(torch.equal(v, state[k]) for k, v in clf.module.state_dict().items())


def test_a_model_without_batch_norm_gets_one_row_saying_so(digits_model):
    data = AuditData(zoo.load_dataset("digits", "test"), zoo.load_dataset("digits", "val"))
    ctx = AuditContext(Classifier(digits_model), data)
    check = CHECKS.create("tta", quick=True)
    assert check.hazards(ctx) == []
    (row,) = [r for t in check.tasks(ctx) for r in t.run().rows]
    assert row.metric == "not_applicable" and row.kind == "decision" and "batch-norm" in row.params["reason"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"shares": [1.0]}, "in \\(0, 1\\)"),
        ({"shares": [0.0]}, "in \\(0, 1\\)"),
        ({"batch_size": 1}, "batch_size must be an integer >= 2"),
        ({"methods": ["tnet"]}, "method 'tnet' is unknown"),
        ({"eps": 2.0}, "eps must be a radius"),
        ({"severity": True}, "severity must be an integer"),
        ({"attack_on": "corruption/fog"}, "attack_on must be"),
        ({"attack_on": "ood/letters"}, "attack_on must be"),
        ({"attack_batch_sizes": [2]}, "attack_batch_sizes must be"),
    ],
)
def test_bad_settings_are_refused_in_one_line(bn_setting, params, message):
    clf, data = bn_setting
    with pytest.raises(InputError, match=message):
        CHECKS.create("tta", **params).tasks(AuditContext(clf, data))


def test_a_malformed_tta_attack_hazard_is_refused(bn_setting):
    clf, data = bn_setting
    with pytest.raises(InputError, match="tta-attack/<method>/<share>"):
        AuditContext(clf, data).hazard("tta-attack/tent/1.5")


def test_non_finite_adapted_logits_are_refused(bn_setting):
    """The hazard's outputs come from the adaptation step's own pass: NaN logits there are refused as
    the shared forward pass refuses them, not handed to a monitor."""
    clf, data = bn_setting
    broken = copy.deepcopy(clf.module)
    with torch.no_grad():
        broken.fc.bias[0] = float("nan")
    ctx = AuditContext(Classifier(broken), data, seed=0, check_params={"tta": {**SMALL, "attack_steps": 0}})
    with pytest.raises(InputError, match=r"NaN or infinite logits .* under tebn"):
        ctx.hazard("tta-attack/tebn/0.2")


def test_extra_attack_batch_sizes_get_their_own_rows_and_view_lines(bn_setting):
    """A second batch size reruns the attack on its own batches (rows suffixed _batch_<b>, carrying
    the measure and batch size); the view puts one line per (hazard, batch size)."""
    from mlsafety.audit import StoredRow
    from mlsafety.audit.views.tta import TTAView

    params = {**SMALL, "corruptions": [], "objectives": ["indiscriminate"], "attack_steps": 1, "attack_batches": 2}
    rows, _ = _run(bn_setting, {"tta": {**params, "attack_batch_sizes": [16, 32]}})
    key = "tta-attack/tebn/0.2"
    small = _get(rows, key, "indiscriminate_success_rate_batch_16")
    assert small.params["measure"] == "indiscriminate_success_rate" and small.params["malicious"] == 3
    assert small.n == 2 * (16 - 3) and _get(rows, key, "batches_flipped_rate_batch_16").n == 2
    assert _get(rows, key, "indiscriminate_success_rate").n == 2 * (32 - 6)  # batch_size: the hazard's rows
    stored = [StoredRow("tta", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params)) for r in rows]
    (attack_table,) = [t for t in TTAView.tables(stored) if t.title.startswith("Distribution Invading")]
    assert [line[:3] for line in attack_table.rows] == [["tebn", "0.2", "3/16"], ["tebn", "0.2", "6/32"]]
