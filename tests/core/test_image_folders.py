"""Issue 22: image folders with a class order, saved Hugging Face image datasets, channels-last .npz files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mlsafety.cli import main
from mlsafety.core import InputError, load_hf_image_dataset, load_image_folder, load_npz, read_class_file

TRAINING_ORDER = ["square", "circle", "bar"]  # the order the model's outputs follow: not alphabetical
LEVELS = {"square": 40, "circle": 128, "bar": 215}  # each class is a flat image of one grey level

MODEL_FILE = """
import torch
class ByLevel(torch.nn.Module):
    '''Class k is the image whose mean is nearest to centre k (square, circle, bar).'''
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(1, 3)
        with torch.no_grad():
            c = torch.tensor([40.0, 128.0, 215.0]) / 255
            self.fc.weight.copy_((40 * c)[:, None])
            self.fc.bias.copy_(-20 * c * c)
    def forward(self, x):
        return self.fc(x.mean(dim=(1, 2, 3))[:, None])
def make():
    return ByLevel()
"""


def _folder(root: Path, per_class: int = 4, gray_every: int = 2) -> Path:
    """``root/<class>/<i>.png``: flat images, every ``gray_every``-th saved as one-channel (mode L), the rest RGB."""
    for cls, level in LEVELS.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            value = level + (i % 3) - 1
            if i % gray_every == 0:
                Image.fromarray(np.full((6, 6), value, np.uint8), "L").save(root / cls / f"{i}.png")
            else:
                Image.fromarray(np.full((6, 6, 3), value, np.uint8), "RGB").save(root / cls / f"{i}.png")
    return root


def _accuracy(ds) -> float:
    centres = torch.tensor([LEVELS[c] for c in TRAINING_ORDER]) / 255
    pred = (ds.x.mean(dim=(1, 2, 3))[:, None] - centres).abs().argmin(dim=1)
    return float((pred == ds.y).float().mean())


def test_folder_classes_follow_the_given_order_and_alphabetical_order_is_named(tmp_path):
    root = _folder(tmp_path / "data")
    given = load_image_folder(root, (8, 8), channels=3, classes=TRAINING_ORDER)
    assert given.classes == TRAINING_ORDER and given.classes_from == "--classes" and _accuracy(given) == 1.0
    assert given.x.shape == (12, 3, 8, 8)  # one-channel and RGB files both converted to 3 channels
    alpha = load_image_folder(root, (8, 8), channels=1)
    assert alpha.classes == ["bar", "circle", "square"] and "alphabetical" in alpha.classes_from
    assert alpha.x.shape == (12, 1, 8, 8) and _accuracy(alpha) < 0.5  # square and bar swapped
    with pytest.raises(InputError, match="folder bar not in the class list"):
        load_image_folder(root, (8, 8), classes=["square", "circle"])


@pytest.mark.parametrize("form", ["txt", "json-list", "json-index"])
def test_a_class_file_beside_the_data_gives_the_order(tmp_path, form):
    root = _folder(tmp_path / "data")
    if form == "txt":
        (root / "classes.txt").write_text("\n".join(TRAINING_ORDER) + "\n\n")
    elif form == "json-list":
        (tmp_path / "classes.json").write_text(json.dumps(TRAINING_ORDER))  # beside the folder
    else:
        (root / "classes.json").write_text(json.dumps({c: i for i, c in enumerate(TRAINING_ORDER)}))
    ds = load_image_folder(root, (8, 8))
    assert ds.classes == TRAINING_ORDER and "classes." in ds.classes_from and _accuracy(ds) == 1.0


def test_bad_class_files_and_unreadable_images_are_one_line(tmp_path):
    bad = tmp_path / "classes.json"
    bad.write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(InputError, match=r"indices 0\.\.K-1"):
        read_class_file(bad)
    bad.write_text(json.dumps(["a", "a", "b"]))
    with pytest.raises(InputError, match="repeated: a"):
        read_class_file(bad)
    root = _folder(tmp_path / "data")
    (root / "bar" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"cannot read image .*broken\.png") as info:
        load_image_folder(root, (8, 8), classes=TRAINING_ORDER)
    assert "\n" not in str(info.value)


def test_channels_last_npz_is_converted_with_a_note(tmp_path):
    x = np.random.default_rng(0).random((5, 7, 6, 3)).astype("float32")
    np.savez(tmp_path / "nhwc.npz", x=x, y=np.arange(5) % 2)
    ds = load_npz(tmp_path / "nhwc.npz")
    assert ds.x.shape == (5, 3, 7, 6) and "channels-last" in ds.description
    torch.testing.assert_close(ds.x[2, 1], torch.from_numpy(x[2, :, :, 1]))
    np.savez(tmp_path / "odd.npz", x=np.zeros((2, 3, 4, 5, 6), "float32"), y=np.zeros(2))
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        load_npz(tmp_path / "odd.npz")


def test_saved_hf_image_dataset_with_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    images, labels = [], []
    for i in range(9):
        cls = TRAINING_ORDER[i % 3]
        mode, shape = ("L", (6, 6)) if i % 2 else ("RGB", (6, 6, 3))
        images.append(Image.fromarray(np.full(shape, LEVELS[cls], np.uint8), mode))
        labels.append(i % 3)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=TRAINING_ORDER)})
    table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    datasets.DatasetDict({"test": table, "validation": table.select(range(3))}).save_to_disk(str(tmp_path / "hf"))
    ds = load_hf_image_dataset(tmp_path / "hf", (8, 8), channels=3, split="test")
    assert ds.x.shape == (9, 3, 8, 8) and ds.classes == TRAINING_ORDER and _accuracy(ds) == 1.0
    with pytest.raises(InputError, match="has splits"):
        load_hf_image_dataset(tmp_path / "hf", (8, 8))


def test_audit_stores_and_shows_the_class_mapping_and_warns_on_a_far_lower_test_accuracy(tmp_path):
    model = tmp_path / "m.py"
    model.write_text(MODEL_FILE)
    root = _folder(tmp_path / "data", per_class=8)
    rng = np.random.default_rng(0)
    y_val = rng.integers(0, 3, 30)
    levels = np.array([LEVELS[c] for c in TRAINING_ORDER])[y_val] / 255
    np.savez(tmp_path / "val.npz", x=np.broadcast_to(levels[:, None, None, None], (30, 3, 8, 8)).astype("float32"),
             y=y_val)  # fmt: skip
    runner = CliRunner()

    def audit(*extra: str) -> tuple[object, list[dict]]:
        db = tmp_path / f"runs{len(extra)}.sqlite"
        result = runner.invoke(
            main,
            ["audit", "--model", f"{model}:make", "--data", str(root), "--val", str(tmp_path / "val.npz"),
             "--image-size", "8", "8", "--check", "clean", "--db", str(db), "--report", str(tmp_path / "r.html"),
             *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        (record,) = sqlite3.connect(db).execute("select config_json from runs").fetchone()
        return result, json.loads(record)["notes"]  # stored with the run

    result, notes = audit("--classes", ",".join(TRAINING_ORDER))
    mapping = [n for n in notes if n["kind"] == "classes"]
    assert mapping and mapping[0]["classes"] == TRAINING_ORDER and mapping[0]["source"] == "--classes"
    assert "Classes: 0=square, 1=circle, 2=bar" in result.output and "Warning" not in result.output
    assert "0=square, 1=circle, 2=bar" in (tmp_path / "r.html").read_text()
    result, notes = audit()  # folder names in alphabetical order: the labels disagree with the model's order
    gap = [n for n in notes if n["kind"] == "accuracy-gap"]
    assert gap and gap[0]["warning"] and gap[0]["val_accuracy"] == 1.0 and gap[0]["test_accuracy"] < 0.5
    assert "Warning: test accuracy" in result.output and "alphabetical" in result.output
    assert "far below validation accuracy" in (tmp_path / "r.html").read_text()
    assert any(n["kind"] == "head" and n["head"] == "fc" for n in notes)


def test_audit_of_a_channels_last_npz_says_it_converted_it(tmp_path):
    model = tmp_path / "m.py"
    model.write_text(MODEL_FILE)
    y = np.arange(30) % 3
    levels = np.array([LEVELS[c] for c in TRAINING_ORDER])[y] / 255
    np.savez(
        tmp_path / "nhwc.npz", x=np.broadcast_to(levels[:, None, None, None], (30, 8, 8, 3)).astype("float32"), y=y
    )
    result = CliRunner().invoke(
        main,
        ["audit", "--model", f"{model}:make", "--data", str(tmp_path / "nhwc.npz"), "--check", "clean",
         "--db", str(tmp_path / "runs.sqlite"), "--report", str(tmp_path / "r.html")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Note: --data" in result.output and "channels-last" in result.output
    assert "different image shapes" not in result.output
    assert "converted from channels-last" in (tmp_path / "r.html").read_text()


def test_saved_hf_images_read_as_arrays_keep_16_bit_levels_and_refuse_what_8_bits_cannot_hold(tmp_path):
    """A dataset saved in numpy format hands back each image as an array: a 16-bit grey image is uint16 and keeps
    its levels (divided by 65535, as the same image read as a picture), an array whose values do not fit 0..255 as
    whole numbers is refused; astype(uint8) wrapped 1000 to 232 and made a float 0.5 into 0."""
    datasets = pytest.importorskip("datasets")
    levels = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    table = datasets.Dataset.from_dict({"image": [Image.fromarray(levels)], "label": [0]}, features=features)
    table.with_format("numpy").save_to_disk(str(tmp_path / "np16"))
    want = torch.from_numpy(levels.astype(np.float32) / 65535)
    torch.testing.assert_close(load_hf_image_dataset(tmp_path / "np16", channels=1).x[0, 0], want)
    table.save_to_disk(str(tmp_path / "pil16"))  # the same image read as a picture: the same levels
    torch.testing.assert_close(load_hf_image_dataset(tmp_path / "pil16", channels=1).x[0, 0], want)
    for name, values in (("wide", [[0, 300], [7, 9]]), ("float", [[0.5, 0.25], [1.0, 0.0]])):
        arr = datasets.Dataset.from_dict({"image": [values], "label": [0]}).with_format("numpy")
        arr.save_to_disk(str(tmp_path / name))
        with pytest.raises(InputError, match=r"row 0 of .* holds values outside whole numbers 0\.\.255") as err:
            load_hf_image_dataset(tmp_path / name, channels=1)
        assert "\n" not in str(err.value)
    small = datasets.Dataset.from_dict({"image": [[[0, 255], [7, 9]]], "label": [0]}).with_format("numpy")
    small.save_to_disk(str(tmp_path / "small"))  # whole numbers in 0..255 of any type read as 8-bit levels
    got = load_hf_image_dataset(tmp_path / "small", channels=1).x[0, 0]
    torch.testing.assert_close(got, torch.tensor([[0, 255], [7, 9]], dtype=torch.float32) / 255)
