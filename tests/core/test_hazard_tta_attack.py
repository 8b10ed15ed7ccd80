"""Hazard.tta_attack: the DIA hazard's method and share are typed fields with one string form."""

from __future__ import annotations

import pytest

from mlsafety.core import Hazard, InputError


def test_tta_attack_fields_and_key_round_trip() -> None:
    h = Hazard.tta_attack("tent", 0.1)
    assert (h.kind, h.name, h.share) == ("tta-attack", "tent", 0.1)
    assert str(h) == "tta-attack/tent/0.1"  # the database key is unchanged
    p = Hazard.parse("tta-attack/hard-pl/0.05")
    assert (p.name, p.share) == ("hard-pl", 0.05) and str(p) == "tta-attack/hard-pl/0.05"
    assert Hazard.parse(str(h)) == h and h.within("tta-attack/tent") and h.family() == Hazard("tta-attack", "tent")


def test_tta_attack_share_is_kept_to_its_string_form() -> None:
    h = Hazard.tta_attack("tebn", 0.2 + 1e-12)
    assert h.share == 0.2 and Hazard.parse(str(h)) == h


@pytest.mark.parametrize("text", ["tta-attack/tent/0", "tta-attack/tent/1", "tta-attack/tent/x"])
def test_malformed_tta_attack_keys_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="tta-attack/<method>/<share>"):
        Hazard.parse(text)


@pytest.mark.parametrize("share", [0, 1.5, True, "0.1"])
def test_a_share_outside_0_1_is_refused(share: object) -> None:
    with pytest.raises(InputError, match="share"):
        Hazard.tta_attack("tent", share)  # type: ignore[arg-type]
