import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mlsafety.core import (
    InputError,
    check_images,
    check_labels,
    load_factory,
    load_image_folder,
    load_npz,
    load_weights,
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
    with pytest.raises(InputError, match="cannot read"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(InputError):
        load_npz(tmp_path / "obj.npz")
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
