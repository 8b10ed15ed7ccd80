"""The ``mlsafety corrupt`` command and the grid picture behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mlsafety.cli import main
from mlsafety.core import InputError
from mlsafety.robustness.corruptions import corruption_grid, read_image


def test_corrupt_writes_a_grid_for_a_file(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(main, ["corrupt", str(src), "--out", str(out), "--corruptions", "fog,contrast",
                                    "--severities", "1,5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    with Image.open(out) as img:
        assert img.width > 100 and img.height > 100


def test_corrupt_zoo_sample_and_errors(tmp_path):
    out = tmp_path / "digits.png"
    ok = CliRunner().invoke(main, ["corrupt", "zoo:digits:3", "--out", str(out), "--corruptions", "snow"])
    assert ok.exit_code == 0 and out.is_file()
    for args in (["missing.png"], ["zoo:digits:0", "--severities", "0"], ["zoo:digits:0", "--corruptions", "fgo"],
                 ["zoo:digits:x"]):  # fmt: skip
        res = CliRunner().invoke(main, ["corrupt", *args, "--out", str(tmp_path / "x.png")])
        assert res.exit_code == 2, (args, res.output)


def test_grid_layout_and_clean_column():
    img = read_image("zoo:digits:0")
    grid = corruption_grid(img, ["fog", "pixelate"], [2, 4])
    assert grid.shape == (2, 3, 1, 8, 8)
    assert torch.equal(grid[:, 0], img.expand(2, 1, 8, 8))
    assert read_image("zoo:digits:0", size=16).shape == (1, 16, 16)
    with pytest.raises(InputError):
        corruption_grid(img[None], ["fog"])


def test_grid_marks_cells_where_a_corruption_is_not_applicable():
    img = read_image("zoo:digits:0")  # one channel: saturate has nothing to change
    grid = corruption_grid(img, ["saturate", "defocus-blur"], [1, 5])
    assert torch.isnan(grid[0, 1:]).all() and not torch.isnan(grid[1]).any()
    assert not torch.equal(grid[1, 1], grid[1, 0])  # defocus blurs an 8-pixel digit (CIFAR-10-C parameters)
    shrunk = corruption_grid(img, ["defocus-blur"], [1], reference_size=224)  # ImageNet-C shrunk to 8 px
    assert torch.isnan(shrunk[0, 1]).all()  # a sub-pixel disk: not applicable, not a clean copy


def test_corrupt_command_draws_grey_saturate_as_not_applicable(tmp_path):
    out = tmp_path / "grey.png"
    res = CliRunner().invoke(main, ["corrupt", "zoo:digits:3", "--out", str(out), "--corruptions", "saturate,fog"])
    assert res.exit_code == 0, res.output
    assert out.is_file()


def test_a_zoo_text_set_is_refused_in_one_line(tmp_path):
    """`corrupt zoo:mr:0` read a sentence as an image and failed with an AttributeError traceback ('str' object
    has no attribute 'contiguous'); a zoo set that holds no images is one line naming the image sets."""
    with pytest.raises(InputError, match="'mr' holds text"):
        read_image("zoo:mr:0")
    res = CliRunner().invoke(main, ["corrupt", "zoo:mr:0", "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "zoo:digits" in lines[0], res.output
