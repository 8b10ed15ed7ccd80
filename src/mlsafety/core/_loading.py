"""Loading users' models: a factory function in a Python file, weights without executing pickles."""

from __future__ import annotations

import importlib.util
import pickle
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from mlsafety.core._errors import InputError


def load_factory(spec: str) -> nn.Module:
    """Build a model from ``"path/to/file.py:factory"`` (a function that returns an ``nn.Module``)."""
    file, sep, func = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not func:
        raise InputError(f"model spec {spec!r} must look like path/to/file.py:factory_function")
    path = Path(file)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    mod_name = f"_mlsafety_user_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise InputError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, func, None)
    if not callable(factory):
        raise InputError(f"{path} defines no function {func!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pt``/``.pth`` file with ``weights_only=True``.

    A pickle that tries to run code is refused with an :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise InputError(f"cannot read {path} as safetensors: {exc}") from None
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the load below decides.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise InputError(
            f"refused to load {path}: it is not a plain tensor file ({first[:160]}); "
            "save the weights with safetensors or torch.save(model.state_dict())"
        ) from None
    except Exception as exc:
        raise InputError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``path`` into ``model`` (strict: every key must match)."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())
        raise InputError(f"weights in {path} do not fit the model: {msg[:300]}") from None
    return model.eval()
