"""No task cut whole by a budget, resumable certified tasks, small test sets for tta, the eps grid on empty data, and
row-level settings in compare (issue 22)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.audit import _engine as engine
from mlsafety.audit._settings import row_setting_diff
from mlsafety.audit.checks.adversarial import default_eps
from mlsafety.core import InputError

MODEL = """
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    for name, n in (("data", 120), ("val", 40), ("few", 30), ("tiny", 2)):
        np.savez(tmp_path / f"{name}.npz", x=rng.random((n, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, n))
    np.savez(tmp_path / "ood.npz", x=rng.random((30, 1, 8, 8)).astype(np.float32), y=-np.ones(30, dtype=np.int64))
    return tmp_path


CERT = {"num_inputs": 12, "n": 40, "n0": 16, "num_attacked": 2, "attacks": ["pgd"], "sigmas": [0.25, 0.5]}


def _config(files, **kw):
    return AuditConfig(
        model=f"{files / 'm.py'}:small",
        data=str(files / "data.npz"),
        val=str(files / "val.npz"),
        ood=[str(files / "ood.npz")],
        checks=["clean", "certified"],
        check_params={"certified": CERT},
        **kw,
    )


def _rows(db):
    con = sqlite3.connect(db)
    try:
        return {
            (c, h, m): (v, lo, hi, n)
            for c, h, m, v, lo, hi, n in con.execute(
                "SELECT check_name, hazard, metric, value, ci_low, ci_high, n FROM results "
                "WHERE check_name != 'audit-plan'"
            )
        }
    finally:
        con.close()


def test_certified_resumes_between_its_tasks_and_equals_a_clean_run(files):
    """Certification and each consistency attack are tasks: stopped after 3 tasks, the resume stores the
    rest, and every row equals those of an uninterrupted run."""
    clean_db, db = files / "clean.sqlite", files / "runs.sqlite"
    full = run_audit(_config(files), db=clean_db, report="")
    keys = [k for (c, k) in engine.Store(clean_db).done_tasks(full.run_id) if c == "certified"]
    assert sorted(keys) == sorted(
        f"sigma-{s}{part}" for s in ("0.25", "0.5") for part in ("", "/consistency/smoothed-pgd-l2", "/consistency/pgd")
    )
    calls = {"n": 0}

    def stop_after_three(check, key, seconds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(engine.AuditInterrupted):
        run_audit(_config(files), db=db, report="", on_task=stop_after_three)
    partial = _rows(db)
    resumed = run_audit(_config(files), db=db, report="", resume=True)
    assert resumed.resumed_tasks == 3 and resumed.ran_tasks > 0
    again = _rows(db)
    assert len(again) > len(partial)
    want = _rows(clean_db)
    assert again.keys() == want.keys()
    for key, (v, lo, _hi, n) in want.items():
        got = again[key]
        assert got[3] == n and got[0] == pytest.approx(v, abs=1e-9), key
        assert (got[1] is None) == (lo is None) and (lo is None or got[1] == pytest.approx(lo, abs=1e-9)), key


def test_without_a_budget_no_task_is_cut(files):
    result = run_audit(_config(files), db=files / "runs.sqlite", report="")
    assert not engine.budget_cuts(result.rows)
    assert any(r.metric.startswith("certified_accuracy") for r in result.rows)


def test_under_a_budget_no_task_is_cut_and_certified_stores_its_headline(files, monkeypatch):
    """A budget far below the certified check's cost: no task is cut whole (tasks get deadlines instead, see
    test_audit_budget_deadline.py); the certification stores its rows at the inputs it reached."""
    monkeypatch.setattr(engine, "_startup", lambda budget, start: 0.0)
    result = run_audit(_config(files, budget="5s"), db=files / "runs.sqlite", report="")
    assert not engine.budget_cuts(result.rows)
    cert = [r for r in result.rows if r.check == "certified" and r.metric.startswith("certified_accuracy")]
    assert cert and all(1 <= (r.n or 0) <= CERT["num_inputs"] for r in cert)


TTA = {"methods": ["tebn"], "corruptions": [], "attack_batches": 1, "attack_steps": 1, "objectives": ["indiscriminate"],
       "attack_on": "clean"}  # fmt: skip


def _tta(files, data):
    cfg = AuditConfig(model=f"{files / 'm.py'}:bn", data=str(files / data), val=str(files / "val.npz"),
                      checks=["tta"], check_params={"tta": TTA})  # fmt: skip
    return run_audit(cfg, db=files / f"{data}.sqlite", report="")


def test_tta_clamps_its_batch_to_a_small_test_set(files):
    rows = _tta(files, "few.npz").rows  # 30 test inputs, batch_size 64
    tta_rows = [r for r in rows if r.check == "tta" and "batch_size" in r.params]
    assert tta_rows and {r.params["batch_size"] for r in tta_rows} == {30}
    assert any(r.metric == "indiscriminate_success_rate" for r in tta_rows)


def test_tta_on_too_few_inputs_is_not_applicable_with_why(files):
    rows = [r for r in _tta(files, "tiny.npz").rows if r.check == "tta"]
    assert [r.metric for r in rows] == ["not_applicable"]
    assert "2 inputs" in rows[0].params["reason"]


def test_the_eps_grid_on_no_images_is_one_line():
    with pytest.raises(InputError, match="eps"):
        default_eps(torch.zeros(0, 3, 8, 8), "linf")
    assert default_eps(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), "linf")


class _Row:
    def __init__(self, **params):
        self.params = params


def test_a_differing_detector_is_a_row_setting():
    assert row_setting_diff(_Row(detector="energy"), _Row(detector="knn")) == 'detector: "energy" -> "knn"'
    assert row_setting_diff(_Row(detector="energy"), _Row(detector="energy")) is None
    assert row_setting_diff(_Row(kind="far"), _Row(detector="knn")) is None


TROJANS = {"scanners": ["neural-cleanse", "strip"], "n_seeds": 2, "nc_steps": 5, "max_clean": 30}


def test_neural_cleanse_runs_as_a_task_after_the_run_is_recorded_and_resumes(files):
    """No trigger search while the audit is planned (the memo of scans is empty when the plan is announced,
    after the run row exists); stopped after the Neural Cleanse task, the resume stores the rest and every
    row equals an uninterrupted run's."""
    from mlsafety.audit.checks import trojans

    def cfg():
        return AuditConfig(model=f"{files / 'm.py'}:small", data=str(files / "data.npz"), val=str(files / "val.npz"),
                           checks=["clean", "trojans"], check_params={"trojans": TROJANS})  # fmt: skip

    scanned_at_plan = []
    earlier = list(trojans._SCANS)  # memos of contexts of earlier tests not yet collected: not this run's

    def scans_of_this_run(plan, n):
        scanned_at_plan.append(sum(len(m) for c, m in trojans._SCANS.items() if all(c is not e for e in earlier)))

    clean_db, db = files / "clean.sqlite", files / "runs.sqlite"
    run_audit(cfg(), db=clean_db, report="", on_plan=scans_of_this_run)
    assert scanned_at_plan == [0]
    calls = {"n": 0}

    def stop_after_two(check, key, seconds):
        calls["n"] += 1
        if calls["n"] == 2:
            assert (check, key) == ("trojans", "neural-cleanse")
            raise KeyboardInterrupt

    with pytest.raises(engine.AuditInterrupted):
        run_audit(cfg(), db=db, report="", on_task=stop_after_two)
    partial = _rows(db)
    resumed = run_audit(cfg(), db=db, report="", resume=True)
    assert resumed.resumed_tasks == 2 and resumed.ran_tasks == 1  # strip
    again, want = _rows(db), _rows(clean_db)
    assert len(again) > len(partial) and again.keys() == want.keys()
    for key, (v, _lo, _hi, n) in want.items():
        assert again[key][3] == n and again[key][0] == pytest.approx(v, abs=1e-9), key


class _FakeCheck:
    def __init__(self, name):
        self.name, self.params = name, {"n": 100}


@pytest.mark.parametrize(("measured", "expected"), [(10.0, 85), (20.0, 42)])
def test_re_planning_follows_the_measured_speed(measured, expected):
    """Check a was predicted 10 s and took ``measured``; 20 s of the 30 s budget are spent. Check b's unit
    cost (0.1 s) is scaled by measured / predicted and its n fits what is left: 30 * 0.95 - 20 = 8.5 s, so
    n = 8.5 / (0.1 * measured / 10): 85 at the predicted speed, 42 at half of it."""
    import time

    from mlsafety.audit._budget import CheckCost, Knob, make_plan

    costs = [CheckCost("a", 0.0, [Knob("a", "n", 100, 10, 0.1)]), CheckCost("b", 0.0, [Knob("b", "n", 100, 10, 0.1)])]
    plan = make_plan(costs, budget=30.0)
    assert plan.chosen("b", "n") == 100
    checks = [_FakeCheck("a"), _FakeCheck("b")]
    tracker = engine._Tracker(plan, 30.0, time.perf_counter() - 20.0, checks, set())  # 20 s spent so far
    tracker.done("a", measured)
    tracker.replan("b")
    # factor = measured / 10; left = 28.5 - 20 = 8.5 s; n_b = 8.5 / (0.1 * factor)
    assert abs(plan.chosen("b", "n") - expected) <= 1 and checks[1].params["n"] == plan.chosen("b", "n")


def _two_check_tracker(a_predicted_n: int, b_value: int, budget: float, elapsed: float):
    import time

    from mlsafety.audit._budget import CheckCost, Knob, make_plan

    costs = [
        CheckCost("a", 0.0, [Knob("a", "n", a_predicted_n, 1, 0.1)]),
        CheckCost("b", 0.0, [Knob("b", "n", b_value, 10, 0.1)]),
    ]
    plan = make_plan(costs, budget=budget)
    checks = [_FakeCheck("a"), _FakeCheck("b")]
    return plan, engine._Tracker(plan, budget, time.perf_counter() - elapsed, checks, set())


def test_a_cheap_check_that_ran_fast_does_not_inflate_the_dear_check_after_it():
    """Check a was predicted 1 s (10 x 0.1 s) and took 0.25 s (4x faster); b (unit 0.1 s, configured 1000) was
    cut to fit 60 s. Taken at face value the ratio 1/4 would let b afford 4x its n (all 1000); with the ratio
    shrunk towards 1 by the weight of b's predicted seconds (about 56 s against a's 1 s) b's n moves by a
    few percent: n = left / (0.1 * f), f = (0.25 + ahead) / (1 + ahead)."""
    plan, tracker = _two_check_tracker(10, 1000, 60.0, elapsed=1.0)
    planned = plan.chosen("b", "n")
    assert planned is not None and 400 < planned < 1000  # the budget cut b (else the test checks nothing)
    ahead = tracker.predicted["b"]
    tracker.done("a", 0.25)
    tracker.replan("b")
    f = (0.25 + ahead) / (1.0 + ahead)
    left = 60.0 * 0.95 - 1.0
    assert abs(plan.chosen("b", "n") - left / (0.1 * f)) <= 2  # elapsed grows by ms while the test runs
    assert plan.chosen("b", "n") < 1.1 * planned


def test_a_fast_ratio_on_much_evidence_is_believed_nearly_in_full():
    """a was predicted 50 s (500 x 0.1 s) and took 25 s; b is predicted 5 s: the shrunk ratio
    (25 + 5) / (50 + 5) = 0.545 is near the measured 0.5, and a slower-than-predicted ratio is never shrunk."""
    _plan, tracker = _two_check_tracker(500, 50, 1000.0, elapsed=25.0)
    tracker.done("a", 25.0)
    assert tracker._replan_factor() == pytest.approx(30 / 55, rel=1e-9)
    assert tracker._factor() == pytest.approx(0.5, rel=1e-9)  # allotments and the ETA: as measured
    tracker.done("a", 75.0)  # now 100 s against 50 predicted: 2x slower, taken as measured
    assert tracker._replan_factor() == tracker._factor() == pytest.approx(2.0, rel=1e-9)


def test_the_summary_names_a_size_re_planning_changed(monkeypatch):
    """When re-planning during the run changes a size the plan lines printed, the knob keeps the first plan's
    size (``planned``) and the record states it, so the summary does not silently contradict the plan lines."""
    plan, tracker = _two_check_tracker(10, 1000, 60.0, elapsed=1.0)
    first = plan.chosen("b", "n")
    tracker.done("a", 4.0)  # 4x slower: b must be cut further
    tracker.replan("b")
    knob = plan.knobs[("b", "n")]
    assert knob.chosen < first and knob.planned == first
    assert plan.knobs[("a", "n")].planned is None  # a ran: not re-planned
    record = {(k["check"], k["param"]): k for k in engine.plan_record(plan)["knobs"]}
    assert record[("b", "n")]["planned"] == first and "planned" not in record[("a", "n")]


def test_a_size_re_planned_back_to_the_first_plan_is_not_named_as_changed():
    """Re-planned, then back to the first plan's size (as a later re-plan may leave it): the record and the
    summary do not name a first plan equal to the size the check ran with."""
    plan, tracker = _two_check_tracker(10, 1000, 60.0, elapsed=1.0)
    first = plan.chosen("b", "n")
    tracker.done("a", 4.0)
    tracker.replan("b")
    assert plan.chosen("b", "n") != first
    knob = plan.knobs[("b", "n")]
    knob.chosen = first  # as a later re-plan that restored it would leave it
    record = {(k["check"], k["param"]): k for k in engine.plan_record(plan)["knobs"]}
    assert "planned" not in record[("b", "n")]


def test_shared_passes_not_yet_paid_are_neither_evidence_nor_free_time():
    """The shared forward passes (20 s predicted) are paid by whichever task first needs them, often the OOD
    check's training features, not by the first check. Check a (0.3 s predicted) took 0.3 s and paid none of
    them: the measured ratio is 1 (not 0.3 / 20.3, clamped to 1/4, as when a was taken to pay them), and the
    20 s still to be paid are kept out of what b's n may use: 100 * 0.95 - 1 s elapsed - 20 s = 74 s, n = 740
    (at a ratio of 1/4 and no reservation b would have taken all 2000)."""
    import time
    from types import SimpleNamespace

    from mlsafety.audit._budget import CheckCost, Knob, make_plan

    costs = [
        CheckCost("forward passes", 20.0),
        CheckCost("a", 0.3),
        CheckCost("b", 0.0, [Knob("b", "n", 2000, 10, 0.1)]),
    ]
    plan = make_plan(costs, budget=100.0)
    ctx = SimpleNamespace(shared_seconds=0.0)
    checks = [_FakeCheck("a"), _FakeCheck("b")]
    tracker = engine._Tracker(plan, 100.0, time.perf_counter() - 1.0, checks, set(), ctx)
    tracker.done("a", 0.3)
    assert tracker._factor() == pytest.approx(1.0)
    tracker.replan("b")
    assert abs(plan.chosen("b", "n") - 740) <= 2
    ctx.shared_seconds = 19.0  # a later task paid them (inside its own seconds): not the checks' speed
    tracker.done("b", 19.0 + 74.0)
    ratio = (0.3 + 74.0) / (0.3 + tracker.predicted["b"])  # the checks' own seconds over their predictions
    assert tracker._factor() == pytest.approx(ratio, rel=1e-9) and tracker._shared_left() == pytest.approx(1.0)


def test_the_context_counts_the_shared_passes_once_and_only_those(monkeypatch):
    """The clean and OOD outputs and the validation / training data's are the shared passes (counted, once:
    cached after); a corruption hazard's pass is its check's own work (not counted). Each pass is made to take
    a known time by a slowed forward."""
    from mlsafety.audit import AuditContext, AuditData
    from mlsafety.audit import _context as context
    from mlsafety.core import ArrayDataset, Classifier

    g = torch.Generator().manual_seed(0)

    def data(n):
        return ArrayDataset(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))

    model = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval())
    ctx = AuditContext(model, AuditData(test=data(20), val=data(10), train=data(10), ood={"o": data(10)}))
    clock = {"t": 0.0}
    monkeypatch.setattr(context.time, "perf_counter", lambda: clock["t"])
    real = context.forward

    def slow(*args, **kw):
        clock["t"] += 1.0  # every pass takes 1 s on the patched clock
        return real(*args, **kw)

    monkeypatch.setattr(context, "forward", slow)
    ctx.outputs("clean")
    ctx.outputs("clean")  # cached: not paid again
    ctx.outputs_for(ctx.data.val)
    ctx.outputs_for(ctx.data.train)
    ctx.outputs("ood/o")
    assert ctx.shared_seconds == pytest.approx(4.0)
    ctx.outputs("corruption/gaussian-noise/3")
    assert ctx.shared_seconds == pytest.approx(4.0)


def test_the_tta_cost_counts_the_methods_the_check_attacks():
    """The tta cost model read '#methods', which nothing set, so it always costed 3 methods: with the default
    ('all', six on a BN model) the check ran 2-3x its prediction (fashion-cnn --budget 4m: 58-82 s against
    29-31 s) and the checks after it were cut. The engine now derives it from the check's methods, and the
    attack knob's unit cost is proportional to it."""
    from mlsafety.audit import CHECKS
    from mlsafety.audit._budget import Rates, Sizes, check_costs
    from mlsafety.robustness import tta

    every = CHECKS.create("tta")
    two = CHECKS.create("tta", methods=sorted(tta.available())[:2])
    p_all, p_two = engine._derived(every, None, [every]), engine._derived(two, None, [two])
    assert p_all["#methods"] == len(tta.available()) > 3 and p_two["#methods"] == 2
    sizes, rates = Sizes(100, 50, 0, 0, 10), Rates(1e-3, 2e-3)
    unit = {n: next(k.unit for k in check_costs({"tta": p}, sizes, rates)[1].knobs if k.param == "attack_batches")
            for n, p in (("all", p_all), ("two", p_two))}  # fmt: skip
    assert unit["all"] / unit["two"] == pytest.approx(len(tta.available()) / 2)


def test_shared_passes_paid_while_planning_are_not_taken_out_of_the_tasks_seconds():
    """5 s of the shared passes were paid before the first task (inside no task's seconds): they are paid (15 of
    the 20 s predicted remain), but the ratio subtracts only what was paid inside the tasks since."""
    import time
    from types import SimpleNamespace

    from mlsafety.audit._budget import CheckCost, Knob, make_plan

    b = CheckCost("b", 0.0, [Knob("b", "n", 2000, 10, 0.1)])
    plan = make_plan([CheckCost("forward passes", 20.0), CheckCost("a", 1.0), b], budget=100.0)
    ctx = SimpleNamespace(shared_seconds=5.0)
    tracker = engine._Tracker(plan, 100.0, time.perf_counter(), [_FakeCheck("a"), _FakeCheck("b")], set(), ctx)
    assert tracker._shared_left() == pytest.approx(15.0)
    ctx.shared_seconds = 7.0  # a paid 2 s of them inside its 3 s
    tracker.done("a", 3.0)
    assert tracker._factor() == pytest.approx(1.0) and tracker._shared_left() == pytest.approx(13.0)
