"""Fixtures for the interpretability-method tests: tiny seeded Llama and GPT-2 models and token-aligned pairs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mlsafety.core import LanguageModel
from tests.support.text import NEUTRAL_WORDS, tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def llama() -> LanguageModel:
    return LanguageModel(tiny_llama(0))


@pytest.fixture(scope="module")
def gpt2() -> LanguageModel:
    return LanguageModel(tiny_gpt2(0))


@pytest.fixture(params=["llama", "gpt2"])
def lm(request: Any) -> LanguageModel:
    model: LanguageModel = request.getfixturevalue(request.param)
    return model


def make_pairs(n: int = 4, length: int = 5, seed: int = 0, ragged: bool = False) -> dict[str, Any]:
    """``n`` clean/corrupted pairs of random neutral words; the corrupted prompt differs in two words.

    With ``ragged`` the pairs have different lengths (each pair keeps one length).
    """
    g = torch.Generator().manual_seed(seed)
    clean, corrupted = [], []
    for i in range(n):
        size = length + (i % 3 if ragged else 0)
        words = [NEUTRAL_WORDS[int(j)] for j in torch.randint(0, 40, (size,), generator=g)]
        other = list(words)
        for k in (0, size - 2):
            other[k] = NEUTRAL_WORDS[(NEUTRAL_WORDS.index(words[k]) + 7) % 40]
        clean.append(" ".join(words))
        corrupted.append(" ".join(other))
    return {"clean": clean, "corrupted": corrupted, "correct": ["good"] * n, "wrong": ["bad"] * n}
