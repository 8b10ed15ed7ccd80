"""The public API of mlsafety.systemic: a sorted __all__ whose names all exist."""

from __future__ import annotations

import mlsafety.systemic as systemic


def _isort_key(name: str) -> tuple[int, str]:
    # constants, then classes, then functions (the order ruff's RUF022 keeps)
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    assert systemic.__all__ == sorted(systemic.__all__, key=_isort_key)
    assert len(set(systemic.__all__)) == len(systemic.__all__)
    for name in systemic.__all__:
        assert hasattr(systemic, name), name
