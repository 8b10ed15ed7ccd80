"""--budget, --max-samples and the cost plan (issue 22: the audit's cost on a user's model)."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch

from mlsafety.audit import AuditConfig, fmt_duration, parse_duration, run_audit
from mlsafety.audit import _engine as engine
from mlsafety.audit._budget import CheckCost, Knob, Rates, allocate, make_plan
from mlsafety.core import InputError

MODEL = """
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((120, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 120))
    np.savez(tmp_path / "ood.npz", x=rng.random((30, 1, 8, 8)).astype(np.float32), y=-np.ones(30, dtype=np.int64))
    return tmp_path


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1.5m", 90), ("1h", 3600), ("45", 45)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "abc", "", "2s", "-1m"])
def test_bad_durations_are_one_line(text):
    with pytest.raises(InputError, match="budget"):
        parse_duration(text)


def test_durations_read_as_a_person_says_them():
    assert fmt_duration(45) == "45 s"
    assert fmt_duration(240) == "4.0 min"
    assert fmt_duration(7200) == "2.0 h"


def test_allocation_is_the_lagrange_solution():
    """Minimising 1/sqrt(n1) + 1/sqrt(n2) under n1 + 8 n2 = 300 gives n ~ cost^(-2/3): n1 = 100, n2 = 25."""
    cheap, dear = Knob("a", "n", 1000, 1, 1.0), Knob("b", "n", 1000, 1, 8.0)
    assert allocate([cheap, dear], 300.0)
    assert abs(cheap.chosen - 100) <= 1 and abs(dear.chosen - 25) <= 1
    assert cheap.unit * cheap.chosen + dear.unit * dear.chosen <= 300.0
    # brute force over the budget line: no other split of the 300 s has a smaller sum of widths
    best = min((1 / math.sqrt(n1) + 1 / math.sqrt((300 - n1) // 8), n1) for n1 in range(1, 293))
    assert abs(best[1] - cheap.chosen) <= 3


def test_allocation_never_raises_a_size_and_floors_when_it_cannot_fit():
    k1, k2 = Knob("a", "n", 50, 10, 1.0), Knob("b", "n", 40, 10, 1.0)
    assert allocate([k1, k2], 1000.0)
    assert (k1.chosen, k2.chosen) == (50, 40)  # fits: the profile's sizes stay
    assert not allocate([k1, k2], 5.0)
    assert (k1.chosen, k2.chosen) == (10, 10)


def test_a_plan_cuts_where_samples_are_dear():
    costs = [CheckCost("x", 2.0, [Knob("x", "n", 200, 20, 0.5)]), CheckCost("y", 1.0, [Knob("y", "n", 200, 20, 0.01)])]
    plan = make_plan(costs, budget=40.0)
    assert plan.fits and plan.seconds <= 40.0 * 0.95 + 1e-9
    assert plan.chosen("x", "n") < 200 and plan.chosen("y", "n") == 200
    assert [k.check for k in plan.cut()] == ["x"]
    assert make_plan(costs, None).seconds == pytest.approx(3.0 + 100 + 2)  # no budget: the estimate only


def _config(files, **kw):
    return AuditConfig(
        model=f"{files / 'm.py'}:small",
        data=str(files / "data.npz"),
        ood=[str(files / "ood.npz")],
        checks=["clean", "adversarial", "certified"],
        check_params={"adversarial": {"n": 60, "eps": [0.1]}, "certified": {"num_inputs": 30, "n": 50, "n0": 16}},
        **kw,
    )


def _n_by_check(db):
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT check_name, MAX(n) FROM results WHERE kind='estimate' GROUP BY check_name"))
    finally:
        con.close()


def _dear_attacks(monkeypatch):
    """Measured rates, but every attacked input costs 1 s."""
    real = engine.measure_rates

    def dear_attacks(*args, **kw):
        r = real(*args, **kw)
        return Rates(r.forward, r.backward, r.corrupt, {k: 1.0 for k in r.attack})

    monkeypatch.setattr(engine, "measure_rates", dear_attacks)


def test_a_budget_cuts_the_dear_check_and_the_report_states_every_n(files, monkeypatch):
    """Rates that make an attacked input cost 1 s: a 60 s budget cannot afford 60 attacked inputs, so the
    adversarial n is cut; the stored rows use the chosen n and the plan rows state it with its width."""
    _dear_attacks(monkeypatch)
    # the real attacks are far cheaper than the faked rate: without this, re-planning from the measured speed
    # (ratio clamped at 1/4) may afford all 60 again, depending on the machine's load
    monkeypatch.setattr(engine._Tracker, "_factor", lambda self: 1.0)
    db = files / "runs.sqlite"
    result = run_audit(_config(files, budget="60s"), db=db, report="")
    plan = result.plan
    assert plan is not None and plan.budget == 60
    chosen = plan.chosen("adversarial", "n")
    assert chosen is not None and 20 <= chosen < 60
    rows = {r.key: r for r in result.rows}
    assert rows["audit-plan/clean/adversarial_n_chosen"].value == chosen
    width = rows["audit-plan/clean/adversarial_n_worst_interval_width"]
    assert width.value == pytest.approx(2 * 1.96 * math.sqrt(0.25 / chosen), abs=1e-4) and width.n == chosen
    assert rows["audit-plan/clean/budget_seconds"].value == 60
    assert _n_by_check(db)["adversarial"] == chosen


def test_without_a_budget_nothing_is_cut_and_no_plan_row_is_stored(files):
    result = run_audit(_config(files, val=str(files / "data.npz")), db=files / "runs.sqlite", report="")
    assert result.plan is not None and result.plan.seconds > 0  # the estimate is always made
    assert not [r for r in result.rows if r.check == "audit-plan"]
    assert _n_by_check(files / "runs.sqlite")["adversarial"] == 60


def test_max_samples_caps_every_source_with_a_seeded_subset(files):
    cfg = _config(files, max_samples=40, val=str(files / "data.npz"))
    result = run_audit(cfg, db=files / "runs.sqlite", report="")
    clean = next(r for r in result.rows if r.key == "clean/clean/accuracy")
    assert clean.n == 40
    data = engine.AuditData(
        test=engine.ArrayDataset(torch.arange(100.0).reshape(100, 1, 1, 1), torch.zeros(100, dtype=torch.long)),
        val=engine.ArrayDataset(torch.zeros(10, 1, 1, 1), torch.zeros(10, dtype=torch.long)),
    )
    a, b = engine.cap_data(data, 30, seed=0), engine.cap_data(data, 30, seed=0)
    assert len(a.test) == 30 and len(a.val) == 10 and torch.equal(a.test.x, b.test.x)
    assert bool((a.test.x.flatten().diff() > 0).all())  # the source's order is kept
    assert not torch.equal(engine.cap_data(data, 30, seed=1).test.x, a.test.x)


def test_the_held_out_validation_share_is_stored(files):
    result = run_audit(_config(files), db=files / "runs.sqlite", report="")
    assert result.held_out == (36, 120)
    row = next(r for r in result.rows if r.key == "audit-plan/validation/held_out_of_test")
    assert (row.value, row.n, row.params["share"]) == (36, 120, 0.3)


def test_a_budget_on_a_resume_reuses_the_stored_sizes(files, monkeypatch):
    """Interrupt a budgeted run after its first check; the resume must measure the started checks with the
    sizes of the first attempt, whatever the new timing says, and store the missing rows."""
    real = engine.measure_rates
    unit = {"value": 1.0}

    def rates(*args, **kw):
        r = real(*args, **kw)
        return Rates(r.forward, r.backward, r.corrupt, {k: unit["value"] for k in r.attack})

    monkeypatch.setattr(engine, "measure_rates", rates)
    db = files / "runs.sqlite"
    calls = {"n": 0}

    def stop_after_two(check, key, seconds):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(engine.AuditInterrupted):
        run_audit(_config(files, budget="60s"), db=db, report="", on_task=stop_after_two)
    con = sqlite3.connect(db)
    first = dict(con.execute("SELECT metric, value FROM results WHERE check_name='audit-plan'"))
    con.close()
    unit["value"] = 0.0001  # the resume would choose other sizes if it planned afresh
    result = run_audit(_config(files, budget="60s"), db=db, report="", resume=True)
    assert result.resumed_tasks == 2
    stored = {r.metric: r.value for r in result.rows if r.check == "audit-plan"}
    assert stored["adversarial_n_chosen"] == first["adversarial_n_chosen"]
    assert _n_by_check(db)["adversarial"] == first["adversarial_n_chosen"]


def test_the_run_record_states_the_sizes_the_checks_ran_with_after_re_planning(files, monkeypatch):
    """Re-planning after the first check (here: measured 4x faster than predicted) changes the sizes of the
    checks not yet started; the run record's effective parameters and plan, which ``compare`` reads to tell a
    settings difference from a sample-size one, must hold those sizes, as the audit-plan rows do."""
    _dear_attacks(monkeypatch)
    monkeypatch.setattr(engine._Tracker, "_factor", lambda self: 0.25)
    cfg = AuditConfig(model=f"{files}/m.py:small", data=str(files / "data.npz"), ood=[],
                      checks=["clean", "trojans", "adversarial"], budget="40s",
                      check_params={"trojans": {"scanners": ["neural-cleanse", "strip"]}})  # fmt: skip
    db = files / "runs.sqlite"
    result = run_audit(cfg, db=db, report="")
    chosen = {(r.params["check"], r.params["param"]): r.value for r in result.rows if r.metric.endswith("_chosen")}
    assert ("adversarial", "n") in chosen and ("trojans", "n_seeds") in chosen  # else the loops below check nothing
    con = sqlite3.connect(db)
    try:
        import json

        record = json.loads(con.execute("SELECT config_json FROM runs").fetchone()[0])
    finally:
        con.close()
    for (check, param), value in chosen.items():
        if check != "#test":
            assert record["effective_params"][check][param] == value, (check, param)
    assert {(k["check"], k["param"]): k["chosen"] for k in record["plan"]["knobs"]} == chosen
