"""Check ``defence-in-depth`` on the embedded model, consuming the hazards of the adversarial check
(its quick profile on a few test inputs), of the corruptions check and an OOD set, through the
context as the engine would; hazards made in the test stand for other providers' (typed hazards:
an adversarial one carries its attack, eps and norm, and its inputs their clean sources).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

import mlsafety.audit.checks  # noqa: F401  (registers every check)
from mlsafety import zoo
from mlsafety.audit import CHECKS, AuditContext, AuditData, Row, StoredRow
from mlsafety.core import ArrayDataset, Classifier, Hazard, InputError, forward
from mlsafety.systemic import Outcome, failures
from tests.support.audit_ctx import ExtraContext as _Context

N_ADV = 60


class _Attacked(ArrayDataset):
    """Adversarial inputs with their clean sources (what the adversarial check's provider keeps)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor) -> None:
        super().__init__(x, y)
        self.x_clean = x_clean


@pytest.fixture(scope="module")
def setting() -> tuple[Classifier, AuditData, list[Hazard]]:
    clf = Classifier(zoo.load_model("digits-cnn"))
    data = AuditData(
        test=zoo.load_dataset("digits", "test"),
        val=zoo.load_dataset("digits", "val"),
        train=zoo.load_dataset("digits", "train"),
        ood={"letters": zoo.load_dataset("letters")},
    )
    # the adversarial check's quick profile (autoattack-fast, 10 iterations) on 60 test inputs
    ctx = AuditContext(clf, data, quick=True, check_params={"adversarial": _adversarial_params()})
    planned = [*CHECKS.create("adversarial", quick=True).hazards(ctx), Hazard.corruption("gaussian-noise", 3)]
    return clf, data, planned


def _adversarial_params() -> dict[str, Any]:
    cls = CHECKS.get("adversarial")
    return {**cls.defaults, **cls.quick, "n": N_ADV}


def _run(setting: Any, **params: Any) -> tuple[list[Row], list[Any], AuditContext]:
    clf, data, planned = setting
    ctx = AuditContext(clf, data, seed=0, quick=True, check_params={"adversarial": _adversarial_params()})
    ctx.planned_hazards = list(planned)
    check = CHECKS.create("defence-in-depth", **{"monitors": ["energy", "mahalanobis"], "adaptive_steps": 20, **params})
    rows: list[Row] = []
    arts: list[Any] = []
    for task in check.tasks(ctx):
        res = task.run()
        rows += res.rows
        arts += res.artifacts
    return rows, arts, ctx


@pytest.fixture(scope="module")
def result(setting: Any) -> tuple[list[Row], list[Any], AuditContext, float]:
    t0 = time.perf_counter()
    adversarial = [h for h in setting[2] if h.kind == "adversarial"]
    rows, arts, ctx = _run(setting, exposure={"clean": 0.9, str(adversarial[-1]): 0.1})
    return rows, arts, ctx, time.perf_counter() - t0


def _get(rows: list[Row], hazard: Hazard | str, metric: str) -> Row:
    found = [r for r in rows if r.hazard == str(hazard) and r.metric == metric]
    assert len(found) == 1, (hazard, metric)
    return found[0]


def test_every_hazard_has_escaped_rate_with_interval(result: Any) -> None:
    rows, arts, ctx, _ = result
    hazards = [Hazard.clean(), *ctx.planned_hazards, Hazard.ood("letters")]
    for h in hazards:
        r = _get(rows, h, "escaped_failure_rate")
        assert r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.value <= r.ci_high
        assert _get(rows, h, "rpn").value == (
            _get(rows, h, "severity").value * _get(rows, h, "occurrence").value * _get(rows, h, "detection").value
        )
    assert any(a.name == "swiss-cheese" and a.data[:4] == b"\x89PNG" for a in arts)
    assert _get(rows, "deployment", "expected_escaped_failure_rate").ci_high is not None
    ood_rows = {r.metric for r in rows if r.hazard == "ood/letters"}
    assert "false_alarm_rate" not in ood_rows  # no correct answer exists on OOD inputs
    assert _get(rows, "ood/letters", "failure_rate").value == 1.0


def test_clean_rates_match_a_hand_recomputation(result: Any, setting: Any) -> None:
    from mlsafety.monitoring import ood

    rows, _, _, _ = result
    clf, data, _ = setting
    chosen = [r for r in rows if r.metric == "validation_escape" and r.params["selected"]]
    assert len(chosen) == 1
    esc = _get(rows, "clean", "escaped_failure_rate")
    p = esc.params
    assert Hazard.parse(chosen[0].hazard) == Hazard("validation", p["monitor"])
    # recompute every cell from scratch: a fresh detector, the stored thresholds, the test data
    out = forward(clf, data.test.x)
    failed = failures(out.logits, data.test.y)
    flagged = torch.zeros_like(failed)
    if p["detector"] is not None:
        det = ood.create(p["detector"]).fit(clf, data.train)
        flagged |= det.score(clf, data.test.x) > p["score_threshold"]
    if p["confidence_threshold"] is not None:
        flagged |= out.probs.amax(dim=1) < p["confidence_threshold"]
    n = len(failed)
    assert esc.value == pytest.approx(float((failed & ~flagged).sum()) / n)
    assert _get(rows, "clean", "failure_rate").value == pytest.approx(float(failed.sum()) / n)
    caught = _get(rows, "clean", "caught_share")
    assert (caught.value, caught.n) == (
        pytest.approx(float((failed & flagged).sum() / failed.sum())),
        int(failed.sum()),
    )
    alarms = _get(rows, "clean", "false_alarm_rate")
    assert (alarms.value, alarms.n) == (pytest.approx(float((~failed & flagged).sum() / (~failed).sum())), n - caught.n)
    # thresholds are set at 5% false alarms on validation: the test rate must be of that order
    assert alarms.value < 0.15


def test_adaptive_attack_escapes_at_least_as_often(result: Any) -> None:
    rows, _, ctx, _ = result
    adversarial = [h for h in ctx.planned_hazards if h.kind == "adversarial"]
    assert len(adversarial) >= 2 and all(h.norm == "linf" for h in adversarial)
    for h in adversarial:
        plain = _get(rows, h, "escaped_failure_rate")
        adaptive = _get(rows, h, "adaptive_escaped_failure_rate")
        assert adaptive.value >= plain.value, h
        assert adaptive.n == plain.n == N_ADV
        assert adaptive.params["norm"] == "linf" and adaptive.params["eps"] == h.eps
    # on the largest budget the monitor-aware attack alone lets more failures through than autoattack
    h = adversarial[-1]
    alone = _get(rows, h, "adaptive_escaped_failure_rate").params["adaptive_only_escaped_failure_rate"]
    assert alone > _get(rows, h, "escaped_failure_rate").value


def test_fmea_rows_sorted_and_raw_probabilities_kept(result: Any) -> None:
    rows, _, _, _ = result
    rpn = [r for r in rows if r.metric == "rpn"]
    assert [r.value for r in rpn] == sorted((r.value for r in rpn), reverse=True)
    for r in rpn:
        fr = _get(rows, r.hazard, "failure_rate")
        if r.params["adaptive"]:
            assert r.params["failure_rate"] >= fr.value
        else:
            assert r.params["failure_rate"] == pytest.approx(fr.value)
    adversarial = next(r.hazard for r in rpn if Hazard.parse(r.hazard).kind == "adversarial")
    assert _get(rows, adversarial, "severity").value == 8  # documented default for the kind
    for r in rpn:  # issue 12 point 11: severity is a setting, the measured ranks carry their band range
        sev, occ, det = (_get(rows, r.hazard, m) for m in ("severity", "occurrence", "detection"))
        assert sev.kind == "setting" and sev.ci_low is None
        for rank in (occ, det, r):
            assert rank.kind == "estimate" and rank.ci_low is not None and rank.ci_high is not None
            assert rank.ci_low <= rank.value <= rank.ci_high
        # RPN's range comes from 97.5% ranges (joint 95%), so it contains the product of the 95% ones
        assert r.ci_low <= sev.value * occ.ci_low * det.ci_low and r.ci_high >= sev.value * occ.ci_high * det.ci_high
        assert 1 <= occ.ci_low and occ.ci_high <= 10 and 1 <= det.ci_low and det.ci_high <= 10
    for r in (r for r in rows if r.metric == "validation_escape"):
        assert r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.value <= r.ci_high


def test_monitor_choice_ignores_test_hazards(setting: Any, result: Any) -> None:
    clf, data, _ = setting
    rows, _, _, _ = result
    other = AuditData(data.test, data.val, data.train, ood={})
    ctx = _Context(clf, other, seed=0, extra={})
    check = CHECKS.create("defence-in-depth", monitors=["energy", "mahalanobis"])
    task = next(t for t in check.tasks(ctx) if t.key == "monitor")
    again = {r.hazard: r.value for r in task.run().rows}
    assert again == {r.hazard: r.value for r in rows if r.metric == "validation_escape"}


def test_report_side_from_stored_rows(result: Any) -> None:
    rows, _, _, _ = result
    stored = [
        StoredRow("defence-in-depth", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params))
        for r in rows
    ]
    cls = CHECKS.get("defence-in-depth")
    heads = cls.headlines(stored)
    assert heads and all(not h.higher_is_better for h in heads)
    titles = [t.title for t in cls.tables(stored)]
    assert any(t.startswith("Escaped failures per hazard") for t in titles)
    assert any(t.startswith("FMEA") for t in titles)


@pytest.mark.parametrize(
    "params",
    [
        {"false_alarm_rate": 1.5},
        {"false_alarm_rate": 1.0},
        {"confidence_share": -0.1},
        {"severity": ["clean", 3]},
        {"exposure": 0.5},
        {"monitors": ["odin"]},
        {"monitors": ["no-such-detector"]},
        {"severity": {"clean": 11}},
        {"exposure": {"clean": -0.5}},
        {"exposure": {"clean": float("nan")}},
        {"exposure": {"clean": "much"}},
        {"exposure": {"clean": 0.0}},
        {"adaptive_steps": 0},
        {"adaptive_steps": 2.5},
    ],
)
def test_bad_parameters_are_input_errors(setting: Any, params: dict[str, Any]) -> None:
    clf, data, _ = setting
    ctx = _Context(clf, data, seed=0, extra={})
    with pytest.raises(InputError):
        CHECKS.create("defence-in-depth", **params).tasks(ctx)


def test_unknown_exposure_hazard_is_refused_before_any_work(setting: Any) -> None:
    # Planning refuses it: no hazard task (attacks included) runs and stores rows first.
    clf, data, _ = setting
    ctx = _Context(clf, data, seed=0, extra={})
    check = CHECKS.create("defence-in-depth", monitors=["energy"], exposure={"adversarial/nope/1": 1.0})
    with pytest.raises(InputError, match="does not measure"):
        check.tasks(ctx)


def test_worst_case_outcome_is_what_the_row_reports() -> None:
    a = Outcome(torch.tensor([True, False]), torch.tensor([True, False]))
    b = Outcome(torch.tensor([True, True]), torch.tensor([False, True]))
    assert a.worst_case(b).escaped_failure_rate().value == 0.5


def test_plot_pools_corruption_severities_when_there_are_many_hazards() -> None:
    from mlsafety.audit.views.defence_in_depth import PLOT_MAX_BARS, plot_bars

    def o(k: int) -> Outcome:
        return Outcome(torch.arange(4) < k, torch.zeros(4, dtype=torch.bool))

    pgd = Hazard.adversarial("pgd", 0.1, norm="linf")
    clean, blur = o(1), o(2)
    few = {Hazard.clean(): clean, Hazard.corruption("blur", 1): blur}
    assert plot_bars(few, {}) == ({"clean": clean, "corruption/blur/1": blur}, {})
    many = {Hazard.clean(): o(0), pgd: o(1)}
    many.update({Hazard.corruption(f"c{i}", s): o(s) for i in range(PLOT_MAX_BARS) for s in (1, 3)})
    shown, adaptive = plot_bars(many, {pgd: o(2)})
    assert len(shown) == PLOT_MAX_BARS + 2 and list(adaptive) == ["adversarial/pgd/0.1"]
    pooled = shown["corruption/c0 (all severities)"]
    assert pooled.n == 8 and pooled.failure_rate().value == (1 + 3) / 8


def test_attack_source_is_read_from_the_typed_hazard_never_guessed(setting: Any) -> None:
    """eps and norm come from the hazard, the clean source from its inputs; without them the
    adaptive attack is not run (and says so), where it used to guess the source by nearest input."""
    from mlsafety.audit.checks.defence_in_depth import NOT_RUN, _attack_source

    clf, data, _ = setting
    test = data.test
    g = torch.Generator().manual_seed(0)
    x, y = test.x[:30], test.y[:30]
    linf = (x + 0.1 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    typed = Hazard.adversarial("a", 0.1, norm="l2")
    no_norm = Hazard.adversarial("b", 0.1)
    no_source = Hazard.adversarial("c", 0.1, norm="linf")
    extra = {typed: _Attacked(linf, y, x), no_norm: _Attacked(linf, y, x), no_source: ArrayDataset(linf, y)}
    ctx = _Context(clf, data, seed=0, extra=extra)
    src, labels, eps, norm = _attack_source(ctx, typed)  # type: ignore[misc]
    assert torch.equal(src, x) and torch.equal(labels, y) and (eps, norm) == (0.1, "l2")
    assert _attack_source(ctx, no_norm) is None and _attack_source(ctx, no_source) is None
    check = CHECKS.create("defence-in-depth", monitors=["energy"], adaptive_steps=1)
    tasks = {t.key: t for t in check.tasks(ctx)}
    rows = tasks["adversarial/c/0.1"].run().rows
    assert {r.metric for r in rows} >= {"failure_rate", "escaped_failure_rate"}
    assert "adaptive_escaped_failure_rate" not in {r.metric for r in rows}
    assert all(r.params["adaptive"] == NOT_RUN for r in rows)
    assert "adaptive_escaped_failure_rate" in {r.metric for r in tasks["adversarial/a/0.1"].run().rows}


def test_headless_model_uses_logit_detectors_by_default() -> None:
    from torch import nn

    from mlsafety.core import generator

    g = generator(0, "headless")
    model = nn.Sequential(nn.Conv2d(1, 3, 8), nn.Flatten()).eval()  # logits without a Linear head

    def data(n: int) -> ArrayDataset:
        return ArrayDataset(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))

    clf = Classifier(model)
    assert clf.head is None
    ctx = AuditContext(clf, AuditData(data(40), data(40)))
    rows = [r for t in CHECKS.create("defence-in-depth").tasks(ctx) for r in t.run().rows]
    chosen = [r.hazard for r in rows if r.metric == "validation_escape"]
    assert chosen and not any("mahalanobis" in h or "knn" in h or "vim" in h for h in chosen)
    assert _get(rows, "clean", "escaped_failure_rate").n == 40


def test_adaptive_attack_draws_one_generator_per_task_and_rows_do_not_depend_on_order(
    setting: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 point 8: the monitor-aware attack takes the generator derived from (run seed, check,
    task), neither a truncated re-hashed seed nor the attack's own default one."""
    from mlsafety.core import generator
    from mlsafety.robustness.attacks import PGD

    clf, data, _ = setting
    g = torch.Generator().manual_seed(1)
    x, y = data.test.x[:24], data.test.y[:24]
    hazards = [Hazard.adversarial("a", 0.1, norm="linf"), Hazard.adversarial("b", 0.1, norm="linf")]
    extra = {h: _Attacked((x + 0.1 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1), y, x) for h in hazards}
    seen: dict[str, torch.Tensor] = {}
    original = PGD.__call__

    def spy(self: Any, model: Any, xs: Any, ys: Any, target: Any = None, generator: Any = None) -> Any:
        assert generator is not None, "the adaptive attack must receive the task's generator"
        seen[f"call{len(seen)}"] = generator.get_state().clone()
        return original(self, model, xs, ys, target=target, generator=generator)

    monkeypatch.setattr(PGD, "__call__", spy)

    def run(order: list[Hazard]) -> dict[str, Row]:
        ctx = _Context(clf, data, seed=3, extra=extra)
        check = CHECKS.create("defence-in-depth", monitors=["energy"], adaptive_steps=2)
        tasks = {t.key: t for t in check.tasks(ctx)}
        rows = [r for key in ["monitor", *map(str, order)] for r in tasks[key].run().rows]
        return {f"{r.hazard}/{r.metric}": r for r in rows if r.metric == "adaptive_escaped_failure_rate"}

    forward_order = run(hazards)
    states = list(seen.values())
    want = [generator(3, "defence-in-depth", "adaptive", str(h)).get_state() for h in hazards]
    assert torch.equal(states[0], want[0]) and torch.equal(states[1], want[1])
    assert not torch.equal(want[0], want[1])  # two tasks, two streams
    assert run(hazards[::-1]) == forward_order  # the same rows whichever task runs first
