"""Trojan attacks: trigger known answers, poisoning invariants, metrics, and conformance over TROJAN_ATTACKS."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import ArrayDataset, InputError, generator
from mlsafety.monitoring.trojans import TROJAN_ATTACKS, BadNets, Blended, LabelConsistent, WaNet, trojan_metrics
from tests.support.family import check_family

test_trojan_attack_family = check_family(TROJAN_ATTACKS)


def _data(n: int = 60, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 5, name="toy")


@pytest.mark.parametrize("name", TROJAN_ATTACKS.available())
def test_attack_conformance(name: str) -> None:
    attack = TROJAN_ATTACKS.create(name)
    data = _data()
    x = data.x.clone()
    out = attack.apply_trigger(data.x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(data.x, x), "inputs must not be modified in place"
    assert not torch.equal(out, x), "the trigger must change the input"
    assert torch.equal(attack.apply_trigger(data.x), out), "the trigger is deterministic"
    a = attack.poison(data, 0.2, target=1, generator=generator(3, "poison"))
    b = attack.poison(data, 0.2, target=1, generator=generator(3, "poison"))
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.data.y, b.data.y) and torch.equal(a.poisoned, b.poisoned)
    c = attack.poison(data, 0.2, target=1, generator=generator(4, "poison"))
    if not attack.clean_label:  # label-consistent poisons the whole (small) target class here
        assert not torch.equal(a.poisoned, c.poisoned), "the generator decides which samples are poisoned"
    assert torch.equal(data.x, x), "poison must not modify the dataset"
    assert a.poisoned.any()
    if attack.clean_label:
        assert torch.equal(a.data.y, data.y)
        assert bool((data.y[a.poisoned] == 1).all())
    else:
        assert bool((a.data.y[a.poisoned] == 1).all()) and bool((data.y[a.poisoned] != 1).all())
        assert int(a.poisoned.sum()) == round(0.2 * len(data))
    # 3-channel images of another size work too
    rgb = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    assert attack.apply_trigger(rgb).shape == rgb.shape


def test_badnets_known_patch() -> None:
    x = torch.full((1, 1, 8, 8), 0.5)
    out = BadNets(size=2, corner="bottom-right", margin=1, pattern="checker").apply_trigger(x)
    expected = x.clone()
    expected[0, 0, 5:7, 5:7] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(out, expected)
    out = BadNets(size=3, corner="top-left", pattern="solid").apply_trigger(x)
    assert bool((out[0, 0, :3, :3] == 1).all()) and bool((out[0, 0, 3:, :] == 0.5).all())


def test_blended_formula() -> None:
    attack = Blended(alpha=0.25, block=1)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    p = attack.pattern_for((1, 8, 8))
    torch.testing.assert_close(attack.apply_trigger(x), 0.75 * x + 0.25 * p)
    coarse = Blended(block=2).pattern_for((1, 8, 8))
    assert torch.equal(coarse[:, ::2, ::2], coarse[:, 1::2, 1::2]), "blocks of 2x2 equal pixels"


def test_wanet_warps_smoothly_and_keeps_constants() -> None:
    attack = WaNet(strength=1.0)
    const = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(attack.apply_trigger(const), const)  # warping a constant image changes nothing
    grid = attack.grid_for(8, 8)
    identity = WaNet._identity(8, 8)
    shift_px = ((grid - identity) * torch.tensor([8, 8]) / 2).abs()
    assert 0.05 < float(shift_px.max()) <= 3.0, "offsets are a few pixels at most"
    poisoned = attack.poison(_data(), 0.1, target=0)
    noise_mode = (~poisoned.poisoned) & (poisoned.data.x != _data().x).flatten(1).any(dim=1)
    assert int(noise_mode.sum()) == int(poisoned.poisoned.sum()), "cross_ratio=1: one noise-mode sample per poison"


def test_wanet_strength_counts_pixels_and_is_half_the_papers_s() -> None:
    """With k = H = W the bicubic upsampling keeps the control values, and warping a linear ramp shows
    each pixel's offset: ``(W - 1) / W * strength`` pixels times the control field normalised to mean
    absolute value 1, x offsets first. The paper's ``s * field / H`` grid units are half that for s = strength."""
    h = w = 8
    attack = WaNet(k=8, strength=0.7, field_seed=3)
    ins = torch.rand(1, 2, 8, 8, generator=generator(3, "wanet-field", 8)) * 2 - 1
    field = (ins / ins.abs().mean())[0]  # (2, H, W): horizontal, then vertical offsets
    ramp = torch.arange(w, dtype=torch.float32) / (w - 1)
    x = torch.stack([ramp.expand(h, w), ramp[:, None].expand(h, w)])[:, None]  # a ramp along x, one along y
    moved = (attack.apply_trigger(x) - x)[:, 0] * (w - 1)  # pixels; bilinear sampling of a ramp is exact
    want = 0.7 * (w - 1) / w * field
    pos = torch.stack([torch.arange(w).expand(h, w), torch.arange(h)[:, None].expand(h, w)]).float()
    inside = ((pos + want) >= 0) & ((pos + want) <= w - 1)  # offsets past the border are clamped
    assert int(inside.sum()) > 80
    torch.testing.assert_close(moved[inside], want[inside], atol=1e-4, rtol=0)


def test_label_consistent_mixes_then_stamps() -> None:
    data = _data()
    attack = LabelConsistent(hardness=0.3, size=2, corner="top-left")
    p = attack.poison(data, 0.1, target=2)
    assert int(p.poisoned.sum()) == min(round(0.1 * len(data)), int((data.y == 2).sum()))
    stamped = p.data.x[p.poisoned]
    assert torch.equal(stamped[:, :, :2, :2], attack.apply_trigger(stamped)[:, :, :2, :2])
    assert not torch.equal(stamped[:, :, 2:, 2:], data.x[p.poisoned][:, :, 2:, 2:]), "content was mixed"


def test_bad_parameters_are_input_errors() -> None:
    with pytest.raises(InputError):
        BadNets(corner="middle")
    with pytest.raises(InputError):
        Blended(alpha=1.5)
    with pytest.raises(InputError, match="hardness"):
        LabelConsistent(hardness=0.5)
    with pytest.raises(InputError, match="corner"):
        LabelConsistent(corner="middle")
    with pytest.raises(InputError, match="strength"):
        WaNet(strength=0)
    with pytest.raises(InputError):
        BadNets(size=9).apply_trigger(torch.zeros(1, 1, 8, 8))
    with pytest.raises(InputError):
        BadNets().poison(_data(), 0.0, 1)
    with pytest.raises(InputError):
        BadNets().poison(_data(), 0.1, 7)  # class 7 is absent


def test_parameters_keep_their_names_defaults_and_order() -> None:
    """The declared parameters are the constructors' of before the family kit (positional order too)."""
    assert BadNets(2, "top-left", 1, "solid").get_params() == {"size": 2, "corner": "top-left", "margin": 1,
                                                               "pattern": "solid"}  # fmt: skip
    assert Blended().get_params() == {"alpha": 0.3, "pattern_seed": 0, "block": 2}
    assert WaNet().get_params() == {"k": 4, "strength": 1.5, "cross_ratio": 1.0, "field_seed": 0}
    assert LabelConsistent().get_params() == {"hardness": 0.3, "size": 3, "corner": "top-left"}
    assert repr(BadNets()) == "BadNets(size=3, corner='bottom-right', margin=0, pattern='checker')"


def test_trojan_metrics_on_hand_made_models() -> None:
    data = _data()
    attack = BadNets(size=2, pattern="solid")

    class Detector(torch.nn.Module):
        """Predicts class 4 when the bottom-right 2x2 block is white, else the true-label rule (x.sum parity)."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(1, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hit = (x[:, 0, 6:, 6:] == 1).flatten(1).all(dim=1)
            logits = torch.zeros(x.shape[0], 5)
            logits[hit, 4] = 1.0
            logits[~hit, 0] = 1.0
            return logits + 0 * self.fc(x[:, :1, 0, 0])

    m = trojan_metrics(Detector(), attack, data, target=4)
    assert m["attack_success_rate"].value == 1.0
    assert m["clean_accuracy"].value == pytest.approx(float((data.y == 0).float().mean()))
    assert m["robust_accuracy"].value == 0.0
    assert m["attack_success_rate"].n == int((data.y != 4).sum())


def test_poison_and_metrics_read_every_data_form(tiny_trojaned) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    data = _data()
    want = BadNets().poison(data, 0.2, target=1, generator=generator(0, "p"))
    for form in (TensorDataset(data.x, data.y), DataLoader(TensorDataset(data.x, data.y), batch_size=7)):
        got = BadNets().poison(form, 0.2, target=1, generator=generator(0, "p"))
        assert torch.equal(got.data.x, want.data.x) and torch.equal(got.poisoned, want.poisoned)
    model, attack = tiny_trojaned.model, tiny_trojaned.attack
    test = ArrayDataset(torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 10)
    ref = trojan_metrics(model, attack, test, target=0)
    loader = trojan_metrics(model, attack, DataLoader(TensorDataset(test.x, test.y), batch_size=16), target=0)
    assert {k: (v.value, v.n) for k, v in ref.items()} == {k: (v.value, v.n) for k, v in loader.items()}
