"""harden() and the `mlsafety harden` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from mlsafety.cli import main
from mlsafety.core import ArrayDataset, InputError
from mlsafety.robustness import harden
from mlsafety.zoo import load_model


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
    assert res.exit_code == 2 and "'fast' has no parameter 'steps'" in res.output
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
