"""``mlsafety overoptimization``: the simulator and the LM experiment write results; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.support.text import save_with_tokenizer, tiny_llama

REWARDS = """
import torch


def length():
    return lambda texts: torch.tensor([float(len(t)) for t in texts])


def words():
    return lambda texts: torch.tensor([float(len(t.split())) - 0.05 * len(t) for t in texts])


def takes_tensors():
    return lambda x: x.float().sum(-1)
"""


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("overopt")
    save_with_tokenizer(tiny_llama(0), folder / "llama")
    (folder / "rewards.py").write_text(REWARDS)
    return folder


def test_sim_writes_plot_and_results(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["overoptimization", "sim", "--seeds", "2", "--n-max", "16", "--n-boot", "50",
                                    "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "sim.json").read_text())
    assert out["ns"] == [1, 2, 4, 8, 16] and (tmp_path / "sim.png").stat().st_size > 0
    proxy = [v[0] for v in out["proxy"]]
    assert proxy == sorted(proxy) and "alpha" in out["fit"] and set(out["fits"]) == {"bon", "rl"}
    assert all(lo <= v <= hi for v, lo, hi in out["gold"])  # bands over seeds


def test_sim_tilt_sweeps_lambda_with_bands(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["overoptimization", "sim", "--optimiser", "tilt", "--seeds", "3", "--width", "8",
                                    "--lambdas", "2,1,0.5,0.2", "--n-boot", "50", "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "sim.json").read_text())
    assert out["lambdas"] == ["inf", 2.0, 1.0, 0.5, 0.2] and out["d"][0] == 0.0 and out["width"] == 8
    assert out["d"] == sorted(out["d"]) and out["gold"][1][1] < out["gold"][1][0] < out["gold"][1][2]
    assert out["fit"] == out["fits"]["rl"]


def test_lm_runs_and_reuses_its_samples(lm_dir: Path, tmp_path: Path) -> None:
    r = lm_dir / "rewards.py"
    args = ["overoptimization", "lm", "--model", str(lm_dir / "llama"), "--reward", f"{r}:length", "--gold",
            f"{r}:words", "--n-max", "8", "--prompts", "3", "--max-new-tokens", "4", "--n-boot", "50",
            "--out", str(tmp_path)]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "results.json").read_text())
    assert out["ns"] == [1, 2, 4, 8] and out["prompts"] == 3 and "monitor" not in out  # no --trusted: no monitor
    assert "no monitor (give --trusted)" in " ".join(res.output.split())
    said = " ".join(res.output.split())
    assert any(v in said for v in ("still rising at n-max", "falls after it", "flat after it"))
    assert len(out["peak"]["fall"]) == 3 and isinstance(out["peak"]["falls"], bool)
    cached = (tmp_path / "samples.json").read_text()
    res = CliRunner().invoke(main, [*args, "--trusted", f"{r}:words"])
    assert res.exit_code == 0 and (tmp_path / "samples.json").read_text() == cached
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["gold"] == out["gold"] and again["monitor"]["outcome"] in {
        "hit",
        "late",
        "miss",
        "false_alarm",
        "quiet",
    }


def test_lm_says_what_the_gold_does_after_its_peak() -> None:
    from mlsafety.cli._overopt import _after_peak

    rising = {"interior": False, "fall": [0.0, 0.0, 0.0], "falls": False}
    flat = {"interior": True, "fall": [0.02, -0.01, 0.05], "falls": False}
    real = {"interior": True, "fall": [0.2, 0.1, 0.3], "falls": True}
    assert _after_peak(rising) == ", still rising at n-max"
    assert "flat after it" in _after_peak(flat) and "0.020 [-0.010, 0.050]" in _after_peak(flat)
    assert _after_peak(real).startswith(", falls after it: 0.200 [0.100, 0.300]")


def test_lm_says_the_monitor_outcome_without_a_python_none() -> None:
    """With --trusted and no alarm the line read `monitor alarm at n=None (quiet)`."""
    from mlsafety.cli._overopt import _monitor_said

    assert _monitor_said(None) == "no monitor (give --trusted)"
    quiet = _monitor_said({"alarm_n": None, "outcome": "quiet"})
    missed = _monitor_said({"alarm_n": None, "outcome": "miss"})
    assert "None" not in quiet + missed and "no monitor alarm up to n-max" in quiet and "(miss)" in missed
    assert _monitor_said({"alarm_n": 8, "outcome": "hit"}) == "monitor alarm at n=8 (hit)"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-max", "2"], "--n-max must be at least 4"),
        (["--prompts", "0"], "prompt set is empty"),
        (["--prompts", "1"], "--prompts must be at least 2"),  # zero-width intervals; with --trusted, after sampling
        (["--prompts", "1", "--trusted", "{r}:words"], "--prompts must be at least 2"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--n-boot", "0"], "--n-boot must be at least 1"),  # it failed after the sampling
        (["--gold", "{r}:takes_tensors"], "--gold"),
    ],
)
def test_lm_bad_input_is_one_line_exit_2(lm_dir: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    r = lm_dir / "rewards.py"
    base = {"--model": str(lm_dir / "llama"), "--reward": f"{r}:length", "--gold": f"{r}:words", "--out": str(tmp_path)}
    for i in range(0, len(extra), 2):
        base[extra[i]] = extra[i + 1].format(r=r)
    args = ["overoptimization", "lm", *[x for kv in base.items() for x in kv]]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and message in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "samples.json").exists()  # refused before any sampling


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "0"], "--seeds must be at least 2"),
        (["--seeds", "1"], "--seeds must be at least 2 (the intervals are over seeds)"),  # zero-width intervals
        (["--n-max", "3"], "--n-max must be at least 4"),
        (["--n-max", "0"], "--n-max must be at least 4"),  # n < 1
        (["--optimiser", "tilt", "--lambdas", "1,0.5,-1"], "each finite and > 0"),
        (["--optimiser", "tilt", "--lambdas", "0,1,2"], "each finite and > 0"),  # lambda = 0
        (["--optimiser", "tilt", "--lambdas", "1,0.5,inf"], "each finite and > 0"),  # inf is always the first
        (["--optimiser", "tilt", "--lambdas", "1,x,2"], "comma-separated numbers"),
    ],
)
def test_sim_bad_input(tmp_path: Path, extra: list[str], message: str) -> None:
    res = CliRunner().invoke(main, ["overoptimization", "sim", *extra, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "out").exists()  # nothing written
