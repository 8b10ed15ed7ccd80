"""Two tiny models in a user's Python file and a random 8x8 dataset, for the tests of ``audit-many``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MODELS = """
import torch
from torch import nn


def a():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def b():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
"""


def write_models_and_data(folder: Path, n: int) -> tuple[str, str, Path]:
    """Write ``m.py`` (factories ``a`` and ``b``, different seeds) and ``d.npz`` (``n`` images, 3 classes).

    Returns the two model specs and the data file.
    """
    (folder / "m.py").write_text(MODELS)
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.random((n, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, n))
    return f"{folder}/m.py:a", f"{folder}/m.py:b", folder / "d.npz"
