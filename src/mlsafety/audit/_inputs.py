"""Turning the user's model and data specifications into a checked Classifier and AuditData."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsafety import zoo
from mlsafety.audit._context import AuditData
from mlsafety.core import (
    ArrayDataset,
    Classifier,
    InputError,
    check_images,
    check_labels,
    generator,
    load_factory,
    load_image_folder,
    load_npz,
    load_weights,
)


@dataclass
class AuditConfig:
    """Everything that defines an audit; two audits with equal configs give equal stored values.

    Attributes:
        model: a zoo model name or ``path/to/file.py:factory``.
        weights: weights for a factory model (``.safetensors``, or ``.pt`` read with weights_only).
        data: in-distribution test data: a zoo dataset name, an ``.npz`` file or an image folder.
        val: validation data (same forms); default: the zoo split ``val``, or a seeded 30% of
            ``data`` held out for files and folders.
        train: training data (optional; detectors fit on it when given).
        ood: OOD sets (zoo names, ``.npz`` files or folders); default: every embedded OOD set, made
            at the data's image shape.
        image_size: (H, W) for image folders.
        checks: check names to run; None runs every registered check.
        check_params: per-check parameters (``[checks.<name>]`` in the TOML config).
        seed: the run seed.
        quick: the reduced profile.
        batch_size: inputs per forward pass.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``...).
        fail_under / fail_over: gates, metric key to bound.
        exposure / severity: systemic settings passed to the defence-in-depth check.
    """

    model: str = "digits-cnn"
    weights: str | None = None
    data: str = "digits"
    val: str | None = None
    train: str | None = None
    ood: list[str] | None = None
    image_size: tuple[int, int] | None = None
    checks: list[str] | None = None
    check_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    quick: bool = False
    batch_size: int = 256
    device: str = "cpu"
    fail_under: dict[str, float] = field(default_factory=dict)
    fail_over: dict[str, float] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A hash of what determines the results (not gates, paths of outputs or the device)."""
        h = hashlib.sha256()
        parts: list[Any] = [
            self.model,
            self.data,
            self.val,
            self.train,
            self.ood,
            self.image_size,
            sorted(self.checks) if self.checks is not None else None,
            sorted((k, sorted(v.items())) for k, v in self.check_params.items()),
            self.seed,
            self.quick,
            self.batch_size,
        ]
        h.update(repr(parts).encode())
        for spec in (self.weights, self.model.rpartition(":")[0] if ":" in self.model else None):
            if spec and Path(spec).is_file():
                h.update(Path(spec).read_bytes())
        return h.hexdigest()[:16]


def resolve_model(spec: str, weights: str | None, device: str = "cpu") -> Classifier:
    """A Classifier for a zoo name or ``file.py:factory`` (with ``weights``), on ``device``."""
    if spec.endswith(".py") or ".py:" in spec:
        module: nn.Module = load_factory(spec)
        if weights is not None:
            load_weights(module, weights)
    else:
        if weights is not None:
            module = zoo.model_info(spec).build()
            load_weights(module, weights)
        else:
            module = zoo.load_model(spec)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available; use --device cpu")
    return Classifier(module.to(dev).eval())


def _load(
    spec: str,
    split: str,
    kind: str,
    shape: tuple[int, int, int] | None,
    image_size: tuple[int, int] | None,
    channels: int,
) -> ArrayDataset:
    path = Path(spec)
    if spec in zoo.dataset_names():
        return zoo.load_dataset(spec, split=split, shape=shape if kind != "in" else None)
    if path.suffix == ".npz":
        return load_npz(path, kind=kind)
    if path.is_dir():
        size = image_size or (shape[1:] if shape else None)
        if size is None:
            raise InputError(f"image folder {path} needs --image-size H W")
        return load_image_folder(path, tuple(size), channels=channels, kind=kind)  # type: ignore[arg-type]
    if path.suffix or "/" in spec:
        raise InputError(f"data not found or not supported: {spec} (use a zoo name, an .npz file or an image folder)")
    raise InputError(f"unknown zoo dataset {spec!r}; available: {', '.join(zoo.dataset_names())}")


def resolve_data(config: AuditConfig) -> AuditData:
    """Load and hold-out the audit's data; raise :class:`InputError` on anything unusable."""
    channels = 3
    test = _load(config.data, "test", "in", None, config.image_size, channels)
    channels = int(test.x.shape[1]) if test.x.ndim == 4 else 3
    if config.data in zoo.dataset_names() and test.kind != "in":
        raise InputError(f"{config.data!r} is an OOD set; pass in-distribution data with --data")
    shape = tuple(int(s) for s in test.x.shape[1:]) if test.x.ndim == 4 else None
    if config.val is not None:
        val = _load(config.val, "val", "in", None, config.image_size, channels)
    elif config.data in zoo.dataset_names():
        val = zoo.load_dataset(config.data, "val")
    else:
        if len(test) < 10:
            raise InputError(f"{config.data} has {len(test)} inputs; give at least 10, or pass --val")
        perm = torch.randperm(len(test), generator=generator(config.seed, "holdout-val"))
        cut = round(0.3 * len(test))
        val, test = test.subset(perm[:cut], name=f"{test.name}-val"), test.subset(perm[cut:])
    train = None
    if config.train is not None:
        train = _load(config.train, "train", "in", None, config.image_size, channels)
    elif config.data in zoo.dataset_names() and config.val is None:
        train = zoo.load_dataset(config.data, "train")
    ood_specs = config.ood if config.ood is not None else zoo.ood_names()
    ood: dict[str, ArrayDataset] = {}
    for spec in ood_specs:
        ds = _load(spec, "test", "far", shape, config.image_size, channels)  # type: ignore[arg-type]
        if ds.name in ood:
            raise InputError(f"two OOD sets are named {ds.name!r}; rename one file")
        ood[ds.name] = ds
    return AuditData(test=test, val=val, train=train, ood=ood)


def validate(model: Classifier, data: AuditData) -> None:
    """Check inputs, labels and the model's output shape before anything is stored."""
    sets = [("test data", data.test), ("validation data", data.val)]
    if data.train is not None:
        sets.append(("training data", data.train))
    sets += [(f"OOD set {name!r}", ds) for name, ds in data.ood.items()]
    for what, ds in sets:
        check_images(ds.x, what)
    shapes = {tuple(ds.x.shape[1:]) for _, ds in sets}
    if len(shapes) > 1:
        raise InputError(f"datasets have different image shapes {sorted(shapes)}; resize them to one shape")
    with torch.inference_mode():
        out = model.module.eval()(data.test.x[:2].to(model.device))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != min(2, len(data.test)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"model output must be logits of shape (N, K), got {shape} for 2 inputs; "
            "wrap the model so forward() returns one logits tensor"
        )
    model._check_logits(out, out.shape[0])
    k = int(out.shape[1])
    for what, ds in sets[:3] if data.train is not None else sets[:2]:
        check_labels(ds.y, k, f"labels of the {what}")
