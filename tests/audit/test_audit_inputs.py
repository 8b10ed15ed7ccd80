"""The audit's input layer: probe pass, source names, channels, settings (issue 12 point 4)."""

import numpy as np
import pytest
import torch
from torch import nn

from mlsafety.audit import CHECKS
from mlsafety.audit._context import AuditData
from mlsafety.audit._inputs import (
    AuditConfig,
    model_channels,
    prepare_inputs,
    probe_model,
    resolve_data,
    resolve_model,
    validate,
)
from mlsafety.core import ArrayDataset, Classifier, InputError


def _ds(n=20, c=1, k=3, source="--data d.npz (test data)", kind="in", seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g) if kind == "in" else torch.full((n,), -1)
    return ArrayDataset(torch.rand(n, c, 8, 8, generator=g), y, kind=kind, source=source)


class _Flaky(nn.Module):
    """Finite logits except for inputs whose first pixel is above ``cut`` (NaN there)."""

    def __init__(self, cut: float) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)
        self.drop = nn.Dropout(0.5)
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.drop(x.flatten(1)))
        return torch.where(x.flatten(1)[:, :1] > self.cut, torch.full_like(out, float("nan")), out)


def test_probe_finds_non_finite_logits_on_some_inputs_and_leaves_the_model_unchanged():
    model = _Flaky(cut=0.8).train()
    flags = [p.requires_grad for p in model.parameters()]
    ds = _ds(40)
    with pytest.raises(InputError, match=r"NaN or infinite logits for \d+ of 16 probe inputs of --data d\.npz"):
        probe_model(Classifier(model), ds)
    assert model.training and model.drop.training and [p.requires_grad for p in model.parameters()] == flags
    assert probe_model(Classifier(_Flaky(cut=2.0)), ds) == 3


def test_probe_checks_output_form_and_class_count():
    with pytest.raises(InputError, match="K >= 2"):
        probe_model(Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 1))), _ds())
    with pytest.raises(InputError, match=r"logits of shape \(N, K\), got \(16, 3, 1\)"):
        probe_model(Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Unflatten(1, (3, 1)))), _ds())
    odd = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(50, 3)))
    with pytest.raises(InputError, match=r"the model failed on 16 inputs of --data d\.npz \(test data\) of shape"):
        probe_model(odd, _ds(c=2))  # no channel count fits a Linear(50) on 8x8: the real error is shown


def test_model_channels_are_found_by_a_probe_pass():
    gray = Classifier(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3)))
    rgb = Classifier(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(72, 3)))
    assert model_channels(gray, (8, 8)) == 1 and model_channels(rgb, (8, 8), prefer=1) == 3
    assert model_channels(gray, (9, 9)) is None  # takes 1 channel, but not at this size


def test_validate_names_every_source():
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    test = _ds()
    bad_val = ArrayDataset(test.x, torch.full((20,), 4), source="--val v.npz (validation data)")
    with pytest.raises(InputError, match=r"labels of --val v\.npz \(validation data\) must lie in \[0, 3\)"):
        validate(model, AuditData(test, bad_val))
    bad_train = ArrayDataset(test.x, torch.full((20,), -2), source="--train t.npz (training data)")
    with pytest.raises(InputError, match=r"labels of --train t\.npz \(training data\) must lie"):
        validate(model, AuditData(test, test, bad_train))
    rgb_ood = _ds(c=3, kind="far", source="--ood o.npz (OOD set)")
    with pytest.raises(InputError, match=r"--ood o\.npz \(OOD set\) have 3 channels but the model takes 1"):
        validate(model, AuditData(test, test, None, {"o": rgb_ood}))
    big_ood = ArrayDataset(torch.rand(4, 1, 9, 9), torch.full((4,), -1), kind="far", source="--ood b.npz (OOD set)")
    with pytest.raises(InputError, match=r"--ood b\.npz \(OOD set\) have shape \(1, 9, 9\) but the test data has"):
        validate(model, AuditData(test, test, None, {"b": big_ood}))
    validate(model, AuditData(test, test, None, {"o": _ds(kind="far", source="--ood o.npz (OOD set)")}))


def test_held_out_labels_are_reported_against_the_test_file(tmp_path):
    x = np.random.default_rng(0).random((30, 1, 8, 8)).astype(np.float32)
    y = np.zeros(30, int)
    y[[3, 17, 29]] = 12  # wherever the hold-out puts them, the message names --data
    np.savez(tmp_path / "d.npz", x=x, y=y)
    model = resolve_model("digits-cnn", None)
    with pytest.raises(InputError, match=r"labels of --data .*d\.npz \(test data\) must lie in \[0, 10\)"):
        resolve_data(AuditConfig(data=str(tmp_path / "d.npz"), ood=[]), model)


def test_settings_are_checked_before_the_model_is_loaded():
    checks = [CHECKS.create("clean")]
    bad = {
        "batch_size": (0, "--batch-size must be a positive integer, got 0"),
        "seed": (2**63, r"--seed must be an integer in \[0, 2\*\*63 - 1\], got 9223372036854775808"),
        "image_size": ((8, -1), "--image-size must be two positive integers H W, got 8 -1"),
        "channels": (2, "--channels must be 1"),
    }
    for field, (value, message) in bad.items():
        config = AuditConfig(model="missing.py:make", checks=["clean"])
        setattr(config, field, value)
        with pytest.raises(InputError, match=message):
            prepare_inputs(config, checks)
    with pytest.raises(InputError, match="model file not found"):
        prepare_inputs(AuditConfig(model="missing.py:make", checks=["clean"]), checks)


def test_a_zoo_ood_set_of_another_fixed_shape_names_the_option_and_both_shapes(tmp_path):
    """`--ood digits` with 28x28 data (or `--ood fashion-mnist` with the 8x8 digits) said only "the digits
    dataset exists only at shape (1, 8, 8)": no option, not the shape asked for, no fix."""
    x = np.random.default_rng(0).random((30, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(30, int))
    config = AuditConfig(data=str(tmp_path / "d.npz"), ood=["digits"])
    with pytest.raises(InputError, match=r"^--ood digits \(OOD set\): .*\(1, 8, 8\).*\(1, 28, 28\)"):
        resolve_data(config, None)


def test_classes_on_zoo_image_data_are_refused_by_the_library() -> None:
    """A zoo dataset keeps its own labels: class names given with it were ignored without a word outside the
    CLI (audit-many's --config, a library call); the library refuses them."""
    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.core import InputError

    with pytest.raises(InputError, match=r"zoo data 'digits' keeps its own"):
        prepare_inputs(AuditConfig(model="digits-cnn", data="digits", classes=[str(i) for i in range(10)]))
