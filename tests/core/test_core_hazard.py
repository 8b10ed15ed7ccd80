"""Hazard: one string form per hazard, read back only by Hazard.parse."""

from __future__ import annotations

import pytest

from mlsafety.core import Hazard, InputError

FORMS = [
    "clean",
    "corruption",
    "corruption/fog",
    "corruption/fog/3",
    "adversarial",
    "adversarial/autoattack-fast/0.075",
    "adversarial/any-l2/0",
    "adversarial/pgd/certified-radius",
    "ood/letters",
    "ood-near",
    "trojan/patch",
    "validation/energy+confidence",
]


@pytest.mark.parametrize("text", FORMS)
def test_parse_and_str_round_trip(text: str) -> None:
    h = Hazard.parse(text)
    assert str(h) == text
    assert Hazard.parse(h) is h


def test_fields_are_typed() -> None:
    h = Hazard.parse("corruption/fog/3")
    assert (h.kind, h.name, h.severity) == ("corruption", "fog", 3)
    a = Hazard.parse("adversarial/pgd/0.1")
    assert (a.kind, a.name, a.eps, a.at) == ("adversarial", "pgd", 0.1, None)
    assert Hazard.parse("adversarial/pgd/certified-radius").at == "certified-radius"


def test_constructors_give_the_database_keys() -> None:
    assert str(Hazard.clean()) == "clean"
    assert str(Hazard.corruption("fog", 3)) == "corruption/fog/3"
    assert str(Hazard.adversarial("pgd", 0.075, norm="l2")) == "adversarial/pgd/0.075"
    assert str(Hazard.ood("letters")) == "ood/letters"
    assert str(Hazard.trojan("patch")) == "trojan/patch"


def test_eps_is_kept_to_its_string_form() -> None:
    # The attack runs at the radius its key names: a parsed hazard equals the one it came from.
    h = Hazard.adversarial("pgd", 0.1 + 1e-12)
    assert h.eps == 0.1 and Hazard.parse(str(h)) == h


def test_norm_and_source_travel_but_are_not_identity() -> None:
    h = Hazard.adversarial("pgd", 0.1, norm="l2", source="adversarial")
    p = Hazard.parse(str(h))
    assert p == h and hash(p) == hash(h) and p.norm is None and h.norm == "l2"


def test_within_walks_up_the_family() -> None:
    h = Hazard.parse("corruption/fog/3")
    assert h.within("corruption/fog") and h.within("corruption") and h.within(h)
    assert not h.within("corruption/snow") and not h.within("adversarial")
    assert str(h.family()) == "corruption/fog" and str(h.family().family()) == "corruption"


@pytest.mark.parametrize(
    "text", ["", "/clean", "ood/", "a//b", "Corruption/fog", "corruption/fog/x", "adversarial/pgd/Big Eps"]
)
def test_bad_forms_are_refused_with_one_line(text: str) -> None:
    with pytest.raises(InputError) as info:
        Hazard.parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "corruption", "name": "fog", "severity": -1},
        {"kind": "corruption", "name": "fog", "severity": 1.5},
        {"kind": "adversarial", "name": "pgd", "eps": float("nan")},
        {"kind": "adversarial", "name": "pgd", "eps": 0.1, "severity": 2},
        {"kind": "adversarial", "eps": 0.1},
        {"kind": "adversarial", "name": "pgd", "eps": 0.1, "norm": "l1"},
    ],
)
def test_inconsistent_fields_are_refused(kwargs: dict) -> None:
    with pytest.raises(InputError):
        Hazard(**kwargs)


@pytest.mark.parametrize("text", ["adversarial/pgd/inf", "adversarial/pgd/nan", "adversarial/pgd/-0.1"])
def test_a_non_finite_or_negative_eps_is_refused_not_taken_as_a_symbolic_radius(text: str) -> None:
    with pytest.raises(InputError, match="eps"):
        Hazard.parse(text)
