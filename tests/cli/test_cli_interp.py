"""``mlsafety interp``: lens, patch and ioi on a tiny saved Llama; bad input is one line and exit 2 (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.support.text import save_with_tokenizer, tiny_gpt2, tiny_llama

IOI_ARGS = [
    *("--name", "cat", "--name", "dog", "--name", "paris", "--name", "london", "--name", "france"),
    *("--name", "england", "--place", "city", "--object", "book", "--object", "food"),
    *("--template", "the {A} and {B} saw a {OBJECT} in the {PLACE} . {C} ran to"),
]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("interp-cli")
    save_with_tokenizer(tiny_llama(0), folder / "llama")
    gpt2 = tiny_gpt2(0)
    gpt2.save_pretrained(folder / "gpt2")
    gpt2.tokenizer.save_pretrained(folder / "gpt2")
    (folder / "clean.txt").write_text("the cat sat on the mat\nthe dog ran to the city\n")
    (folder / "corrupted.txt").write_text("the dog sat on the mat\nthe cat ran to the city\n")
    (folder / "short.txt").write_text("the dog sat\nthe cat ran to the city\n")
    (folder / "one.txt").write_text("the dog sat on the mat\n")
    (folder / "own_clean.txt").write_text("the cat sat on the mat\nthe cat\n")  # the model's top answers differ
    (folder / "own_corrupted.txt").write_text("the dog sat on the mat\nthe dog\n")
    (folder / "same.txt").write_text("the cat sat on the mat\nthe dog ran to the city\n")
    return folder


def run(*args: str) -> object:
    return CliRunner().invoke(main, ["interp", *args])


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_lens_prints_every_layer_for_each_prompt_and_writes_a_section(d, tmp_path, model):
    out = tmp_path / "new" / "lens.html"
    prompts = ["--prompt", "the cat sat on the", "--prompt", "a dog"]
    result = run("lens", "--model", str(d / model), *prompts, "--top-k", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.count("blocks.0.resid_pre") == 2 and result.output.count("blocks.1.resid_post") == 2
    assert "logit lens: 'the cat sat on the'" in result.output and "top 2" in result.output
    html = out.read_text()
    assert "<h2>Logit lens (last token)</h2>" in html and "data:image/png;base64," in html
    assert "first agreeing read" in html


def test_lens_top_k_beyond_the_vocabulary_shows_the_whole_vocabulary(d):
    from tests.support.text import VOCAB

    result = run("lens", "--model", str(d / "llama"), "--prompt", "the cat", "--top-k", "100000")
    assert result.exit_code == 0, result.output
    assert f"top {len(VOCAB)}" in result.output and f"top {len(VOCAB) + 1}" not in result.output


def test_patch_with_the_models_own_answers_noise_direction_and_layers(d, tmp_path):
    out = tmp_path / "a" / "b" / "patch.html"  # a folder that does not exist yet
    args = ["--model", str(d / "llama"), "--clean", str(d / "own_clean.txt")]
    args += ["--corrupted", str(d / "own_corrupted.txt")]
    result = run("patch", *args, "--direction", "noise", "--layers", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "strongest resid_pre sites (noise)" in result.output and "layer 1" in result.output
    assert "layer 0" not in result.output
    assert "Activation patching: resid_pre (noise)" in out.read_text()


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
    assert "data:image/png;base64," in html and f"Activation patching: {point} (denoise)" in html
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
    "different token lengths": (
        ["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/short.txt", "--correct", "cat", "--wrong", "dog"],
        "length",
    ),
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
    "missing prompt file": (
        ["patch", "--clean", "{d}/nope.txt", "--corrupted", "{d}/clean.txt"],
        "--clean {d}/nope.txt: file not found; give a text file with one prompt per line",
    ),
    "same answer token": (
        ["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/same.txt"],
        "prompt 0: the clean and corrupted answers are the same token (",
    ),
    "layer out of range": (
        ["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/corrupted.txt", "--layers", "0,5"],
        "--layers 0,5: the model has 2 layers (0 to 1)",
    ),
    "layers not numbers": (
        ["patch", "--clean", "{d}/clean.txt", "--corrupted", "{d}/corrupted.txt", "--layers", "a"],
        "--layers 'a': give layer numbers separated by commas",
    ),
    "lens out not png or html": (["lens", "--prompt", "x", "--out", "{d}/lens.txt"], "give a .png (heat map) or .html"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(d, case):
    args, needle = BAD[case]
    model = "digits-cnn" if case == "not a language model" else str(d / "llama")
    result = run(args[0], "--model", model, *[a.replace("{d}", str(d)) for a in args[1:]])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle.replace("{d}", str(d)) in lines[0], lines[0]
