"""Options the commands took and ran on, refused in one line (exit 2) before any work.

Each was accepted before: ``certify --radius nan`` reported a certified accuracy of 0 at radius nan;
``tta --eps 0`` ran an attack that cannot change a malicious input and reported it as one;
``attack-text -p seed=7`` recorded seed 7 in summary.json while --seed's 0 ran (likewise
``query_budget`` and --budget); ``probe --layers ''`` failed inside the fit with a traceback.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlsafety.cli import main

CASES = {
    "certify --radius nan": (["certify", "--radius", "nan"], "--radius must be a finite number"),
    "certify --sigma inf": (["certify", "--sigma", "inf"], "--sigma must be a finite number"),
    "certify --sequential nan": (["certify", "--sequential", "nan"], "--sequential must be a finite number"),
    "tta --eps 0": (["tta", "--model", "digits-cnn-bn", "--eps", "0"], "--eps must be an L-inf radius in (0, 1]"),
    "attack-text -p seed": (["attack-text", "-p", "seed=7"], "--param seed is set by --seed; use --seed 7"),
    "attack-text -p query_budget": (["attack-text", "-p", "query_budget=9"], "use --budget 9 instead"),
    "probe --layers ''": (["probe", "--layers", ""], "--layers is empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_option_is_refused_in_one_line(case: str) -> None:
    args, needle = CASES[case]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
