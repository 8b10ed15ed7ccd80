"""Issue 22: saved ``transformers`` image classifiers (ViT, ResNet from tiny configs, random weights, offline)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlsafety.audit._inputs import resolve_model
from mlsafety.cli import main
from mlsafety.core import Classifier, ImagePreprocess, InputError, forward, generator

transformers = pytest.importorskip("transformers")

VIT_PROCESSOR = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.5], "resample": 2, "rescale_factor": 1 / 255, "size": {"height": 16, "width": 16},
}  # fmt: skip
RESNET_PROCESSOR = {
    "crop_pct": 0.875, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
    "rescale_factor": 1 / 255, "size": {"shortest_edge": 16},
}  # fmt: skip


def _vit(labels: int = 4) -> torch.nn.Module:
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=labels)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.ViTForImageClassification(config).eval()


def _resnet(labels: int = 4) -> torch.nn.Module:
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=labels)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.ResNetForImageClassification(config).eval()


def _save(model: torch.nn.Module, processor: dict | None, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def _x(n: int, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=generator(0, "hf-image", str(size)))


def test_vit_head_is_the_classifier_and_features_are_the_cls_token():
    model = _vit()
    x = _x(5)
    clf = Classifier(model)
    out = forward(clf, x)
    assert clf.head_name == "classifier" and clf.head_info is not None and clf.head_info.how == "traced"
    with torch.no_grad():
        cls = model.vit(x).last_hidden_state[:, 0]
    torch.testing.assert_close(out.features, cls)
    torch.testing.assert_close(out.logits, model(x).logits)


def test_resnet_head_is_the_linear_inside_the_classifier_and_features_are_the_pooled_map():
    model = _resnet()
    x = _x(5)
    clf = Classifier(model)
    out = forward(clf, x)
    assert clf.head_name == "classifier.1" and out.features is not None and out.features.shape == (5, 16)
    with torch.no_grad():
        pooled = model.resnet(x).pooler_output.flatten(1)
    torch.testing.assert_close(out.features, pooled)


def test_saved_vit_folder_loads_with_its_normalisation_folded_in(tmp_path):
    folder = _save(_vit(), VIT_PROCESSOR, tmp_path / "vit")
    clf = resolve_model(str(folder), None)
    x = _x(4)
    mean = torch.tensor(VIT_PROCESSOR["image_mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(VIT_PROCESSOR["image_std"]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        expect = _vit()((x - mean) / std).logits
    torch.testing.assert_close(clf.logits(x), expect)
    assert clf.modality == "image" and clf.num_classes == 4
    bigger = clf.logits(_x(2, 24))  # other sizes are resized by the processor's rule
    assert bigger.shape == (2, 4)


def test_processor_fold_matches_the_processors_own_arithmetic_and_convnext_crop_rule():
    pre = ImagePreprocess(RESNET_PROCESSOR)
    x = _x(2, 32)
    y = pre(x)
    assert y.shape == (2, 3, 16, 16)  # shortest edge 16 / 0.875 = 18, then a centre crop of 16
    assert pre.shortest_edge == 18 and pre.crop == (16, 16)
    no_resize = ImagePreprocess({**VIT_PROCESSOR, "size": {"height": 32, "width": 32}})
    pixels = torch.randint(0, 256, (1, 3, 32, 32), generator=generator(0, "pixels")).float()
    mean = torch.tensor(VIT_PROCESSOR["image_mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(VIT_PROCESSOR["image_std"]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(no_resize(pixels / 255), (pixels / 255 - mean) / std)
    raw = ImagePreprocess({"do_rescale": False, "do_normalize": False, "do_resize": False})
    torch.testing.assert_close(raw(pixels / 255), pixels)  # a model trained on 0..255 values gets them back


def test_bad_folders_are_one_line(tmp_path):
    no_weights = _save(_vit(), VIT_PROCESSOR, tmp_path / "no-weights")
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(InputError, match="has no weights"):
        resolve_model(str(no_weights), None)
    bare = tmp_path / "bare"
    transformers.ViTModel(_vit().config).save_pretrained(str(bare))
    (bare / "preprocessor_config.json").write_text(json.dumps(VIT_PROCESSOR))
    with pytest.raises(InputError, match="ViTModel has no classification head") as info:
        resolve_model(str(bare), None)
    assert "\n" not in str(info.value)


def test_cli_refuses_a_bare_model_and_an_output_without_logits_storing_nothing(tmp_path):
    bare = tmp_path / "bare"
    transformers.ViTModel(_vit().config).save_pretrained(str(bare))
    (bare / "preprocessor_config.json").write_text(json.dumps(VIT_PROCESSOR))
    factory = tmp_path / "m.py"
    factory.write_text(
        "import torch\n"
        "class Out:\n    hidden = None\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(64, 3)\n"
        "    def forward(self, x):\n        self.fc(x.flatten(1))\n        return Out()\n"
        "def make():\n    return M()\n"
    )
    db = tmp_path / "runs.sqlite"
    runner = CliRunner()
    for spec, needle in ((str(bare), "no classification head"), (f"{factory}:make", "returned Out")):
        result = runner.invoke(main, ["audit", "--model", spec, "--db", str(db), "--report", str(tmp_path / "r.html")])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("make", [_vit, _resnet], ids=["vit", "resnet"])
def test_audit_of_a_saved_image_classifier_runs_every_image_check(tmp_path, make):
    folder = _save(make(), VIT_PROCESSOR if make is _vit else RESNET_PROCESSOR, tmp_path / "model")
    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.random((150, 3, 16, 16)).astype("float32"), y=g.integers(0, 4, 150))
    db = tmp_path / "runs.sqlite"
    result = CliRunner().invoke(
        main,
        ["audit", "--model", str(folder), "--data", str(tmp_path / "d.npz"), "--quick", "--db", str(db),
         "--report", str(tmp_path / "r.html")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = sqlite3.connect(db).execute("select check_name, metric, params_json from results").fetchall()
    skipped = {c for c, m, p in rows if m == "not_applicable" and "lm-only" not in p}
    if make is _vit:  # LayerNorm only: test-time adaptation (batch-norm statistics) cannot act on it
        skipped.discard("tta")
    assert not skipped, skipped
    metrics = {m for _, m, _ in rows}
    for name in ("mahalanobis", "knn", "vim", "react"):
        assert any(m.startswith(name) for m in metrics), (name, sorted(metrics)[:40])


def test_processor_fold_sizes_follow_transformers_rules_on_non_square_images():
    from transformers.image_transforms import get_resize_output_image_size

    x = torch.rand(1, 3, 3, 5, generator=generator(0, "non-square"))
    plain = {"do_rescale": False, "do_normalize": False, "resample": 2}
    # shortest edge 4: the long side is int(4 * 5 / 3) = 6 (transformers and torchvision floor it), not round() = 7
    want = get_resize_output_image_size(
        np.zeros((3, 3, 5)), 4, default_to_square=False, input_data_format="channels_first"
    )
    assert ImagePreprocess({**plain, "size": {"shortest_edge": 4}})(x).shape[-2:] == want == (4, 6)
    # ConvNeXt at 384 or more warps to a square without a crop (its processor: "warping (no cropping)")
    big = torch.rand(1, 3, 30, 47, generator=generator(0, "non-square", "384"))
    convnext = ImagePreprocess({**plain, "crop_pct": 0.875, "size": {"shortest_edge": 384}})
    warped = torch.nn.functional.interpolate(big, size=(384, 384), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(convnext(big), warped * 255)  # do_rescale off: pixel values 0..255
