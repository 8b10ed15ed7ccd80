"""The IDX reader, Fashion-MNIST from the Debian package, its OOD sets and the fashion-cnn recipe."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlsafety import zoo
from mlsafety.cli import main
from mlsafety.core import InputError
from tests.cli.cli_support import one_error_line

installed = pytest.mark.skipif(
    not all((zoo.fashion_mnist_dir() / n).is_file() for n in zoo.FASHION_MNIST_FILES),
    reason="Debian's dataset-fashion-mnist is not installed (make debs)",
)


# -- IDX ---------------------------------------------------------------------------------------------
def test_idx_reader_reads_hand_made_big_endian_bytes(tmp_path: Path) -> None:
    raw = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    raw += np.array([1, -2, 300, 0, 7, -32768], dtype=">i2").tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    for name in ("a.idx", "a.idx.gz"):
        got = zoo.read_idx(tmp_path / name)
        assert got.dtype == np.int16 and got.dtype.byteorder in "=|<"
        assert got.tolist() == [[1, -2, 300], [0, 7, -32768]]


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", [".idx", ".idx.gz"])
def test_idx_round_trip(tmp_path: Path, dtype: str, suffix: str) -> None:
    a = (np.arange(2 * 3 * 4) * 3 - 7).astype(dtype).reshape(2, 3, 4)
    path = zoo.write_idx(tmp_path / f"x{suffix}", a)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    b = zoo.read_idx(path, dtype=dtype, ndim=3)
    assert b.dtype == np.dtype(dtype) and np.array_equal(a, b)


def _one_line(excinfo: pytest.ExceptionInfo[InputError], *needles: str) -> None:
    text = str(excinfo.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (lambda raw: raw[:-5], ("truncated", "needs 28 bytes, found 23")),
        (lambda raw: raw + b"\x00", ("longer than its header says",)),
        (lambda raw: b"\x01" + raw[1:], ("not an IDX file",)),
        (lambda raw: raw[:2] + b"\x42" + raw[3:], ("unknown IDX type code 0x42",)),
        (lambda raw: raw[:9], ("ends inside its IDX header",)),
        (lambda raw: gzip.compress(raw)[:-12], ("damaged gzip file",)),
    ],
)
def test_a_corrupt_idx_file_is_one_line(tmp_path: Path, mutate, needles) -> None:
    raw = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (1, 3, 4)) + bytes(range(12))
    path = tmp_path / "bad.idx"
    path.write_bytes(mutate(raw))
    with pytest.raises(InputError) as e:
        zoo.read_idx(path)
    _one_line(e, str(path), *needles)


def test_idx_dtype_and_dims_are_checked(tmp_path: Path) -> None:
    path = zoo.write_idx(tmp_path / "f.idx", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(InputError) as e:
        zoo.read_idx(path, dtype="uint8")
    _one_line(e, "holds float32 values, expected uint8")
    with pytest.raises(InputError) as e:
        zoo.read_idx(path, ndim=3)
    _one_line(e, "has 2 dimensions, expected 3")
    with pytest.raises(InputError) as e:
        zoo.read_idx(tmp_path / "missing.idx")
    _one_line(e, "does not exist")


def test_fashion_pair_is_checked_against_itself(tmp_path: Path) -> None:
    zoo.write_idx(tmp_path / "i.gz", np.zeros((3, 28, 28), dtype=np.uint8))
    zoo.write_idx(tmp_path / "l.gz", np.array([0, 9, 4], dtype=np.uint8))
    x, y = zoo.read_fashion_pair(tmp_path / "i.gz", tmp_path / "l.gz")
    assert x.shape == (3, 28, 28) and y.tolist() == [0, 9, 4]
    zoo.write_idx(tmp_path / "l2.gz", np.array([0, 9], dtype=np.uint8))
    with pytest.raises(InputError) as e:
        zoo.read_fashion_pair(tmp_path / "i.gz", tmp_path / "l2.gz")
    _one_line(e, "holds 3 images but", "holds 2 labels")
    zoo.write_idx(tmp_path / "l3.gz", np.array([0, 10, 1], dtype=np.uint8))
    with pytest.raises(InputError) as e:
        zoo.read_fashion_pair(tmp_path / "i.gz", tmp_path / "l3.gz")
    _one_line(e, "label 10")


# -- the Debian files --------------------------------------------------------------------------------
def test_a_missing_package_names_make_debs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSAFETY_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(InputError) as e:
        zoo.load_dataset("fashion-mnist", "test")
    _one_line(e, "Fashion-MNIST is not installed", "make debs", "apt-get install dataset-fashion-mnist")


def test_a_file_with_another_digest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in zoo.FASHION_MNIST_FILES:  # well-formed IDX files, but not the pinned ones
        shape = (2, 28, 28) if "images" in name else (2,)
        zoo.write_idx(tmp_path / name, np.zeros(shape, dtype=np.uint8))
    monkeypatch.setenv("MLSAFETY_FASHION_MNIST", str(tmp_path))
    with pytest.raises(InputError) as e:
        zoo.load_dataset("fashion-mnist", "val")
    _one_line(e, "has SHA-256", "not the pinned", "--reinstall dataset-fashion-mnist")


@installed
def test_fashion_splits_are_fixed_disjoint_and_complete() -> None:
    from mlsafety.zoo._fashion import fashion_split_indices

    parts = fashion_split_indices()
    assert len(parts["val"]) == 5000 and len(parts["train"]) == 55000
    assert torch.equal(torch.cat([parts["val"], parts["train"]]).sort().values, torch.arange(60000))
    train, val, test = (zoo.load_dataset("fashion-mnist", s) for s in ("train", "val", "test"))
    full = zoo.load_dataset("fashion-mnist", "all")
    assert (len(train), len(val), len(test), len(full)) == (55000, 5000, 10000, 60000)
    assert torch.equal(val.x, full.x[parts["val"]]) and torch.equal(train.y, full.y[parts["train"]])
    assert test.x.shape[1:] == (1, 28, 28) and test.x.dtype == torch.float32
    assert 0 <= float(test.x.min()) and float(test.x.max()) == 1.0
    # Facts about the published data: 1,000 test and 6,000 training images per class.
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert torch.bincount(full.y).tolist() == [6000] * 10
    # The validation split is a fair sample: every class holds 500 +- 80 of its 5,000 images.
    assert (torch.bincount(val.y, minlength=10) - 500).abs().max() < 80


@installed
def test_shipped_fashion_cnn_accuracy_and_size() -> None:
    from mlsafety.metrics import clopper_pearson

    model = zoo.load_model("fashion-cnn")
    test = zoo.load_dataset("fashion-mnist", "test")
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb, _ in test.batches(2000)])
    correct = int((pred == test.y).sum())
    low, _high = clopper_pearson(correct, len(test))
    assert correct / len(test) >= 0.91 and low >= 0.90
    assert zoo.weights_path("fashion-cnn").stat().st_size < 2_000_000


# -- OOD sets ----------------------------------------------------------------------------------------
def test_fashion_audits_get_their_own_ood_sets() -> None:
    assert zoo.ood_names("image", "fashion-mnist") == ["letters-28", "digits-28", "natural-patches", "noise"]
    assert zoo.ood_names("image", "digits") == ["letters", "natural-patches", "noise"]
    generic = zoo.ood_names("image")
    assert "letters-28" not in generic and "digits-28" not in generic and "natural-patches" in generic
    assert zoo.ood_names("image", "not-a-zoo-set.npz") == generic


@pytest.mark.parametrize("name", ["letters-28", "digits-28"])
def test_mnist_like_ood_sets_are_framed_like_mnist(name: str) -> None:
    a, again, other = zoo.load_dataset(name), zoo.load_dataset(name), zoo.load_dataset(name, "val")
    assert torch.equal(a.x, again.x) and not torch.equal(a.x, other.x)
    assert a.x.shape[1:] == (1, 28, 28) and (a.y == -1).all() and a.kind == "near"
    assert 0 <= float(a.x.min()) and float(a.x.max()) <= 1
    ink = a.x[:, 0]
    # white on black: the border is dark, the ink's centre of mass is near the frame's centre
    border = torch.cat(
        [ink[:, :2].flatten(1), ink[:, -2:].flatten(1), ink[:, :, :2].flatten(1), ink[:, :, -2:].flatten(1)], 1
    )
    assert float(border.max()) < 0.2 and float(ink.mean()) > 0.08
    grid = torch.arange(28, dtype=torch.float32)
    mass = ink.sum(dim=(1, 2))
    cy = (ink.sum(2) * grid).sum(1) / mass
    cx = (ink.sum(1) * grid).sum(1) / mass
    assert float((cy - 13.5).abs().median()) < 2 and float((cx - 13.5).abs().median()) < 2
    assert zoo.load_dataset(name, shape=(3, 32, 32)).x.shape[1:] == (3, 32, 32)


def test_digits_28_is_the_digit_in_a_20_pixel_box() -> None:
    from sklearn.datasets import load_digits

    from mlsafety.core import generator

    d = zoo.load_dataset("digits-28")
    first = int(torch.randperm(1797, generator=generator(0, "digits-28", "test"))[0])
    digit = torch.from_numpy(load_digits().images[first].astype(np.float32) / 16)
    frame = d.x[0, 0]
    assert float(frame[:4].abs().max()) == 0 and float(frame[:, 24:].abs().max()) == 0
    # area-averaging the 20x20 box back to 8x8 recovers the digit up to the up-sampling's blur, and
    # the digit it came from is the closest of all 1,797 (the sample is the documented one)
    back = torch.nn.functional.adaptive_avg_pool2d(frame[4:24, 4:24][None, None], 8)[0, 0]
    assert float((back - digit).abs().mean()) < 0.1
    every = torch.from_numpy(load_digits().images.astype(np.float32) / 16)
    assert int((every - back).abs().flatten(1).mean(1).argmin()) == first


def test_emnist_frame_centres_a_glyph_with_a_border() -> None:
    from mlsafety.zoo._mnist_like import _emnist_frame

    glyph = np.zeros((128, 128), dtype=np.float32)
    glyph[10:70, 90:110] = 1.0  # a tall bar in a corner: 60 x 20
    framed = _emnist_frame(glyph)
    rows = np.flatnonzero(framed.max(1) > 0.5)
    cols = np.flatnonzero(framed.max(0) > 0.5)
    assert rows[0] == 2 and rows[-1] == 25  # 24 rows of ink inside a 2-pixel border
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 0.5 and 6 <= len(cols) <= 10  # 20/60 of 24, centred


# -- the recipe and `zoo train` -------------------------------------------------------------------
@installed
def test_fashion_recipe_learns_on_a_small_subset_and_is_deterministic() -> None:
    a = zoo.train_fashion_cnn(n_train=1500, epochs=2)
    b = zoo.train_fashion_cnn(n_train=1500, epochs=2)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    test = zoo.load_dataset("fashion-mnist", "test").subset(torch.arange(1000))
    with torch.inference_mode():
        acc = float((a(test.x).argmax(1) == test.y).float().mean())
    assert acc > 0.6, acc  # chance is 0.1; the full recipe reaches > 0.91
    assert not a.training


def test_zoo_train_writes_to_the_cache_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake(name, out=None, seed=0, progress=None):  # record where the weights would go; no training
        calls.append(out)
        return out

    monkeypatch.setattr(zoo, "train_model", fake)
    monkeypatch.setenv("MLSAFETY_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    assert runner.invoke(main, ["zoo", "train", "fashion-cnn", "--seed", "3"]).exit_code == 0
    assert calls[-1] == tmp_path / "cache" / "zoo-trained" / "fashion-cnn-seed3.safetensors"
    assert runner.invoke(main, ["zoo", "train", "fashion-cnn", "--overwrite-shipped"]).exit_code == 0
    assert calls[-1] == zoo.weights_path("fashion-cnn")
    out = tmp_path / "w.safetensors"
    assert runner.invoke(main, ["zoo", "train", "fashion-cnn", "--out", str(out)]).exit_code == 0
    assert calls[-1] == out
    both = runner.invoke(main, ["zoo", "train", "fashion-cnn", "--out", str(out), "--overwrite-shipped"])
    one_error_line(both, "--out and --overwrite-shipped")
    assert len(calls) == 3
    # the library's own default is the cache too
    assert zoo.trained_path("digits-cnn", 0) == tmp_path / "cache" / "zoo-trained" / "digits-cnn-seed0.safetensors"


@installed
def test_an_audit_of_fashion_cnn_takes_fashion_data_and_its_ood_sets() -> None:
    from mlsafety.audit import AuditConfig, resolve_data

    data = resolve_data(AuditConfig(model="fashion-cnn"))
    assert (data.test.name, len(data.test), len(data.val)) == ("fashion-mnist", 10000, 5000)
    assert data.train is not None and len(data.train) == 55000
    assert list(data.ood) == ["letters-28", "digits-28", "natural-patches", "noise"]
    assert {tuple(ds.x.shape[1:]) for ds in data.ood.values()} == {(1, 28, 28)}
    assert {ds.kind for ds in data.ood.values()} == {"near", "far"}
