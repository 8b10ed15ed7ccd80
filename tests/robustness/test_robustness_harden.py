"""harden() and the `mlsafety harden` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from mlsafety import zoo
from mlsafety.cli import main
from mlsafety.core import ArrayDataset, InputError
from mlsafety.robustness import harden
from mlsafety.zoo import load_model

installed_fashion = pytest.mark.skipif(
    not all((zoo.fashion_mnist_dir() / n).is_file() for n in zoo.FASHION_MNIST_FILES),
    reason="Debian's dataset-fashion-mnist is not installed (make debs)",
)


def fashion_split(split: str) -> ArrayDataset:
    return zoo.load_dataset("fashion-mnist", split)


def _toy() -> tuple[nn.Module, ArrayDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 4, 4, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), ArrayDataset(x, y)


def test_harden_leaves_the_model_alone_and_is_seeded() -> None:
    model, data = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = harden(model, data, method="trades", eps=0.05, steps=2, epochs=2, from_scratch=True, seed=4)
    b = harden(model, data, method="trades", eps=0.05, steps=2, epochs=2, from_scratch=True, seed=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in before)
    assert not all(torch.equal(a.state_dict()[k], before[k]) for k in before)
    with pytest.raises(InputError):
        harden(model, data, method="magic", eps=0.1)
    with pytest.raises(InputError):
        harden(model, data)


def test_cli_writes_a_loadable_hardened_copy(tmp_path: Path) -> None:
    out = tmp_path / "hard.safetensors"
    runner = CliRunner()
    res = runner.invoke(main, ["harden", "--eps", "0.1", "--epochs", "1", "--steps", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    state = load_file(str(out))
    original = load_model("digits-cnn").state_dict()
    assert set(state) == set(original)
    assert any(not torch.equal(state[k], original[k]) for k in state)
    bad = runner.invoke(main, ["harden", "--eps", "0.1", "--out", str(tmp_path / "hard.pt")])
    assert bad.exit_code == 2 and ".safetensors" in bad.output


def test_harden_reads_every_data_form_and_names_its_parameters() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model, data = _toy()
    want = harden(model, data, eps=0.05, steps=2, epochs=1, seed=1)
    for form in (TensorDataset(data.x, data.y), DataLoader(TensorDataset(data.x, data.y), batch_size=5)):
        got = harden(model, form, eps=0.05, steps=2, epochs=1, seed=1)
        for k, v in want.state_dict().items():
            torch.testing.assert_close(got.state_dict()[k], v)
    with pytest.raises(InputError, match=r"'pgd' has no parameter 'step'\. Valid parameters: eps, norm, steps"):
        harden(model, data, eps=0.05, step=2)
    with pytest.raises(InputError, match="data: cannot read data of type str"):
        harden(model, "train.npz", eps=0.05)  # type: ignore[arg-type]


def test_fast_method_trains_on_fgsm_rs_and_refuses_pgd_only_options(tmp_path: Path) -> None:
    model, data = _toy()
    a = harden(model, data, method="fast", eps=0.05, epochs=2, seed=3)
    b = harden(model, data, method="fast", eps=0.05, epochs=2, seed=3)
    clean = harden(model, data, method="pgd", eps=0.05, steps=1, epochs=2, seed=3)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())  # seeded
    assert not all(torch.equal(a.state_dict()[k], v) for k, v in clean.state_dict().items())  # another method
    with pytest.raises(InputError, match=r"'fast' has no parameter 'steps'"):
        harden(model, data, method="fast", eps=0.05, steps=3)
    res = CliRunner().invoke(
        main, ["harden", "--method", "fast", "--eps", "0.1", "--steps", "3", "--out", str(tmp_path / "w.safetensors")]
    )
    assert res.exit_code == 2 and "--steps does not apply to --method fast" in res.output  # the flag, not the param
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "w.safetensors").exists()


def test_a_negative_trades_weight_or_shift_is_refused_before_training(tmp_path: Path) -> None:
    """beta < 0 would reward the divergence TRADES penalises, and a negative shift is no augmentation: both are
    refused in one line (the CLI: exit 2, no file written); they trained, or failed with torch's error."""
    model, data = _toy()
    with pytest.raises(InputError, match="TRADES beta must be >= 0"):
        harden(model, data, method="trades", eps=0.05, beta=-1.0, epochs=1)
    out = tmp_path / "h.safetensors"
    for args in (["--method", "trades", "--beta", "-1"], ["--shift", "-1"]):
        res = CliRunner().invoke(main, ["harden", "--eps", "0.1", "--epochs", "1", *args, "--out", str(out)])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert not out.exists()


def test_a_model_that_does_not_take_the_data_is_refused_in_one_line(tmp_path: Path) -> None:
    """A model built for 28x28 inputs given the default 8x8 digits: torch's shape error escaped as a
    traceback (exit 1) from the first training batch; now one line naming --data, exit 2, nothing written."""
    factory = tmp_path / "m28.py"
    factory.write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))\n"
    )
    out = tmp_path / "h.safetensors"
    res = CliRunner().invoke(main, ["harden", "--model", f"{factory}:build", "--eps", "0.1", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--data digits" in lines[0], res.output
    assert not out.exists()


def test_a_text_model_or_text_data_is_refused_in_one_line(tmp_path: Path) -> None:
    """harden trains image classifiers: text data failed deep in the training loop ("inputs must be a float
    tensor, got Texts") and a text model on the digits data with a label-range message."""
    out = tmp_path / "h.safetensors"
    for args in (["--data", "mr"], ["--model", "minilm-mr", "--data", "digits"]):
        res = CliRunner().invoke(main, ["harden", "--eps", "0.1", "--epochs", "1", *args, "--out", str(out)])
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "text" in lines[0], res.output
        assert not out.exists()


def _record_harden_data(monkeypatch: pytest.MonkeyPatch) -> dict[str, ArrayDataset]:
    """Replace robustness.harden by a stub that records the data it is given (no training)."""
    import mlsafety.robustness as robustness

    seen: dict[str, ArrayDataset] = {}

    def fake_harden(model: nn.Module, data: ArrayDataset, **kwargs: object) -> nn.Module:
        seen["data"] = data
        return model

    monkeypatch.setattr(robustness, "harden", fake_harden)
    return seen


@installed_fashion
def test_the_default_data_is_the_zoo_models_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`harden --model fashion-cnn` trained on the digits (the fixed default) and crashed on their shape; a zoo
    model's default data is the set it was trained on (as in `mlsafety audit`), here Fashion-MNIST's train split."""
    seen = _record_harden_data(monkeypatch)
    out = tmp_path / "h.safetensors"
    res = CliRunner().invoke(main, ["harden", "--model", "fashion-cnn", "--eps", "0.1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    want = fashion_split("train")
    assert torch.equal(seen["data"].x, want.x) and torch.equal(seen["data"].y, want.y)


def test_a_small_npz_still_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's input checks hold out 30% of --data as validation and refuse fewer than 10 inputs ("or pass
    --val", an option harden has not); harden trains on every input of an .npz, however few."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "small.npz"
    np.savez(path, x=torch.rand(8, 1, 8, 8, generator=g).numpy(), y=torch.arange(8).numpy())
    seen = _record_harden_data(monkeypatch)
    out = tmp_path / "h.safetensors"
    res = CliRunner().invoke(main, ["harden", "--eps", "0.1", "--data", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(seen["data"]) == 8
