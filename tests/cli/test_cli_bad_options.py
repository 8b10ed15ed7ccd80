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
    "certify --radius nan": (["certify", "--radius", "nan"], "'--radius': nan is not a finite number"),
    "certify --sigma inf": (["certify", "--sigma", "inf"], "'--sigma': inf is not a finite number"),
    "certify --sequential nan": (["certify", "--sequential", "nan"], "'--sequential': nan is not a finite number"),
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


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["audit", "--image-size", "32"], "mlsafety audit"),
        (["ood", "eval", "--n-boot"], "mlsafety ood eval"),
        (["guard", "export", "latest", "--out"], "mlsafety guard export"),
    ],
)
def test_an_option_missing_its_value_points_at_the_commands_help(args: list[str], where: str) -> None:
    """click raises "Option '--image-size' requires 2 arguments" without a context, and the line pointed at
    the root's help (`see mlsafety --help`), which does not describe the option; it names the command's."""
    res = CliRunner().invoke(main, args, prog_name="mlsafety")
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and f"(see `{where} --help`)" in res.output, res.output


def test_an_option_before_the_command_is_one_line() -> None:
    """`mlsafety --db runs.sqlite audit` (a command's option put before it) printed click's usage block and
    "Error: No such option '--db'." over four lines; it is one line, exit 2, like every other usage error."""
    res = CliRunner().invoke(main, ["--db", "x.sqlite", "audit"], prog_name="mlsafety")
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == ["error: No such option '--db'. (see `mlsafety --help`)"], res.output


@pytest.mark.parametrize("args", [[], ["zoo"], ["ood"], ["guard"]])
def test_a_group_without_its_command_shows_its_help(args: list[str]) -> None:
    """`mlsafety zoo` printed "error: Usage: mlsafety zoo [OPTIONS] ... Commands: install-assets ..." with the
    whole help squeezed into one error line; a group run without a command shows its help as `--help` does."""
    res = CliRunner().invoke(main, args, prog_name="mlsafety")
    want = CliRunner().invoke(main, [*args, "--help"], prog_name="mlsafety")
    assert "error:" not in res.output and "Commands:" in res.output, res.output
    assert want.output.strip() in res.output, res.output


# Bad numbers of the flags below gave a message naming a library parameter (``TrainConfig epochs must be >= 1``,
# ``size must be a positive number``, ``alpha must lie in (0, 1)``, ``drift alarm arl``), a traceback (an
# infinite --reference-size, a --size too large to allocate), or ran on (``harden --steps 0`` trained on random
# points of the eps-ball; ``harden --beta inf``, ``serve --max-wait-ms inf`` with a window that never closes).
FLAG_CASES = {
    "certify --alpha nan": (["certify", "--alpha", "nan"], "'--alpha': nan is not a finite number"),
    "explain sanity --threshold nan": (["explain", "sanity", "--threshold", "nan"], "'--threshold': nan is not"),
    "guard export --arl inf": (
        ["guard", "export", "latest", "--out", "{d}/guard", "--arl", "inf", "--db", "{d}/none.sqlite"],
        "'--arl': inf is not a finite number",
    ),
    "serve --max-wait-ms inf": (["serve", "{d}/guard", "--max-wait-ms", "inf"], "'--max-wait-ms': inf is not a finite"),
    "harden --epochs 0": (["harden", "--eps", "0.1", "--epochs", "0"], "--epochs must be at least 1"),
    "harden --epochs -1": (["harden", "--eps", "0.1", "--epochs", "-1"], "--epochs must be at least 1"),
    "harden --steps 0": (["harden", "--eps", "0.1", "--steps", "0", "--epochs", "1"], "--steps must be at least 1"),
    "harden --lr 0": (["harden", "--eps", "0.1", "--lr", "0"], "--lr must be a finite number > 0"),
    "harden --lr nan": (["harden", "--eps", "0.1", "--lr", "nan"], "--lr must be a finite number > 0"),
    "harden --beta inf": (
        ["harden", "--eps", "0.1", "--method", "trades", "--beta", "inf", "--epochs", "1"],
        "--beta must be a finite number >= 0",
    ),
    "harden --eps nan": (["harden", "--eps", "nan"], "--eps must be a finite number >= 0"),
    "harden --eps -1": (["harden", "--eps", "-1"], "--eps must be a finite number >= 0"),
    "harden --eps 2": (["harden", "--eps", "2"], "--eps must be at most 1 with --norm linf"),
    "harden fast --eps 0": (["harden", "--method", "fast", "--eps", "0"], "--method fast needs --eps > 0"),
    "corrupt --size 0": (["corrupt", "zoo:digits:0", "--size", "0"], "--size must be a whole number of pixels"),
    "corrupt --size huge": (
        ["corrupt", "zoo:digits:0", "--size", "1000000000"],
        "--size must be a whole number of pixels",
    ),
    "corrupt --reference-size 0": (
        ["corrupt", "zoo:digits:0", "--reference-size", "0"],
        "--reference-size must be a finite number",
    ),
    "corrupt --reference-size inf": (
        ["corrupt", "zoo:digits:0", "--reference-size", "inf"],
        "--reference-size must be a finite number",
    ),
    "trojans population --n 1": (["trojans", "population", "--n", "1"], "--n must be at least 2"),
    "trojans population --n -2": (["trojans", "population", "--n", "-2"], "--n must be at least 2"),
}
OUT = {"harden": ["--out", "{d}/out.safetensors"], "corrupt": ["--out", "{d}/out.png"], "trojans": ["--out", "{d}/out"]}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_a_bad_number_names_the_flag_in_one_line_and_writes_nothing(case: str, tmp_path) -> None:
    args, needle = FLAG_CASES[case]
    args = [a.format(d=tmp_path) for a in [*args, *OUT.get(args[0], [])]]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and needle in res.output, (res.output, res.exception)
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["harden", "--out", "o.safetensors", "--eps", "0.1", "--seed", "-1"],
        ["trojans", "population", "--out", "p", "--seed", "-1"],
        ["probe", "--seed", "-1"],
        ["zoo", "train", "digits-cnn", "--seed", "-1"],
        ["corrupt", "digits", "--out", "o", "--seed", "-1"],
        ["overoptimization", "lm", "--reward", "r.py:f", "--gold", "g.py:f", "--seed", "-1"],
        ["probe", "--seed", str(2**63)],
    ],
)
def test_a_negative_or_oversized_seed_is_refused_like_audits(args: list[str], tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`zoo train digits-cnn --seed -1` trained and wrote digits-cnn-seed-1 (read as seed 1's); harden, trojans
    population and probe started their work on -1 while audit, certify, ood and tta refused it."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "is not a seed" in res.output, res.output
    assert list(tmp_path.iterdir()) == []  # nothing written
