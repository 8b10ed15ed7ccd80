"""Bad inputs of certify, corrupt, explain, harden, ood and trojans found by a sweep of their options.

Each was a traceback, a message naming a flag the command did not have, or a wrong ``wrote`` line; now
bad input is one line (exit 2) with nothing written, and the inputs the help promises work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mlsafety.cli import main
from tests.cli.cli_support import one_error_line

CORRUPT = ["corrupt", "zoo:digits:0", "--corruptions", "gaussian-noise", "--severities", "1"]


@pytest.mark.parametrize("names", ["", ",", " "])
def test_corrupt_with_no_corruption_named_is_one_line(names: str, tmp_path: Path) -> None:
    """`--corruptions ''` (or ',') failed in torch.stack with "stack expects a non-empty TensorList"."""
    args = ["corrupt", "zoo:digits:0", "--out", str(tmp_path / "o.png"), "--corruptions", names]
    res = CliRunner().invoke(main, args)
    one_error_line(res, "--corruptions names no corruption")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_out_with_an_unknown_picture_suffix_is_one_line(tmp_path: Path) -> None:
    """`--out grid.txt` drew the whole grid, then matplotlib raised "Format 'txt' is not supported" (traceback)."""
    res = CliRunner().invoke(main, [*CORRUPT, "--out", str(tmp_path / "grid.txt")])
    one_error_line(res, "--out grid.txt: .txt is not a picture format", ".png")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_out_without_suffix_writes_the_png_it_names(tmp_path: Path) -> None:
    """`--out grid` printed "wrote grid" but matplotlib added .png: the file named did not exist."""
    res = CliRunner().invoke(main, [*CORRUPT, "--out", str(tmp_path / "grid")])
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["grid"]
    assert (tmp_path / "grid").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {tmp_path / 'grid'} " in res.output


def _folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


IMAGE_FOLDER = {
    "certify": ["certify", "--inputs", "2", "--n0", "5", "--n", "10"],
    "explain sanity": ["explain", "sanity", "--inputs", "2", "-m", "saliency", "--mode", "cascading"],
    "ood eval": ["ood", "eval", "--n-boot", "10", "-d", "msp", "--ood", "noise"],
    "harden": ["harden", "--method", "fast", "--eps", "0.1", "--epochs", "1", "--out", "{d}/h.safetensors"],
}


@pytest.mark.parametrize("command", sorted(IMAGE_FOLDER))
def test_an_image_folder_as_data_takes_image_size(command: str, tmp_path: Path) -> None:
    """The help offers an image folder as --data, but every folder was refused with "needs --image-size H W",
    an option these commands did not have."""
    folder = _folder(tmp_path / "imgs", 6)
    args = [a.format(d=tmp_path) for a in IMAGE_FOLDER[command]] + ["--data", str(folder)]
    res = CliRunner().invoke(main, [*args, "--image-size", "8", "8"])
    assert res.exit_code == 0, (res.output, res.exception)
    one_error_line(CliRunner().invoke(main, [*args, "--image-size", "0", "8"]), "--image-size must be two positive")


@pytest.mark.parametrize("denoiser", ["", "digits-cnn", "minilm-mr"])
def test_certify_refuses_a_denoiser_that_is_none(denoiser: str) -> None:
    """`--denoiser ''` was ignored (certified without one), a classifier failed mid-run on the denoiser's output
    shape, and a text model failed with a traceback ("too many values to unpack")."""
    res = CliRunner().invoke(main, ["certify", "--inputs", "2", "--n0", "5", "--n", "10", "--denoiser", denoiser])
    one_error_line(res, f"--denoiser {denoiser!r} is not a zoo denoiser", "digits-denoiser-25")


def test_ood_eval_n_boot_has_a_ceiling() -> None:
    """`--n-boot 1000000000` failed allocating 40 GB with a traceback after fitting the detectors."""
    res = CliRunner().invoke(main, ["ood", "eval", "-d", "msp", "--n-boot", "1000000000"])
    one_error_line(res, "'--n-boot'", "10<=x<=1000000")


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("{d}/afile/pop", "afile is not a folder; pass another --out"),  # was NotADirectoryError from mkdir
        ("", "the path is empty"),  # wrote the weights and manifest.json into the current folder
    ],
)
def test_trojans_population_out_that_cannot_hold_it_is_one_line(
    out: str, needle: str, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    args = ["trojans", "population", "--n", "2", "--epochs", "1", "--out", out.format(d=tmp_path)]
    one_error_line(CliRunner().invoke(main, args), needle)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_trojans_population_n_has_a_ceiling(tmp_path: Path) -> None:
    """`--n 1000000000000` planned a trillion members in memory before the first model trained."""
    res = CliRunner().invoke(main, ["trojans", "population", "--n", str(10**12), "--out", str(tmp_path / "p")])
    one_error_line(res, "--n must be at least 2 and at most 10000")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shift", ["8", "1000000000"])
def test_harden_shift_past_the_image_is_one_line(shift: str, tmp_path: Path) -> None:
    """`--shift 1000000000` padded each 8x8 digit by a billion pixels: "Storage size calculation overflowed"."""
    args = ["harden", "--eps", "0.1", "--shift", shift, "--out", str(tmp_path / "h.safetensors")]
    one_error_line(CliRunner().invoke(main, args), "--shift must be less than the images' side (8 pixels)")
    assert list(tmp_path.iterdir()) == []
