import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    InputError,
    check_images,
    check_labels,
    load_factory,
    load_image_folder,
    load_npz,
    load_weights,
    validate_dataset,
)


def test_npz_round_trip_and_uint8(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    ds = load_npz(tmp_path / "d.npz")
    assert ds.x.shape == (5, 1, 8, 8) and ds.x.max() <= 1
    torch.testing.assert_close(ds.x[:, 0], torch.from_numpy(x).float() / 255)
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(InputError, match="no array named 'y'"):
        load_npz(tmp_path / "nolabels.npz")
    assert (load_npz(tmp_path / "nolabels.npz", kind="far").y == -1).all()


def test_npz_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read") as info:
        load_npz(tmp_path / "bad.npz")
    # numpy's own advice (allow_pickle, which would run code) is not passed on to the user
    assert "not a .npz (zip) archive" in str(info.value) and "allow_pickle" not in str(info.value)
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(InputError, match="object arrays") as info:
        load_npz(tmp_path / "obj.npz")
    assert "allow_pickle" not in str(info.value)
    np.savez(tmp_path / "range.npz", x=np.full((2, 1, 4, 4), 2.0), y=np.zeros(2))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_npz(tmp_path / "range.npz")


def test_image_folder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), 60 * i + (100 if label == "dog" else 0), np.uint8)).save(
                tmp_path / label / f"{i}.png"
            )
    ds = load_image_folder(tmp_path, (8, 8), channels=3)
    assert ds.x.shape == (4, 3, 8, 8) and ds.y.tolist() == [0, 0, 1, 1]
    assert abs(float(ds.x[2].mean()) - 100 / 255) < 1e-6
    (tmp_path / "cat" / "broken.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot read image"):
        load_image_folder(tmp_path, (8, 8))
    with pytest.raises(InputError, match="not found"):
        load_image_folder(tmp_path / "missing", (8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_image_folder(tmp_path / "empty", (8, 8))


def test_check_images_and_labels():
    with pytest.raises(InputError, match="NaN"):
        check_images(torch.tensor([[[[float("nan")]]]]))
    with pytest.raises(InputError, match="empty"):
        check_images(torch.rand(0, 1, 2, 2))
    with pytest.raises(InputError, match="must lie in"):
        check_labels(torch.tensor([0, 3]), 3)
    check_labels(torch.tensor([0, 2]), 3)


def test_factory_and_weights(tmp_path):
    (tmp_path / "m.py").write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 2)\n")
    model = load_factory(f"{tmp_path / 'm.py'}:make")
    assert isinstance(model, nn.Linear)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for f in ("w.pt", "w.safetensors"):
        load_weights(nn.Linear(4, 2), tmp_path / f)
    with pytest.raises(InputError, match="do not fit"):
        load_weights(nn.Linear(5, 2), tmp_path / "w.pt")
    with pytest.raises(InputError, match="defines no function"):
        load_factory(f"{tmp_path / 'm.py'}:other")
    with pytest.raises(InputError, match="must look like"):
        load_factory("model.py")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"weight": _Evil()}, fh)
    with pytest.raises(InputError, match="refused to load"):
        load_weights(nn.Linear(1, 1), tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


def test_labels_must_be_one_dimensional_whole_numbers():
    x = torch.rand(4, 1, 2, 2)
    assert ArrayDataset(x, torch.tensor([0.0, 1.0, 2.0, 1.0])).y.dtype == torch.int64
    with pytest.raises(InputError, match=r"shape \(4, 1\); y must be 1-D \(N,\)"):
        ArrayDataset(x, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(InputError, match=r"must be whole numbers \(found 0\.4\)"):
        ArrayDataset(x, torch.tensor([0, 1, 2, 1]).float() + 0.4)
    with pytest.raises(InputError, match="NaN"):
        ArrayDataset(x, torch.tensor([0.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(InputError, match="integer class indices"):
        ArrayDataset(x, torch.tensor([True, False, True, False]))
    with pytest.raises(InputError, match="whole numbers"):
        check_labels(torch.tensor([0.5]), 3)


def test_npz_labels_are_refused_not_truncated_and_named_by_source(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "frac.npz", x=x, y=y.astype("f4") + 0.4)
    with pytest.raises(InputError, match=r"labels of --data .*frac\.npz \(test data\) must be whole numbers"):
        load_npz(tmp_path / "frac.npz", source=f"--data {tmp_path / 'frac.npz'} (test data)")
    np.savez(tmp_path / "col.npz", x=x, y=y[:, None])
    with pytest.raises(InputError, match=r"y must be 1-D \(N,\)"):
        load_npz(tmp_path / "col.npz")
    np.savez(tmp_path / "str.npz", x=x, y=np.array(list("abcabc")))
    with pytest.raises(InputError, match="dtype <U1; save y as integer class indices"):
        load_npz(tmp_path / "str.npz")
    np.savez(tmp_path / "strx.npz", x=np.array(["a"] * 6), y=y)
    with pytest.raises(InputError, match="save x as float32"):
        load_npz(tmp_path / "strx.npz")
    np.savez(tmp_path / "ood.npz", x=x, y=y.astype("f4") + 0.4)  # labels of an OOD file are not used
    assert (load_npz(tmp_path / "ood.npz", kind="far").y == -1).all()


def test_validate_dataset_names_source_channels_and_classes():
    ds = ArrayDataset(torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 5]), source="--val v.npz (validation data)")
    with pytest.raises(
        InputError,
        match=r"inputs of --val v\.npz \(validation data\) have 3 channels but the model takes 1; convert them",
    ):
        validate_dataset(ds, 6, channels=1)
    with pytest.raises(InputError, match=r"labels of --val v\.npz \(validation data\) must lie in \[0, 3\)"):
        validate_dataset(ds, 3, channels=3)
    validate_dataset(ds, 6, channels=3)
    ood = ArrayDataset(torch.rand(2, 3, 4, 4), torch.full((2,), -1), kind="far", source="--ood o.npz (OOD set)")
    validate_dataset(ood, 3, channels=3)  # OOD sets carry -1 and are not checked against the classes
    bad = ArrayDataset(torch.full((2, 3, 4, 4), 2.0), torch.zeros(2), source="--ood o.npz (OOD set)")
    with pytest.raises(InputError, match=r"inputs of --ood o\.npz \(OOD set\) must lie in \[0, 1\]"):
        validate_dataset(bad)


def test_image_folder_converts_to_the_requested_channels(tmp_path):
    (tmp_path / "a").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a" / "0.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "a" / "1.png")  # a grayscale file in the same folder
    gray = load_image_folder(tmp_path, (6, 6), channels=1)
    color = load_image_folder(tmp_path, (6, 6), channels=3)
    assert gray.x.shape == (2, 1, 6, 6) and color.x.shape == (2, 3, 6, 6)
    expected = np.array(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    torch.testing.assert_close(gray.x[0, 0], torch.from_numpy(expected))
    with pytest.raises(InputError, match="1 or 3 channels, not 2"):
        load_image_folder(tmp_path, (6, 6), channels=2)
    with pytest.raises(InputError, match=r"two positive integers H W, got \(0, 6\)"):
        load_image_folder(tmp_path, (0, 6))


def test_sixteen_bit_images_keep_their_grey_levels_and_float_images_are_refused(tmp_path):
    # PIL's convert("L") clips a 16-bit image to 0..255, so every level above 255 read as white
    levels = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(levels).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((2, 2), 128, dtype=np.uint8)).save(tmp_path / "b" / "y.png")
    grey = load_image_folder(tmp_path, (2, 2), channels=1)
    expected = torch.from_numpy(levels.astype(np.float32) / 65535)
    torch.testing.assert_close(grey.x[0, 0], expected)
    torch.testing.assert_close(grey.x[1, 0], torch.full((2, 2), 128 / 255))
    rgb = load_image_folder(tmp_path, (2, 2), channels=3)
    torch.testing.assert_close(rgb.x[0], expected.expand(3, 2, 2))  # a grey image's three channels are equal
    Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32)).save(tmp_path / "a" / "x.tif")
    with pytest.raises(InputError, match=r"x\.tif.*32-bit"):  # convert("L") made 0.5 into 0 (of 255)
        load_image_folder(tmp_path, (2, 2), channels=1)
