"""Label-free sign fixing of the unsupervised probes: the sign follows the reference's ranking, not its offset."""

from __future__ import annotations

import pytest
import torch

from mlsafety.alignment.probes import CCS, TopPC
from mlsafety.core import InputError


def imbalanced(n: int = 120, d: int = 10, share_true: float = 0.3, seed: int = 0):
    """States with a planted truth direction e_2, 30% of the items true, and a zero-shot reference that ranks
    every true item above every false one but is positive everywhere (a model that answers "yes" to all)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) < int(share_true * n)).long()
    t = (2 * y - 1).float()
    u = torch.eye(d)[2]
    pos = torch.randn(n, d, generator=g) + 3.0 * t[:, None] * u
    neg = torch.randn(n, d, generator=g) - 3.0 * t[:, None] * u
    reference = 4.0 + t + 0.2 * torch.rand(n, generator=g)
    return pos, neg, y, reference


@pytest.mark.parametrize("make", [TopPC, lambda: CCS(epochs=100, restarts=2)])
def test_a_reference_that_says_yes_to_every_item_still_fixes_the_sign_by_its_ranking(make) -> None:  # type: ignore[no-untyped-def]
    pos, neg, y, reference = imbalanced()
    assert bool((reference > 0).all())
    probe = make().fit(pos, neg, reference=reference, generator=torch.Generator().manual_seed(0))
    # the old rule (agree with reference > 0 on most items) made the probe say "yes" on most items, which with
    # 30% true items is the wrong sign: accuracy 0.06 (top PC) and 0.0 (CCS)
    assert float((probe.predict(pos, neg) == y).float().mean()) > 0.9
    for offset in (-10.0, -4.5, 3.0):  # a constant added to the reference does not move the sign
        shifted = make().fit(pos, neg, reference=reference + offset, generator=torch.Generator().manual_seed(0))
        assert torch.equal(shifted.signs_, probe.signs_)


def test_a_bad_reference_is_refused() -> None:
    pos, neg, _, reference = imbalanced(n=20)
    with pytest.raises(InputError, match="reference"):
        TopPC().fit(pos, neg, reference=reference[:5])
    bad = reference.clone()
    bad[3] = float("nan")
    with pytest.raises(InputError, match="reference"):
        TopPC().fit(pos, neg, reference=bad)
