"""Every bad input of issue 12 point 4: exit 2, one line naming the problem and the fix, no run stored.

Each case runs the real command line (click's runner, in process) against a fresh database and
then checks that the database holds no run: validation happens before the run's row is created.
"""

import os
import pickle
import sqlite3

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mlsafety.audit._inputs import AuditConfig, resolve_data, resolve_model
from mlsafety.cli import main
from mlsafety.core import generator

MODEL = """
import torch
from torch import nn


def good():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


class _NaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


class _Inf(_NaN):
    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out.masked_fill(x.flatten(1)[:, :1] > 0.5, float("inf"))


def nan():
    return _NaN()


def some_inf():
    return _Inf()


def one_logit():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1))


def conv_gray():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def conv_rgb():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def raises():
    raise RuntimeError("cannot find the checkpoint")


def needs_arg(width, depth=2):
    return nn.Linear(width, 3)


def exits():
    raise SystemExit(4)


def not_a_module():
    return 42
"""


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _npz(path, x, y=None):
    if y is None:
        np.savez(path, x=x)
    else:
        np.savez(path, x=x, y=y)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "m.py").write_text(MODEL)
    (d / "exit_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (d / "raise_at_import.py").write_text("raise ImportError('no module named secret_layers')\n")
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    _npz(d / "ok.npz", x, y)
    _npz(d / "y2d.npz", x, y[:, None])
    _npz(d / "frac.npz", x, y.astype("f4") + 0.4)
    nan_y = y.astype("f8")
    nan_y[5] = np.nan
    _npz(d / "nanlabel.npz", x, nan_y)
    _npz(d / "rgb.npz", rng.random((40, 3, 8, 8)).astype(np.float32), y)
    _npz(d / "rgb_ood.npz", rng.random((12, 3, 8, 8)).astype(np.float32))
    _npz(d / "val_bad.npz", x[:12], np.full(12, 5))
    _npz(d / "train_frac.npz", x[:12], np.full(12, 0.5))
    # one bad label at a position the 30% validation hold-out takes under seed 0: the message must
    # still name the test file given with --data
    perm = torch.randperm(40, generator=generator(0, "holdout-val"))
    held = y.copy()
    held[int(perm[0])] = 9
    _npz(d / "heldout_bad.npz", x, held)
    for label in ("cat", "dog"):
        (d / "folder" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / "folder" / label / f"{i}.png")
    with open(d / "evil.pt", "wb") as fh:
        pickle.dump({"1.weight": _Evil()}, fh)
    (d / "random.pt").write_bytes(np.random.default_rng(1).integers(1, 128, 256, dtype=np.uint8).tobytes())
    (d / "random.safetensors").write_bytes(bytes(range(1, 200)))
    (d / "zero_batch.toml").write_text('checks = ["clean"]\nbatch_size = 0\n')
    (d / "big_seed.toml").write_text(f'checks = ["clean"]\nseed = {2**63 - 1}\nbatch_size = -3\n')
    (d / "nan_gate.toml").write_text('checks = ["clean"]\n[fail_under]\n"clean/clean/accuracy" = nan\n')
    (d / "bad_channels.toml").write_text('checks = ["clean"]\nchannels = 2\n')
    (d / "checks_table.toml").write_text('[checks.ood]\ndetectors = ["msp"]\n')
    (d / "typo_gate.toml").write_text('checks = ["clean"]\n[fail_under]\n"clean/*/class_1_acc" = 0.5\n')
    (d / "zoo_classes.toml").write_text('checks = ["clean"]\nclasses = ["a", "b"]\n')
    return d


OK = ["--data", "{d}/ok.npz", "--ood", "noise", "--check", "clean"]
M = "{d}/m.py:"

CASES = {
    # -- the model ------------------------------------------------------------------------------
    "NaN logits": (["--model", M + "nan", *OK], "NaN or infinite logits"),
    "Inf logits on some inputs": (["--model", M + "some_inf", *OK], "NaN or infinite logits"),
    "one logit": (["--model", M + "one_logit", *OK], "K >= 2"),
    "factory raises": (["--model", M + "raises", *OK], "raised RuntimeError: cannot find the checkpoint"),
    "factory needs an argument": (["--model", M + "needs_arg", *OK], "needs arguments (width)"),
    "factory calls sys.exit": (["--model", M + "exits", *OK], "raised SystemExit: 4"),
    "sys.exit at import": (["--model", "{d}/exit_at_import.py:make", *OK], "failed with SystemExit: 3"),
    "exception at import": (["--model", "{d}/raise_at_import.py:make", *OK], "failed with ImportError"),
    "model file missing": (["--model", "{d}/nope.py:good", *OK], "model file not found"),
    "no such factory": (["--model", M + "nope", *OK], "defines no function 'nope'"),
    "factory returns no module": (["--model", M + "not_a_module", *OK], "returned int, not a torch.nn.Module"),
    "random bytes as weights": (
        ["--model", M + "good", "--weights", "{d}/random.pt", *OK],
        "is not a valid weights file: neither safetensors nor a torch state dict",
    ),
    "random bytes as safetensors": (
        ["--model", M + "good", "--weights", "{d}/random.safetensors", *OK],
        "is not a valid weights file",
    ),
    "pickle that runs code": (
        ["--model", M + "good", "--weights", "{d}/evil.pt", *OK],
        "refused to load",
    ),
    # -- the data -------------------------------------------------------------------------------
    "y of shape (N, 1)": (["--model", M + "good", *OK[:1], "{d}/y2d.npz", *OK[2:]], "y must be 1-D (N,)"),
    "fractional labels": (["--model", M + "good", "--data", "{d}/frac.npz", *OK[2:]], "must be whole numbers"),
    "NaN labels": (["--model", M + "good", "--data", "{d}/nanlabel.npz", *OK[2:]], "contain NaN"),
    "bad label held out of the test file": (
        ["--model", M + "good", "--data", "{d}/heldout_bad.npz", *OK[2:]],
        "labels of --data {d}/heldout_bad.npz (test data) must lie in [0, 3)",
    ),
    "bad label in the validation file": (
        ["--model", M + "good", *OK, "--val", "{d}/val_bad.npz"],
        "labels of --val {d}/val_bad.npz (validation data) must lie in [0, 3)",
    ),
    "fractional labels in the training file": (
        ["--model", M + "good", *OK, "--train", "{d}/train_frac.npz"],
        "labels of --train {d}/train_frac.npz (training data) must be whole numbers",
    ),
    "RGB npz for a one-channel model": (
        ["--model", M + "conv_gray", "--data", "{d}/rgb.npz", *OK[2:]],
        "have 3 channels but the model takes 1; convert them to grayscale",
    ),
    "RGB OOD npz for a one-channel model": (
        ["--model", M + "conv_gray", "--data", "{d}/ok.npz", "--ood", "{d}/rgb_ood.npz", "--check", "clean"],
        "inputs of --ood {d}/rgb_ood.npz (OOD set) have 3 channels but the model takes 1",
    ),
    "--channels 3 for a one-channel model": (
        ["--model", M + "conv_gray", "--data", "{d}/folder", "--image-size", "8", "8", "--channels", "3", *OK[2:]],
        "have 3 channels but the model takes 1",
    ),
    "--channels 1 for an RGB npz": (
        ["--model", M + "conv_rgb", "--data", "{d}/rgb.npz", "--channels", "1", *OK[2:]],
        "inputs of --data {d}/rgb.npz (test data) have 3 channels but --channels asks for 1",
    ),
    "--channels 2": (["--channels", "2", *OK], "--channels must be 1 (grayscale) or 3 (RGB)"),
    "channels = 2 in TOML": (["--config", "{d}/bad_channels.toml"], "bad_channels.toml: channels must be 1"),
    "check parameters under [checks.X] in TOML": (
        ["--config", "{d}/checks_table.toml"],
        "a check's parameters go in [params.<check>], e.g. [params.ood]",
    ),
    "--image-size 0 8": (["--data", "{d}/folder", "--image-size", "0", "8", *OK[2:]], "--image-size must be two"),
    "--image-size -4 8": (["--data", "{d}/folder", "--image-size", "-4", "8", *OK[2:]], "positive integers H W"),
    "--batch-size 0": (["--batch-size", "0", *OK], "--batch-size must be a positive integer, got 0"),
    "--batch-size -7": (["--batch-size", "-7", *OK], "--batch-size must be a positive integer, got -7"),
    "batch_size = 0 in TOML": (["--config", "{d}/zero_batch.toml"], "zero_batch.toml: batch_size must be a positive"),
    "batch_size < 0 in TOML": (["--config", "{d}/big_seed.toml"], "big_seed.toml: batch_size must be a positive"),
    "--seed 2**63": (["--seed", str(2**63), *OK], "--seed must be an integer in [0, 2**63 - 1]"),
    "--seed -1": (["--seed", "-1", *OK], "--seed must be an integer in [0, 2**63 - 1], got -1"),
    # -- --classes where it would be ignored (it names the labels of .npz files and image folders) ------------
    "--classes on the zoo model's default data": (
        ["--classes", "a,b,c", "--check", "clean"],
        "zoo data 'digits' keeps its own, so they would be ignored; drop them",
    ),
    "--classes on zoo data": (
        ["--data", "digits", "--classes", "a,b,c", "--check", "clean"],
        "zoo data 'digits' keeps its own, so they would be ignored; drop them",
    ),
    "--classes for a text model": (
        ["--model", "minilm-mr", "--data", "{d}/texts.csv", "--classes", "neg,pos", "--check", "clean"],
        "text data keeps its labels as read, so they would be ignored",
    ),
    "classes in TOML on zoo data": (
        ["--config", "{d}/zoo_classes.toml"],
        "class names (--classes, or classes in a --config file) name the labels of .npz files",
    ),
    # -- gates ----------------------------------------------------------------------------------
    "--fail-under nan": (["--fail-under", "clean/clean/accuracy=nan", *OK], "not a finite number"),
    "--fail-over inf": (["--fail-over", "clean/clean/accuracy=inf", *OK], "not a finite number"),
    "nan gate in TOML": (["--config", "{d}/nan_gate.toml"], "not a finite number"),
    "gate on a check not selected": (
        ["--fail-under", "calibration-basic/clean/ece=0.1", *OK],
        "check 'calibration-basic' is not selected; add --check calibration-basic or drop the gate",
    ),
    "gate on a misspelt check": (["--fail-under", "claen/clean/accuracy=0.5", *OK], "unknown check 'claen'"),
    "gate metric that cannot exist": (["--fail-under", "clean/clean/Accuracy=0.5", *OK], "cannot exist"),
    "gate on a misspelt metric": (
        ["--fail-under", "clean/clean/acuracy=0.5", *OK],
        "--fail-under gate 'clean/clean/acuracy': check 'clean' stores no metric 'acuracy'; did you mean 'accuracy'? "
        "Its metrics: accuracy, class_*_accuracy",
    ),
    "gate on a misspelt metric under a * hazard": (
        ["--fail-over", "ood-basic/*/msp_aurox=0.5", "--check", "ood-basic", *OK],
        "--fail-over gate 'ood-basic/*/msp_aurox': check 'ood-basic' stores no metric 'msp_aurox'; did you mean "
        "'msp_auroc'?",
    ),
    "gate on the old FPR@95 name": (
        ["--fail-over", "ood-basic/*/fpr_at_95_tpr=0.5", "--check", "ood-basic", *OK],
        "metric 'fpr_at_95_tpr' was renamed; use 'fpr95_id_positive' (in-distribution inputs as positive",
    ),
    "misspelt metric in a TOML gate": (["--config", "{d}/typo_gate.toml"], "stores no metric 'class_1_acc'"),
}


def _run(d, args):
    db = d / f"runs-{os.getpid()}-{abs(hash(tuple(args)))}.sqlite"
    if db.exists():
        db.unlink()
    result = CliRunner().invoke(main, ["audit", *[a.format(d=d) for a in args], "--db", str(db), "--report", ""])
    return result, db


def _assert_refused(result, db, needle, d):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert needle.format(d=d) in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and "pwned" not in result.output
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_a_run_exists(d, case):
    args, needle = CASES[case]
    result, db = _run(d, args)
    _assert_refused(result, db, needle, d)


def test_refusal_messages_are_whole(d):
    """The weights refusal used to be cut mid-word; every message now ends with its fix."""
    for weights in ("evil.pt", "random.pt"):
        result, _ = _run(d, ["--model", M + "good", "--weights", f"{{d}}/{weights}", *OK])
        assert " ".join(result.output.split()).endswith(
            "save the weights with safetensors or torch.save(model.state_dict())"
        )


def test_gates_on_declared_metrics_pass_validation(d):
    """The counterpart of the misspelt-metric cases: a metric within the check's declared patterns,
    also under a ``*`` hazard, passes validation and gates the stored rows."""
    result, db = _run(d, ["--fail-under", "clean/*/class_2_accuracy=0.0", "--fail-over", "clean/clean/accuracy=1", *OK])
    assert result.exit_code == 0, result.output
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0] == 1
    result, db = _run(d, ["--fail-under", "clean/*/accuracy=1.01", *OK])
    assert result.exit_code == 1 and "clean/clean/accuracy" in result.output, result.output


def test_image_folder_is_converted_for_a_one_channel_model(d):
    """Folders are read as RGB; a one-channel model gets grayscale images (found by a probe pass)."""
    result, db = _run(d, ["--model", M + "conv_gray", "--data", "{d}/folder", "--image-size", "8", "8", *OK[2:]])
    assert result.exit_code == 0, result.output
    assert sqlite3.connect(db).execute("SELECT status FROM runs").fetchall() == [("complete",)]
    model = resolve_model(f"{d}/m.py:conv_gray", None)
    config = AuditConfig(model="", data=str(d / "folder"), image_size=(8, 8), ood=["noise"])
    data = resolve_data(config, model)
    assert data.test.x.shape[1:] == (1, 8, 8) and data.ood["noise"].x.shape[1:] == (1, 8, 8)
    img = np.array(Image.open(d / "folder" / "cat" / "0.png").convert("L").resize((8, 8), Image.Resampling.BILINEAR))
    x_all = torch.cat([data.test.x, data.val.x])
    assert any(torch.equal(x[0], torch.from_numpy(img).float() / 255) for x in x_all)
    # an RGB model keeps RGB, and --channels overrides the probe
    rgb_model = resolve_model(f"{d}/m.py:conv_rgb", None)
    rgb = resolve_data(AuditConfig(data=str(d / "folder"), image_size=(8, 8), ood=[]), rgb_model)
    assert rgb.test.x.shape[1] == 3
    three = resolve_data(AuditConfig(data=str(d / "folder"), image_size=(8, 8), ood=[], channels=3), None)
    assert three.test.x.shape[1] == 3


def test_classes_name_the_labels_of_an_npz(d):
    """The counterpart of the refused --classes cases: on an .npz it takes effect and is shown."""
    result, _ = _run(d, ["--model", M + "good", "--classes", "x,y,z", *OK])
    assert result.exit_code == 0, result.output
    assert "0=x, 1=y, 2=z (from --classes)" in result.output, result.output


def test_classes_on_a_text_data_file_are_refused(tmp_path):
    """A text model outside the zoo with a .csv: text labels are read as they are, --classes was ignored."""
    from tests.audit.test_text_audit import save_model, write_csv
    from tests.support.text import tiny_sentences

    save_model(tmp_path / "model")
    write_csv(tmp_path / "data.csv", *tiny_sentences(30, seed=4))
    db = tmp_path / "runs.sqlite"
    args = ["audit", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.csv"), "--check", "clean"]
    result = CliRunner().invoke(main, [*args, "--classes", "neg,pos", "--db", str(db), "--report", ""])
    _assert_refused(result, db, "text data keeps its labels as read, so they would be ignored", tmp_path)
