"""The TOML configuration file of ``mlsafety audit --config``.

Example::

    model = "digits-cnn"          # or "path/to/model.py:factory" with weights = "model.safetensors"
    data = "digits"               # zoo name, .npz file or image folder
    ood = ["letters", "noise", "far:data/photos.npz"]   # near:PATH / far:PATH sets a set's group
    ood_detector = "knn"          # the monitored OOD detector (default: auto, chosen on held-out data)
    seed = 0
    batch_size = 256              # positive
    budget = "5m"                 # optional: choose sample sizes so the audit fits (90s, 5m, 1h)
    max_samples = 1000            # optional: at most this many inputs of each data source
    channels = 1                  # optional: image folders converted to 1 (grayscale) or 3 (RGB) channels
    classes = ["circle", "square"] # optional: class names in the order of the model's outputs
    head = "classifier"           # optional: the model's head module (default: traced)
    text_column = "text"          # text data files: the columns of the text and the label
    label_column = "label"
    checks = ["clean", "ood-basic", "calibration-basic"]

    [params.ood-basic]            # per-check parameters
    n_boot = 500

    [fail_under]                  # gates: exit 1 when a metric is below its bound
    "clean/clean/accuracy" = 0.97

    [fail_over]                   # ... or above it
    "defence-in-depth/*/escaped_failure_rate" = 0.25
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mlsafety.audit._gates import check_gate_bound
from mlsafety.audit._inputs import AuditConfig, check_settings
from mlsafety.core import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_SCALARS = {
    "model": str,
    "weights": str,
    "data": str,
    "val": str,
    "train": str,
    "seed": int,
    "quick": bool,
    "batch_size": int,
    "channels": int,
    "device": str,
    "text_column": str,
    "label_column": str,
    "reward": str,
    "gold": str,
    "budget": str,
    "max_samples": int,
    "head": str,
}


def load_config(path: str | Path) -> AuditConfig:
    """Read an audit configuration; unknown keys and wrong types raise :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from None
    return config_from_mapping(raw, str(path))


def config_from_mapping(raw: dict[str, Any], where: str = "config") -> AuditConfig:
    """An :class:`AuditConfig` from a parsed TOML table; unknown keys, wrong types and values out of
    range (a batch size below 1, a seed outside [0, 2**63 - 1], a non-finite gate bound...) raise
    :class:`InputError` naming ``where`` and the key."""
    cfg = AuditConfig()
    ood_detector = None
    for key, value in raw.items():
        if key in _SCALARS:
            if not isinstance(value, _SCALARS[key]) or (_SCALARS[key] is int and isinstance(value, bool)):
                raise InputError(f"{where}: {key} must be a {_SCALARS[key].__name__}, got {value!r}")
            setattr(cfg, key, value)
        elif key == "ood":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{where}: ood must be a list of names or paths")
            cfg.ood = value
        elif key == "ood_detector":
            if not isinstance(value, str):
                raise InputError(f"{where}: ood_detector must be a detector name (`mlsafety ood list`) or 'auto'")
            ood_detector = value
        elif key == "image_size":
            if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
                raise InputError(f"{where}: image_size must be [height, width]")
            cfg.image_size = (value[0], value[1])
        elif key == "classes":
            if isinstance(value, str):
                value = [c.strip() for c in value.split(",")]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{where}: classes must be a list of class names in the order of the model's outputs")
            cfg.classes = list(value)
        elif key == "checks":
            if isinstance(value, dict):
                raise InputError(
                    f"{where}: checks must be a list of check names; a check's parameters go in [params.<check>], "
                    f"e.g. [params.{next(iter(value), 'ood')}]"
                )
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{where}: checks must be a list of check names")
            cfg.checks = list(value)
        elif key == "params":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise InputError(f"{where}: [params.<check>] must be tables of parameters")
            cfg.check_params = {k: dict(v) for k, v in value.items()}
        elif key in ("fail_under", "fail_over"):
            if not isinstance(value, dict):
                raise InputError(f"{where}: [{key}] must map metric keys to numbers")
            setattr(cfg, key, {k: check_gate_bound(k, v, f"{where}: [{key}]") for k, v in value.items()})
        else:
            raise InputError(f"{where}: unknown key {key!r}")
    if ood_detector is not None:  # after [params]: a table written later in the file must not drop it
        ood = cfg.check_params.setdefault("ood", {})
        if ood.get("default", ood_detector) != ood_detector:
            raise InputError(f"{where}: ood_detector = {ood_detector!r} and [params.ood] default = "
                             f"{ood['default']!r} disagree; keep one")  # fmt: skip
        ood["default"] = ood_detector
    check_settings(cfg, where)
    return cfg
