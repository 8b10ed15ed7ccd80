"""Bad input the option sweep of attack-text, interp, overoptimization and tta found: each is one line, exit 2,
before any work, and leaves nothing behind (a traceback, a run until killed, or a value silently used before)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.cli.cli_support import one_error_line
from tests.support.text import save_with_tokenizer, tiny_llama

HUGE = str(10**20)
REWARDS = """
import torch


def length():
    return lambda texts: torch.tensor([float(len(t)) for t in texts])
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep-b")
    save_with_tokenizer(tiny_llama(0), folder / "llama")
    (folder / "rewards.py").write_text(REWARDS)
    (folder / "a-file").write_text("x")
    (folder / "prompts").mkdir()
    (folder / "clean.txt").write_text("the cat sat on the mat\n")
    return folder


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def test_attack_text_out_under_a_file_is_refused_before_the_model_loads(d: Path) -> None:
    # the model does not exist: the --out check comes first (it used to fail with a traceback after the attack)
    result = run("attack-text", "--model", str(d / "no-model"), "--out", str(d / "a-file" / "sub"))
    one_error_line(result, "--out", "is not a folder")


def test_attack_text_empty_options_are_refused(d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    one_error_line(run("attack-text", "--model", str(d / "no-model"), "--out", ""), "the path is empty")
    assert list(tmp_path.iterdir()) == []  # examples.jsonl and summary.json went into the working folder
    for flag in ("--text-column", "--label-column"):  # '' ran as if the option were left out
        one_error_line(run("attack-text", "--model", str(d / "no-model"), flag, ""), f"{flag} is empty")


@pytest.mark.parametrize("flag", ["--steps", "--batches"])
def test_tta_huge_counts_are_refused(flag: str) -> None:  # they ran until killed
    one_error_line(run("tta", flag, HUGE), flag, "10000")


def test_tta_empty_corruption_is_refused() -> None:  # it ran on clean data
    one_error_line(run("tta", "--corruption", ""), "--corruption must be NAME:SEVERITY")


def test_tta_seed_is_checked_by_the_option() -> None:
    one_error_line(run("tta", "--seed", str(2**63)), "--seed", "is not a seed")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--n", HUGE], ["--n", "100000"]),  # ran until killed
        (["--seed", str(2**63)], ["--seed", "is not a seed"]),  # accepted
        (["--out", ""], ["the path is empty"]),  # wrote ioi.html into the working folder
    ],
)
def test_ioi_bad_options(d: Path, args: list[str], needles: list[str]) -> None:
    one_error_line(run("interp", "ioi", "--model", str(d / "llama"), "--out", str(d / "never"), *args), *needles)
    assert not (d / "never").exists()


def test_patch_says_a_folder_is_a_folder(d: Path) -> None:
    result = run("interp", "patch", "--clean", str(d / "prompts"), "--corrupted", str(d / "clean.txt"))
    one_error_line(result, f"--clean {d / 'prompts'} is a folder")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seeds", HUGE], "--seeds must be at most 1_000"),  # ran until killed
        (["--labels", HUGE], "--labels must be at most"),  # an int64 overflow traceback
        (["--width", HUGE], "--width must be at most"),
        (["--n-boot", HUGE], "--n-boot must be at most"),
        (["--optimiser", "reinforce", "--steps", HUGE], "--steps must be at most"),
    ],
)
def test_sim_huge_counts_are_refused(tmp_path: Path, args: list[str], needle: str) -> None:
    one_error_line(run("overoptimization", "sim", *args, "--out", str(tmp_path / "o")), needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sub", ["sim", "lm"])
def test_out_under_a_file_or_empty_is_refused_before_work(d: Path, sub: str, monkeypatch, tmp_path) -> None:
    args = ["--reward", f"{d / 'rewards.py'}:length", "--gold", f"{d / 'rewards.py'}:length"] if sub == "lm" else []
    result = run("overoptimization", sub, *args, "--out", str(d / "a-file" / "sub"))
    one_error_line(result, "--out", "is not a folder")  # a NotADirectoryError traceback, after the work
    monkeypatch.chdir(tmp_path)
    one_error_line(run("overoptimization", sub, *args, "--out", ""), "the path is empty")
    assert list(tmp_path.iterdir()) == []


def test_sim_wrote_line_is_not_wrapped(tmp_path: Path) -> None:
    out = tmp_path / ("long-folder-name-" * 4)
    result = run("overoptimization", "sim", "--seeds", "2", "--n-max", "8", "--n-boot", "20", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'sim.json'} and {out / 'sim.png'}" in result.output.splitlines()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--temperature", "inf"], ["--temperature must be finite"]),  # the library's line, no flag, a folder left
        (["--max-new-tokens", HUGE], ["max_new_tokens", "positions"]),  # refused, but an empty folder left
        (["--n-max", HUGE], ["--n-max must be at most"]),  # an OverflowError traceback
        (["--n-boot", HUGE], ["--n-boot must be at most"]),  # ran until killed after the sampling
    ],
)
def test_lm_bad_values_leave_no_folder(d: Path, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    out = tmp_path / "new" / "out"
    r = d / "rewards.py"
    base = ["--model", str(d / "llama"), "--reward", f"{r}:length", "--gold", f"{r}:length", "--n-max", "4"]
    result = run("overoptimization", "lm", *base, "--prompts", "2", "--max-new-tokens", "2", *args, "--out", str(out))
    one_error_line(result, *needles)
    assert list(tmp_path.iterdir()) == []
