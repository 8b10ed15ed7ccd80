"""The certified radius of the smoothed embedded model is never beaten by an attack (issue 8)."""

from __future__ import annotations

import pytest

from mlsafety.core import generator
from mlsafety.robustness import attacks
from mlsafety.robustness.smoothing import (
    Certificate,
    SmoothedClassifier,
    attack_certificates,
    registry_attack,
)

BUDGET = {"steps": 5, "n_queries": 40, "n_target_classes": 2, "restarts": 1}
L2_ATTACKS = [name for name in attacks.available() if "l2" in attacks.ATTACKS.get(name).norms]


@pytest.fixture(scope="module")
def certified(digits_model, digits_test):  # type: ignore[no-untyped-def]
    smoothed = SmoothedClassifier(digits_model, 10, sigma=0.25)
    x = digits_test.x[:6]
    cert = smoothed.certify(x, n0=64, n=500, alpha=0.001, generator=generator(0, "cert-test"))
    assert int((cert.prediction >= 0).sum()) >= 4
    return smoothed, x, cert


def _scaled(cert: Certificate, factor: float) -> Certificate:
    return Certificate(cert.prediction, cert.radius * factor, cert.p_lower, cert.samples)


def test_builtin_and_pgd_do_not_beat_the_certificate_but_do_beat_four_times_the_radius(certified) -> None:  # type: ignore[no-untyped-def]
    smoothed, x, cert = certified
    for attack in (None, registry_attack("pgd", steps=10)):
        inside = attack_certificates(smoothed, x, cert, attack=attack, n=500, generator=generator(0, "inside"))
        assert inside.attacked.numel() >= 4 and not inside.violated.any()
    # The same attacks are strong enough to matter: outside the certified ball they succeed.
    outside = attack_certificates(smoothed, x, _scaled(cert, 4.0), n=500, shrink=1.0, generator=generator(0, "out"))
    assert outside.violated.any()


@pytest.mark.slow
@pytest.mark.parametrize("name", L2_ATTACKS)
def test_no_registry_attack_beats_the_certified_radius(certified, name: str) -> None:  # type: ignore[no-untyped-def]
    smoothed, x, cert = certified
    sub = Certificate(cert.prediction[:3], cert.radius[:3], cert.p_lower[:3], cert.samples[:3])
    result = attack_certificates(
        smoothed, x[:3], sub, attack=registry_attack(name, **BUDGET), name=name, n=300, generator=generator(0, name)
    )
    assert not result.violated.any()
    assert (result.max_perturbation <= sub.radius[result.attacked] + 1e-4).all()
