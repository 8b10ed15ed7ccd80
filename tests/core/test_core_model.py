import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, InputError, Normalize, as_classifier, forward, frozen


def test_head_is_last_linear_and_features_are_its_input(tiny_net, tiny_data):
    clf = Classifier(tiny_net)
    assert clf.head is tiny_net.fc and clf.num_classes == 3
    feats, logits = clf.features_and_logits(tiny_data.x)
    assert feats.shape == (24, 256)
    torch.testing.assert_close(feats @ clf.head_weight.T + clf.head_bias, logits)
    torch.testing.assert_close(logits, tiny_net(tiny_data.x))


def test_features_come_from_the_same_forward_pass(tiny_net, tiny_data):
    calls = []
    tiny_net.conv.register_forward_hook(lambda *a: calls.append(1))
    Classifier(tiny_net).features_and_logits(tiny_data.x)  # the first call also traces the head, in the same pass
    assert len(calls) == 1


def test_named_head_and_missing_head():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 2))
    assert Classifier(model, head="1").num_classes == 5
    with pytest.raises(InputError, match="no submodule named"):
        Classifier(model, head="nope")
    conv_only = nn.Sequential(nn.Conv2d(1, 3, 8), nn.Flatten())
    clf = Classifier(conv_only)
    with pytest.raises(InputError, match=r"no layer with weights produces the logits"):
        clf.features_and_logits(torch.rand(2, 1, 8, 8))
    assert clf.logits(torch.rand(2, 1, 8, 8)).shape == (2, 3) and clf.num_classes == 3


def test_hook_removed_and_modes_restored_after_exception(tiny_net):
    tiny_net.train()
    flags = [p.requires_grad for p in tiny_net.parameters()]
    clf = as_classifier(tiny_net)
    with pytest.raises(RuntimeError):
        with frozen(tiny_net):
            assert not tiny_net.training and not any(p.requires_grad for p in tiny_net.parameters())
            clf.features_and_logits(torch.rand(2, 3, 8, 8))  # wrong channels: conv raises
    assert tiny_net.training and [p.requires_grad for p in tiny_net.parameters()] == flags
    assert not tiny_net.fc._forward_pre_hooks


def test_bad_output_shape_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Unflatten(1, (3, 1)))
    with pytest.raises(InputError, match=r"shape \(N, K\)"):
        Classifier(model).logits(torch.rand(2, 1, 8, 8))


def test_forward_batches_match_one_pass(tiny_net, tiny_data):
    out = forward(tiny_net, tiny_data.x, batch_size=5)
    torch.testing.assert_close(out.logits, tiny_net(tiny_data.x))
    assert out.features.shape == (24, 256)


def test_normalize():
    norm = Normalize([0.5, 0.25], [0.5, 0.25])
    x = torch.rand(2, 2, 3, 3)
    torch.testing.assert_close(norm(x)[:, 1], (x[:, 1] - 0.25) / 0.25)
    with pytest.raises(InputError):
        Normalize(0.0, 0.0)


class _DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5))
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_features_and_logits_use_eval_mode_and_leave_the_model_and_rng_alone():
    torch.manual_seed(0)
    model = _DropoutNet().train()
    x = torch.rand(8, 1, 4, 4)
    clf = Classifier(model)
    state = torch.get_rng_state()
    f1, l1 = clf.features_and_logits(x)
    f2, l2 = clf.features_and_logits(x)
    assert torch.equal(f1, f2) and torch.equal(l1, l2)  # same pass, same CPU: no dropout mask drawn
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(l1, model(x))
        model.train()
    # asking for the model's own mode runs dropout (and draws from the global generator)
    f3, _ = clf.features_and_logits(x, train=True)
    assert not torch.equal(torch.get_rng_state(), state) and not torch.equal(f3, f1)
    assert model.training


def test_features_and_logits_restore_modes_after_an_exception():
    model = _DropoutNet().train()
    model.body[3].eval()  # a mixed state must come back exactly
    with pytest.raises(RuntimeError):
        Classifier(model).features_and_logits(torch.rand(2, 2, 4, 4))  # 32 inputs for a 16-input layer
    assert model.training and model.body[1].training and not model.body[3].training


def test_forward_refuses_non_finite_logits():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    with pytest.raises(InputError, match=r"NaN or infinite logits for 5 of 5 inputs \(the first at index 0\)"):
        forward(model, torch.rand(5, 1, 2, 2))
