"""The defence-in-depth view's headlines: each stored row is one scorecard entry at most."""

from __future__ import annotations

import torch

from mlsafety.audit import StoredRow
from mlsafety.audit.views.defence_in_depth import DefenceInDepthView
from mlsafety.core import Hazard
from mlsafety.systemic import HazardResult, Outcome


def _outcome(n: int, escaped: int) -> Outcome:
    """``n`` inputs, the first ``escaped`` failed and unflagged, the rest answered correctly."""
    failed = torch.arange(n) < escaped
    return Outcome(failed, torch.zeros(n, dtype=torch.bool))


def _rows(outcomes: dict[Hazard, Outcome]) -> list[StoredRow]:
    """Stored rows as the check writes them per hazard (its estimates, the monitor in the params)."""
    rows = []
    for h, o in outcomes.items():
        for metric, est in HazardResult(o).estimates().items():
            at = (est.value, est.ci_low, est.ci_high, est.n)
            rows.append(StoredRow("defence-in-depth", str(h), metric, *at, {"monitor": "energy"}))
    return rows


def test_clean_as_the_worst_hazard_is_one_headline() -> None:
    """Clean escapes 30 of 100, fog 10 of 100: clean is the worst hazard, and its row was shown twice (once as
    clean, once as the worst); it is one entry now, whose label says it is the worst."""
    rows = _rows({Hazard.clean(): _outcome(100, 30), Hazard.parse("corruption/fog/3"): _outcome(100, 10)})
    heads = DefenceInDepthView.headlines(rows)
    clean_key = f"defence-in-depth/{Hazard.clean()}/escaped_failure_rate"
    shown = [h for h in heads if h.row.key == clean_key]
    assert len(shown) == 1
    assert "worst" in shown[0].label.lower()
    assert len({h.row.key for h in heads}) == len(heads)  # no row twice


def test_another_worst_hazard_has_its_own_headline() -> None:
    """Fog escapes 40 of 100, more than clean's 30: both the clean and the worst entry are shown."""
    fog = Hazard.parse("corruption/fog/3")
    rows = _rows({Hazard.clean(): _outcome(100, 30), fog: _outcome(100, 40)})
    heads = DefenceInDepthView.headlines(rows)
    assert [h.row.hazard for h in heads] == [str(Hazard.clean()), str(fog)]
    assert "worst" not in heads[0].label.lower() and "worst" in heads[1].label.lower()


def test_a_single_clean_hazard_is_one_headline() -> None:
    heads = DefenceInDepthView.headlines(_rows({Hazard.clean(): _outcome(50, 5)}))
    assert len(heads) == 1 and heads[0].row.value == 5 / 50
