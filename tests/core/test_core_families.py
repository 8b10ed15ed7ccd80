"""One family contract: every family package exposes ``create`` / ``available`` over its own registry,
an unknown name raises InputError listing the registered names, and an unknown keyword raises
InputError listing the entry's parameters."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import pytest

from mlsafety.core import InputError, Registry

FAMILIES = {
    "mlsafety.robustness.attacks": "ATTACKS",
    "mlsafety.robustness.corruptions": "CORRUPTIONS",
    "mlsafety.robustness.augment": "AUGMENTATIONS",
    "mlsafety.monitoring.ood": "DETECTORS",
    "mlsafety.monitoring.calibration": "CALIBRATORS",
    "mlsafety.monitoring.transparency": "ATTRIBUTIONS",
    "mlsafety.monitoring.trojans.scanners": "SCANNERS",
    "mlsafety.monitoring.trojans.attacks": "TROJAN_ATTACKS",
}


def _family(path: str) -> tuple[ModuleType, Registry[object]]:
    module = importlib.import_module(path)
    registry = getattr(module, FAMILIES[path])
    assert isinstance(registry, Registry)
    return module, registry


@pytest.mark.parametrize("path", FAMILIES)
def test_family_exposes_create_and_available_over_its_registry(path: str) -> None:
    module, registry = _family(path)
    assert {"create", "available", FAMILIES[path]} <= set(module.__all__)
    names = module.available()
    assert names == registry.available() and names, path
    assert all(registry.get(name).name == name for name in names)  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", FAMILIES)
def test_unknown_name_lists_the_valid_names(path: str) -> None:
    module, registry = _family(path)
    with pytest.raises(InputError, match=re.escape("Available: " + ", ".join(registry.available()))):
        module.create("no-such-entry")


@pytest.mark.parametrize("path", FAMILIES)
def test_unknown_keyword_lists_the_valid_parameters(path: str) -> None:
    module, registry = _family(path)
    name = registry.available()[0]
    with pytest.raises(InputError, match=r"has no parameter 'no_such_parameter'.* Valid parameters: ") as info:
        module.create(name, no_such_parameter=1)
    assert "\n" not in str(info.value)
    for param in registry.parameters(name) or []:
        assert param in str(info.value).split("Valid parameters: ")[1]


def test_registry_names_are_distinct_across_families() -> None:
    registries = [_family(path)[1] for path in FAMILIES]
    assert len({id(r) for r in registries}) == len(registries)
    assert len({r.family for r in registries}) == len(registries), "error messages must say which family"
