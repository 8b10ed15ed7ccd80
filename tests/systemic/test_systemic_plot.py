"""The Swiss-cheese plot."""

from __future__ import annotations

import torch

from mlsafety.systemic import Outcome, swiss_cheese_png


def test_swiss_cheese_png() -> None:
    o = Outcome(torch.tensor([True, False, True, False]), torch.tensor([True, False, False, False]))
    png = swiss_cheese_png({"clean": o, "adversarial/pgd/0.1": o}, adaptive={"adversarial/pgd/0.1": o})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
