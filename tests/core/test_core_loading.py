"""Loading users' model files and weights: every failure is one InputError line naming the fix."""

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mlsafety.core import InputError, load_factory, load_weights, read_state_dict

MODEL = """
import sys
import torch


def make():
    return torch.nn.Linear(4, 2)


def raises():
    raise FileNotFoundError("checkpoint.bin")


def exits():
    sys.exit("bye")


def needs(width, *, depth, bias=True):
    return torch.nn.Linear(width, 2)


def optional(width=4):
    return torch.nn.Linear(width, 2)
"""


@pytest.fixture
def model_file(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    return tmp_path / "m.py"


def test_factory_failures_are_input_errors(model_file, tmp_path):
    assert isinstance(load_factory(f"{model_file}:optional"), nn.Linear)
    with pytest.raises(InputError, match=r"raised FileNotFoundError: checkpoint\.bin; fix the factory"):
        load_factory(f"{model_file}:raises")
    with pytest.raises(InputError, match="raised SystemExit: bye"):
        load_factory(f"{model_file}:exits")
    with pytest.raises(InputError, match=r"needs arguments \(width, depth\); point --model at a function"):
        load_factory(f"{model_file}:needs")
    with pytest.raises(InputError, match="functions it defines: exits, make, needs, optional, raises"):
        load_factory(f"{model_file}:nope")
    (tmp_path / "bye.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(InputError, match=r"importing .*bye\.py failed with SystemExit: 3"):
        load_factory(f"{tmp_path / 'bye.py'}:make")
    (tmp_path / "syntax.py").write_text("def make(:\n")
    with pytest.raises(InputError, match="failed with SyntaxError"):
        load_factory(f"{tmp_path / 'syntax.py'}:make")


def test_weights_format_is_read_from_the_bytes_not_the_suffix(tmp_path):
    model = nn.Linear(4, 2)
    save_file(model.state_dict(), str(tmp_path / "named.pt"))  # safetensors under a .pt name
    torch.save(model.state_dict(), tmp_path / "zip.bin")
    torch.save(model.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("named.pt", "zip.bin", "legacy.pth"):
        state = read_state_dict(tmp_path / name)
        torch.testing.assert_close(state["weight"], model.weight.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("content", [b"", b"hello world, not weights", bytes(range(256)), b"\x00" * 64])
def test_random_bytes_are_not_called_a_refused_pickle(tmp_path, content):
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"w{suffix}"
        path.write_bytes(content)
        with pytest.raises(InputError) as info:
            read_state_dict(path)
        msg = str(info.value)
        assert "is not a valid weights file: neither safetensors nor a torch state dict" in msg
        assert "refused" not in msg and "\n" not in msg


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_code_pickles_are_refused_in_one_whole_line(tmp_path, capsys):
    torch.save({"weight": _Evil()}, tmp_path / "evil_zip.pt")
    with open(tmp_path / "evil_raw.pt", "wb") as fh:
        pickle.dump({"weight": _Evil()}, fh, protocol=2)
    for name in ("evil_zip.pt", "evil_raw.pt"):
        with pytest.raises(InputError) as info:
            read_state_dict(tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(f"refused to load {tmp_path / name}: ") and "could run code" in msg
        assert msg.endswith("save the weights with safetensors or torch.save(model.state_dict())")
        assert "\n" not in msg and "\x1b" not in msg
    with pytest.raises(InputError, match="it refers to print"):
        read_state_dict(tmp_path / "evil_zip.pt")
    assert "pwned" not in capsys.readouterr().out


def test_mismatched_weights_name_the_keys(tmp_path):
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(InputError) as info:
        load_weights(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), tmp_path / "w.pt")
    msg = str(info.value)
    assert "missing 2.weight, 2.bias" in msg and "unexpected 1.weight, 1.bias" in msg
    assert "shape of 0.weight (3, 4) vs (5, 4)" in msg and msg.endswith("give the weights saved from this model")
