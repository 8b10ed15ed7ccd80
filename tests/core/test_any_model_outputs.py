"""Issue 22: a forward that returns a tensor, a tuple, a dict or an object with ``.logits`` works everywhere."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, InputError, cross_entropy_loss, forward, generator, unwrap_logits
from mlsafety.monitoring import ood
from mlsafety.robustness.attacks import create as create_attack
from mlsafety.robustness.smoothing import SmoothedClassifier


@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class Wrapped(nn.Module):
    """The same network returning its logits in another form."""

    def __init__(self, base: nn.Module, form: str) -> None:
        super().__init__()
        self.base, self.form = base, form

    def forward(self, x: torch.Tensor) -> object:
        z = self.base(x)
        if self.form == "tuple":
            return z, z.detach() * 0
        if self.form == "list":
            return [z]
        if self.form == "dict":
            return {"hidden": z * 0, "logits": z}
        if self.form == "object":
            return Output(logits=z, hidden=z * 0)
        return z


FORMS = ["tuple", "list", "dict", "object"]


@pytest.fixture
def base(tiny_net: nn.Module) -> nn.Module:
    return tiny_net


@pytest.mark.parametrize("form", FORMS)
def test_every_output_form_gives_the_tensor_models_logits_and_features(base, tiny_data, form):
    plain = forward(base, tiny_data.x)
    clf = Classifier(Wrapped(base, form))
    out = forward(clf, tiny_data.x)
    torch.testing.assert_close(out.logits, plain.logits)
    assert out.features is not None and plain.features is not None
    torch.testing.assert_close(out.features, plain.features)
    assert clf.head_name == "base.fc" and clf.num_classes == 3


@pytest.mark.parametrize("form", FORMS)
def test_attacks_detectors_smoothing_and_training_losses_read_any_form(base, tiny_data, form):
    x, y = tiny_data.x[:8], tiny_data.y[:8]
    wrapped = Wrapped(base, form)
    pgd = create_attack("pgd", eps=0.1, steps=3)
    adv_plain = pgd.run(base, x, y, generator=generator(0, "pgd"))
    adv = pgd.run(wrapped, x, y, generator=generator(0, "pgd"))
    torch.testing.assert_close(adv.x_adv, adv_plain.x_adv)
    assert not torch.equal(adv.x_adv, x)  # the attack moved the inputs
    for name in ("energy", "knn", "react"):
        params = {"k": 3} if name == "knn" else {}
        s_plain = ood.create(name, **params).fit(base, tiny_data).score(base, x)
        s = ood.create(name, **params).fit(wrapped, tiny_data).score(wrapped, x)
        torch.testing.assert_close(s, s_plain)
    counts = SmoothedClassifier(wrapped, 3, sigma=0.25).sample_counts(x[:2], 8, generator(0, "smooth"))
    plain_counts = SmoothedClassifier(base, 3, sigma=0.25).sample_counts(x[:2], 8, generator(0, "smooth"))
    assert torch.equal(counts, plain_counts)
    torch.testing.assert_close(
        cross_entropy_loss(wrapped, x, y, generator(0, "ce")), cross_entropy_loss(base, x, y, generator(0, "ce"))
    )


@pytest.mark.parametrize(
    ("output", "named"),
    [
        ("a string", "str"),
        ({"hidden": torch.zeros(2, 3)}, "dict with keys \\['hidden'\\]"),
        (Output(logits=None, hidden=torch.zeros(2, 3)), "Output"),  # type: ignore[arg-type]
        ((), "tuple"),
    ],
)
def test_anything_else_is_one_line_naming_what_was_returned(output, named):
    with pytest.raises(InputError, match=named) as info:
        unwrap_logits(output)
    assert "\n" not in str(info.value) and ("logits" in str(info.value))

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> object:
            self.fc(x)
            return output

    with pytest.raises(InputError, match=named):
        forward(Odd(), torch.rand(2, 4))
