"""``mlsafety interp``: lens, patch and ioi on a tiny saved Llama; bad input is one line and exit 2 (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.support.text import tiny_llama

IOI_ARGS = [
    *("--name", "cat", "--name", "dog", "--name", "paris", "--name", "london", "--name", "france"),
    *("--name", "england", "--place", "city", "--object", "book", "--object", "food"),
    *("--template", "the {A} and {B} saw a {OBJECT} in the {PLACE} . {C} ran to"),
]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("interp-cli")
    model = tiny_llama(0)
    model.save_pretrained(folder / "llama")
    model.tokenizer.save_pretrained(folder / "llama")
    (folder / "clean.txt").write_text("the cat sat on the mat\nthe dog ran to the city\n")
    (folder / "corrupted.txt").write_text("the dog sat on the mat\nthe cat ran to the city\n")
    (folder / "short.txt").write_text("the dog sat\nthe cat ran to the city\n")
    (folder / "one.txt").write_text("the dog sat on the mat\n")
    return folder


def run(*args: str) -> object:
    return CliRunner().invoke(main, ["interp", *args])


def test_lens_prints_every_layer_for_each_prompt(d):
    result = run(
        "lens", "--model", str(d / "llama"), "--prompt", "the cat sat on the", "--prompt", "a dog", "--top-k", "2"
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("blocks.0.resid_pre") == 2 and result.output.count("blocks.1.resid_post") == 2
    assert "logit lens: 'the cat sat on the'" in result.output


@pytest.mark.parametrize("point", ["resid_pre", "head_out"])
def test_patch_prints_sites_and_writes_the_heat_map(d, tmp_path, point):
    out = tmp_path / "patch.html"
    args = ["--model", str(d / "llama"), "--clean", str(d / "clean.txt"), "--corrupted", str(d / "corrupted.txt")]
    args += ["--correct", "cat", "--wrong", "dog"]
    result = run("patch", *args, "--point", point, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"strongest {point} sites" in result.output and "logit diff: clean" in result.output
    assert ("head" if point == "head_out" else "position") in result.output
    html = out.read_text()
    assert "data:image/png;base64," in html and f"Activation patching: {point}" in html
    png = tmp_path / "patch.png"
    assert run("patch", *args, "--point", point, "--out", str(png)).exit_code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_ioi_writes_the_circuit_report(d, tmp_path):
    result = run(
        "ioi", "--model", str(d / "llama"), "--n", "6", "--top-k", "3", *IOI_ARGS, "--out", str(tmp_path / "r")
    )
    assert result.exit_code == 0, result.output
    assert "IOI logit diff (clean)" in result.output and "top heads by patching" in result.output
    html = (tmp_path / "r" / "ioi.html").read_text()
    assert "data:image/png;base64," in html and "no claim is made that it matches GPT-2" in html
    assert (tmp_path / "r" / "ioi.json").is_file()


BAD = {
    "unknown hook point": (
        ["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/corrupted.txt", "--point", "resid_mid"],
        "valid: resid_pre, resid_post, attn_out, mlp_out, head_out",
    ),
    "different token lengths": (["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/short.txt"], "length"),
    "different prompt counts": (
        ["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/one.txt"],
        "--clean has 2 prompts but --corrupted has 1",
    ),
    "answer not a single token": (
        ["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/corrupted.txt", "--correct", "big red"],
        "token",
    ),
    "name not a single token": (
        ["ioi", "--n", "4", *IOI_ARGS, "--name", "zebediah mc", "--out", "{d}/never"],
        "'zebediah mc'",
    ),
    "not a language model": (["lens", "--prompt", "x"], "is not a causal language model"),
    "missing prompt file": (["patch", "--clean", "{d}/nope.txt", "--corrupted", "{d}/clean.txt"], "file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(d, case):
    args, needle = BAD[case]
    model = "digits-cnn" if case == "not a language model" else str(d / "llama")
    result = run(args[0], "--model", model, *[a.replace("{d}", str(d)) for a in args[1:]])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0], lines[0]
