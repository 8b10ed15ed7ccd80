"""Deadlines under --budget: a task's long loops stop at its deadline after their first unit and store rows
for the n they reached; every check is present under a small budget; no deadline without one (issue 22)."""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import pytest

from mlsafety.audit import CHECKS, AuditConfig, Check, Row, Task, TaskResult, register_check, run_audit
from mlsafety.audit import _engine as engine
from mlsafety.audit._budget import BUDGET_NOT_MEASURED, stopped_note, until_deadline
from mlsafety.metrics import proportion

MODEL = """
import torch
from torch import nn


def bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
"""


@pytest.fixture
def files(tmp_path, monkeypatch):
    # the test process's age is not the audit's start-up: a budget here is the audit's own
    monkeypatch.setattr(engine, "_startup", lambda budget, start: 0.0)
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    for name, n in (("data", 120), ("val", 60)):
        np.savez(tmp_path / f"{name}.npz", x=rng.random((n, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, n))
    np.savez(tmp_path / "ood.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=-np.ones(40, dtype=np.int64))
    return tmp_path


def _config(files, checks, **kw):
    return AuditConfig(model=f"{files / 'm.py'}:bn", data=str(files / "data.npz"), val=str(files / "val.npz"),
                       ood=[str(files / "ood.npz")], checks=checks, **kw)  # fmt: skip


class _Ctx:
    deadline: float | None = None


def test_a_loop_stops_before_the_unit_that_would_pass_the_deadline():
    """Units of 0.05 s against a deadline 0.12 s away: the first two fit (0.10 s), a third is predicted (by the
    longest unit so far) to end past the deadline and does not start; the loop never ends later than its
    deadline plus one unit."""
    ctx = _Ctx()
    t0 = time.perf_counter()
    ctx.deadline = t0 + 0.12
    done = []
    for i in until_deadline(ctx, range(100), "unit"):
        time.sleep(0.05)
        done.append(i)
    assert 1 <= len(done) <= 3 and done == list(range(len(done)))
    assert time.perf_counter() - t0 < 0.12 + 0.05 + 0.05  # at most one unit past (and scheduling slack)


def test_the_first_unit_always_runs_and_an_optional_one_only_when_it_fits():
    ctx = _Ctx()
    ctx.deadline = time.perf_counter() - 1.0  # already past
    assert list(until_deadline(ctx, range(5), "a")) == [0]  # the headline unit
    assert list(until_deadline(ctx, range(5), "a", first=0)) == []  # an optional one
    ctx.deadline = None  # no budget: every unit
    assert list(until_deadline(ctx, range(5), "a", first=0)) == [0, 1, 2, 3, 4]
    assert stopped_note(5, 5, "units") == {}
    assert "2 of 5 units" in stopped_note(2, 5, "units")["budget_stopped"]


@pytest.fixture
def slow_check():
    """A temporary check with one task of many slow units (a proportion over the units it reached)."""

    @register_check("test-slow")
    class Slow(Check):
        pillar = "performance"
        title = "slow"
        units = 400
        unit_s = 0.02  # 8 s without a deadline
        deadlines: ClassVar[list[float | None]] = []
        metrics = ("share_even",)

        def tasks(self, ctx):  # type: ignore[no-untyped-def]
            def run() -> TaskResult:
                Slow.deadlines.append(ctx.deadline)
                hits = []
                for i in until_deadline(ctx, range(Slow.units), "test-slow"):
                    time.sleep(Slow.unit_s)
                    hits.append(i % 2 == 0)
                note = stopped_note(len(hits), Slow.units, "units")
                return TaskResult([Row.of("clean", "share_even", proportion(sum(hits), len(hits)), **note)])

            return [Task("units", run)]

    try:
        yield Slow
    finally:
        CHECKS._entries.pop("test-slow", None)


def test_a_slow_check_under_a_budget_stores_its_rows_at_the_n_it_reached(files, slow_check):
    result = run_audit(_config(files, ["clean", "test-slow"], budget="6s"), db=files / "runs.sqlite", report="")
    (row,) = [r for r in result.rows if r.check == "test-slow"]
    assert 1 <= row.n < slow_check.units  # stopped at its deadline, with the n it reached
    assert f"{row.n} of {slow_check.units} units" in row.params["budget_stopped"]
    assert row.ci_low is not None and row.ci_high is not None and row.ci_high - row.ci_low > 0
    (deadline,) = slow_check.deadlines
    assert deadline is not None


def test_without_a_budget_no_task_has_a_deadline(files, slow_check):
    slow_check.units, slow_check.unit_s = 30, 0.0
    result = run_audit(_config(files, ["clean", "test-slow"]), db=files / "runs.sqlite", report="")
    (row,) = [r for r in result.rows if r.check == "test-slow"]
    assert row.n == 30 and "budget_stopped" not in row.params
    assert slow_check.deadlines == [None]


IMAGE_HEADLINED = ["clean", "adversarial", "certified", "corruptions", "tta", "calibration", "selective", "ood",
                   "transparency", "trojans", "defence-in-depth"]  # fmt: skip


def test_every_check_is_present_with_its_headline_under_a_small_budget(files):
    """Every image check runs under a budget far below what the configured sizes need (nothing is cut whole):
    each stores its headline rows, and a dear setting its deadline stopped says so."""
    checks = [c for c in CHECKS.available() if not c.startswith("test-")]
    result = run_audit(_config(files, checks, budget="15s"), db=files / "runs.sqlite", report="")
    assert not engine.budget_cuts(result.rows)
    by_check: dict[str, list] = {}
    for r in result.rows:
        by_check.setdefault(r.check, []).append(r)
    for name in IMAGE_HEADLINED:
        rows = [r for r in by_check.get(name, []) if r.metric != BUDGET_NOT_MEASURED]
        assert rows, name
        assert CHECKS.get(name).view.headlines(rows), name


def _ctx():
    import torch
    from torch import nn

    from mlsafety.audit._context import AuditContext, AuditData
    from mlsafety.core import ArrayDataset, Classifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    g = torch.Generator().manual_seed(0)

    def ds(n: int, ood: bool = False) -> ArrayDataset:
        y = -torch.ones(n, dtype=torch.long) if ood else torch.randint(0, 3, (n,), generator=g)
        return ArrayDataset(torch.rand(n, 1, 8, 8, generator=g), y)

    return AuditContext(Classifier(model), AuditData(test=ds(50), val=ds(40), ood={"far": ds(30, True)}))


def test_detectors_fitted_one_at_a_time_score_as_fitted_together():
    """The ood check under a budget fits its detectors one by one until the deadline: the ones it keeps give
    the clean scores they give fitted together, and those not reached are dropped."""
    import torch

    from mlsafety.audit.checks._common import ScoreCache

    names = ["msp", "energy", "knn", "mahalanobis"]
    joint = ScoreCache(_ctx(), names).scores("clean")
    ctx = _ctx()
    cache = ScoreCache(ctx, names)
    dropped = cache.fit_until(lambda ns: [n for n in ns if n in ("energy", "knn")], "clean")
    assert dropped == ["msp", "mahalanobis"] and cache.names == ["energy", "knn"]
    alone = cache.scores("clean")
    for n in cache.names:
        torch.testing.assert_close(alone[n], joint[n], rtol=1e-5, atol=1e-6)
    assert set(cache.scores("ood/far")) == {"energy", "knn"}  # later sets are scored by the kept ones only


def test_the_summary_counts_what_deadlines_stopped_per_check():
    from mlsafety.audit import StoredRow, budget_stopped

    rows = [
        StoredRow("tta", "tta-attack/tent/0.1", "indiscriminate_success_rate", 0.5, 0.1, 0.9, 10,
                  {"budget_stopped": "1 of 8 attack settings"}),
        StoredRow("tta", "tta-attack/tebn/0.1", BUDGET_NOT_MEASURED, 1.0, None, None, None, {}),
        StoredRow("tta", "tta-attack/medbn/0.1", BUDGET_NOT_MEASURED, 1.0, None, None, None, {}),
        StoredRow("clean", "clean", "accuracy", 0.9, 0.8, 0.95, 100, {}),
    ]  # fmt: skip
    assert budget_stopped(rows) == ["tta (1 rows at a reduced n, 2 not measured)"]
    assert budget_stopped(rows[3:]) == []


@pytest.mark.parametrize(("train", "floor"), [(0, 1), (500, 2)])
def test_one_trojan_seed_is_enough_unless_a_scanner_needs_their_spread(train, floor):
    """Neural Cleanse's interval is a bootstrap over classes and STRIP's is exact: one seed does; activation
    clustering (only with a training set) needs a spread over seeds, so two."""
    from mlsafety.audit._budget import Rates, Sizes, check_costs

    params = {"scanners": ["neural-cleanse", "strip", "activation-clustering"], "n_seeds": 3, "nc_steps": 200,
              "max_clean": 100}  # fmt: skip
    (cost,) = check_costs({"trojans": params}, Sizes(100, 50, train, 0, 10), Rates(1e-3, 2e-3))[1:]
    (seeds,) = [k for k in cost.knobs if k.param == "n_seeds"]
    assert seeds.floor == floor


def _tracker(budget: float) -> engine._Tracker:
    t = object.__new__(engine._Tracker)  # the allotment reads only these fields
    t.budget, t.start, t.spent, t.check_end, t.ctx = budget, time.perf_counter(), {}, {}, None
    t.predicted = {"a": 10.0, "b": 20.0}
    t.tasks_per_check, t.tasks_left = {"a": 2, "b": 1}, {"a": 2, "b": 1}
    return t


def test_a_task_gets_the_slack_when_the_rest_fits_and_a_share_when_it_does_not():
    """Budget 100 s (95 after the 5% reserve): what comes after a's first task is predicted at 5 + 20 s, so the
    task may take 95 - 25 = 70 s. Budget 20 s (19): nothing fits, a gets sqrt(10) / (sqrt(10) + sqrt(20)) of the
    19 s, shared by its 2 tasks."""
    assert _tracker(100.0).allot("a") == pytest.approx(70.0, abs=0.05)
    share = 19.0 * 10**0.5 / (10**0.5 + 20**0.5)
    assert _tracker(20.0).allot("a") == pytest.approx(share / 2, abs=0.05)
