"""Loading users' models: a factory function in a Python file, weights without executing pickles."""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsafety.core._errors import InputError

_SAVE_HINT = "save the weights with safetensors or torch.save(model.state_dict())"


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (whitespace collapsed, nothing cut)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_factory(spec: str, option: str = "--model", what: str = "model") -> Any:
    """Import ``"path/to/file.py:factory"`` and return what ``factory()`` returns (called without arguments).

    Whatever goes wrong in the user's file (an exception or ``sys.exit()`` while importing it or
    calling the factory, a missing function, a factory that needs arguments) raises
    :class:`InputError` naming the file and the fix; ``option`` and ``what`` name the flag and the
    thing the factory makes in those messages (``--reward``, ``scorer``).
    """
    file, sep, func = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not func:
        raise InputError(f"{what} spec {spec!r} must look like path/to/file.py:factory_function")
    path = Path(file)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}; give an existing path/to/file.py:factory_function")
    mod_name = f"_mlsafety_user_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"cannot import {path}; give a Python source file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code: any failure, sys.exit() included
        sys.modules.pop(mod_name, None)
        raise InputError(
            f"importing {path} failed with {_one_line(exc)}; fix the file so that importing it only defines the {what}"
        ) from None
    factory = getattr(module, func, None)
    if not callable(factory):
        names = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise InputError(f"{path} defines no function {func!r}; functions it defines: {', '.join(names) or 'none'}")
    try:
        required = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except (TypeError, ValueError):  # builtins and some callables have no signature
        required = []
    if required:
        raise InputError(
            f"{spec} needs arguments ({', '.join(required)}); point {option} at a function that takes none, "
            f"e.g. def make(): return {func}(...)"
        )
    try:
        return factory()
    except (Exception, SystemExit) as exc:  # the user's code
        raise InputError(
            f"{spec} raised {_one_line(exc)}; fix the factory so that {func}() returns the {what}"
        ) from None


def load_factory(spec: str) -> nn.Module:
    """Build a model from ``"path/to/file.py:factory"`` (a function that returns an ``nn.Module``).

    The factory is called without arguments (:func:`call_factory`, which turns whatever goes wrong in
    the user's file into one :class:`InputError` line); a result that is not a module is refused too.
    """
    model = call_factory(spec)
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module; return the model itself")
    return model.eval()


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save) or ``"unknown"``."""
    with path.open("rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocols 2..5
        return "pickle"
    return "unknown"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``).

    The format is read from the file's first bytes, not its suffix. A pickle that holds anything
    but tensors (and so could run code when loaded) is refused, and a file in neither format is
    called what it is; both raise :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}; give an existing .safetensors or .pt file")
    kind = _sniff(path)
    if kind == "unknown":
        raise InputError(
            f"{path} is not a valid weights file: neither safetensors nor a torch state dict; {_SAVE_HINT}"
        )
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise InputError(f"{path} is a damaged safetensors file ({_one_line(exc)}); {_SAVE_HINT}") from None
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the load below decides.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it refers to {found.group(1)}" if found else "it holds objects other than tensors"
        raise InputError(
            f"refused to load {path}: {what}, and loading such a pickle could run code; {_SAVE_HINT}"
        ) from None
    except Exception as exc:  # torch raises several types for a damaged archive
        raise InputError(f"{path} is not a valid torch weights file ({_one_line(exc)}); {_SAVE_HINT}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict of tensors; {_SAVE_HINT}")
    return state


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``path`` into ``model`` (strict: every key and shape must match)."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape of {_listing(shapes)} (file vs model)")
    if problems:
        raise InputError(
            f"weights in {path} do not fit the model: {'; '.join(problems)}; give the weights saved from this model"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"weights in {path} do not fit the model: {_one_line(exc)}") from None
    return model.eval()


_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
"""PIL resampling codes of an image processor's ``resample`` and the torch interpolation modes that match them."""


def _size_pair(value: Any, what: str) -> tuple[int, int] | None:
    """``(H, W)`` from a processor's ``{"height", "width"}`` dict (or one int for both), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, dict) and isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
        return int(value["height"]), int(value["width"])
    if value is None or (isinstance(value, dict) and "shortest_edge" in value):
        return None
    raise InputError(f"{what} {value!r} is not a size this reader understands; give {{'height': H, 'width': W}}")


class ImagePreprocess(nn.Module):
    """A ``transformers`` image processor's resize, centre crop, rescale and normalisation as a torch module.

    Inputs stay in [0, 1] ``(N, C, H, W)`` as everywhere in mlsafety (pixel values divided by 255); the
    module maps them to what the model was trained on, differentiably, so attacks and gradient methods
    see through it. What the processor's saved configuration (``preprocessor_config.json``) says is
    applied in its order: resize (``size`` as height/width, or ``shortest_edge`` with the aspect ratio
    kept, the long side floored; ConvNeXt's ``crop_pct`` enlarges it before the crop below 384 and warps to a
    square at 384 or more), centre crop (``crop_size``), rescale
    (``rescale_factor`` times the pixel value in 0..255) and ``(x - mean) / std``.

    Deviation: resizing is torch's interpolation with anti-aliasing (``resample`` 2 bilinear, 3 bicubic,
    0 nearest), not PIL's, so values differ from the processor's by interpolation round-off.

    Args:
        config: the processor's saved configuration (the JSON object).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.resize: tuple[int, int] | None = None
        self.shortest_edge: int | None = None
        self.crop: tuple[int, int] | None = None
        if config.get("do_resize", True):
            size = config.get("size")
            self.resize = _size_pair(size, "the image processor's size")
            if isinstance(size, dict) and isinstance(size.get("shortest_edge"), int):
                edge = int(size["shortest_edge"])
                crop_pct = config.get("crop_pct")
                if isinstance(crop_pct, (int, float)) and 0 < crop_pct < 1:  # ConvNeXt's rule
                    if edge < 384:
                        self.shortest_edge, self.crop = int(edge / crop_pct), (edge, edge)
                    else:  # its processor warps to a square, without a crop, at 384 or more
                        self.resize = (edge, edge)
                else:
                    self.shortest_edge = edge
        if config.get("do_center_crop", False):
            self.crop = _size_pair(config.get("crop_size"), "the image processor's crop_size") or self.crop
        self.mode = _RESAMPLE.get(int(config.get("resample", 2) or 0), "bilinear")
        factor = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        self.scale = 255.0 * factor
        mean = config.get("image_mean") if config.get("do_normalize", True) else None
        std = config.get("image_std") if config.get("do_normalize", True) else None
        mean_t = torch.as_tensor(mean if mean is not None else 0.0, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std if std is not None else 1.0, dtype=torch.float32).reshape(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise InputError("the image processor's image_std must be positive in every channel")
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _interpolate(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        if self.mode == "nearest":
            return torch.nn.functional.interpolate(x, size=size, mode="nearest")
        return torch.nn.functional.interpolate(x, size=size, mode=self.mode, align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            x = self._interpolate(x, self.resize)
        elif self.shortest_edge is not None:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            short = self.shortest_edge
            # the long side is floored, as transformers' get_resize_output_image_size and torchvision do
            size = (short, max(1, int(w * short / h))) if h <= w else (max(1, int(h * short / w)), short)
            x = self._interpolate(x, size)
        if self.crop is not None:
            ch, cw = self.crop
            h, w = int(x.shape[-2]), int(x.shape[-1])
            if h >= ch and w >= cw:
                top, left = (h - ch) // 2, (w - cw) // 2
                x = x[..., top : top + ch, left : left + cw]
            else:
                x = self._interpolate(x, (ch, cw))
        return (x * self.scale - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"resize={self.resize or self.shortest_edge}, crop={self.crop}, mode={self.mode}, scale={self.scale:g}"


class PreprocessedModel(nn.Module):
    """``model(preprocess(x))``: an image model with its processor folded in front (inputs in [0, 1]).

    The model's own output passes through unchanged (a ``transformers`` output object: the adapter reads
    its ``.logits``).
    """

    def __init__(self, preprocess: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(self.preprocess(x))
