"""Five command-line defects a review left open: advice naming options `ood eval` lacks, `serve --port 0` not
saying which port it took, an empty `--ray-address` taken as none, `guard export --arl 1e20`, and the library's
`run_audit(report=<the database>)` writing the HTML report over the results database."""

import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mlsafety.audit import AuditConfig, Store, run_audit
from mlsafety.cli import main
from mlsafety.cli._ood import ood_eval
from mlsafety.guard import export_guard
from tests.cli.cli_support import one_error_line

CHECK = "defence-in-depth"


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A database with one small defence-in-depth run of digits-cnn, and its guard directory."""
    d = tmp_path_factory.mktemp("leftovers")
    db = d / "runs.sqlite"
    config = AuditConfig(model="digits-cnn", checks=[CHECK], max_samples=150, seed=3,
                         check_params={CHECK: {"adaptive": False}})  # fmt: skip
    run_audit(config, db=db, report="")
    with Store(db, create=False) as store:
        export_guard(store, "latest", d / "guard")
    return db, d / "guard"


# 1. ood eval: the audit's input messages advised --val, --channels and --classes, which it does not have


OOD_EVAL_FLAGS = {opt for p in ood_eval.params for opt in p.opts}


def _ood_eval_error(data, *more):
    result = CliRunner().invoke(main, ["ood", "eval", "--data", str(data), "-d", "msp", "--ood", "noise", *more])
    error = one_error_line(result)
    foreign = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", error)) - OOD_EVAL_FLAGS
    assert not foreign, error  # every flag the line names is one `ood eval` has
    return error


def test_ood_eval_too_little_data_advises_no_val(tmp_path):
    """`ood eval --data five.npz` said 'give at least 10, or pass --val'; ood eval has no --val."""
    np.savez(tmp_path / "five.npz", x=np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32), y=np.arange(5))
    assert "has 5 inputs; give at least 10" in _ood_eval_error(tmp_path / "five.npz")


def test_ood_eval_wrong_shape_advises_no_channels(tmp_path):
    """A shape the model cannot take: '(see --image-size, --channels)'; ood eval has no --channels."""
    x = np.random.default_rng(0).random((20, 1, 5, 5), dtype=np.float32)
    np.savez(tmp_path / "small.npz", x=x, y=np.arange(20) % 10)
    assert "(see --image-size)" in _ood_eval_error(tmp_path / "small.npz")


def test_ood_eval_wrong_class_list_advises_no_classes(tmp_path):
    """A classes.txt of 3 names for a 10-logit model: 'give --classes with one name per output'."""
    folder = tmp_path / "images"
    for i, name in enumerate("abc"):
        (folder / name).mkdir(parents=True)
        for j in range(4):
            Image.fromarray(np.full((8, 8), 20 * (i + j), dtype=np.uint8)).save(folder / name / f"{j}.png")
    (folder / "classes.txt").write_text("a\nb\nc\n")
    error = _ood_eval_error(folder, "--image-size", "8", "8")
    assert "names 3 classes but the model returns 10 logits" in error and "class list (classes.txt)" in error
