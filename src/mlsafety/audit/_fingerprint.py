"""What a stored run's numbers depend on, hashed component by component.

``--resume`` may only continue a run whose every input is unchanged: the model's code and weights,
the content of every data set (test, validation, training, each OOD set), each setting that changes
a number, and the versions of mlsafety and torch. Each component is hashed on its own and stored
with the run, so a refusal can say *what* changed (``the test data changed (data.npz has other
content)``) instead of only that something did.

Data sets are hashed by content after loading (the arrays the checks see, shapes and dtypes
included), never by path: a file replaced under the same name is a different input, and a zoo set
read from another package version is too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from mlsafety.audit._context import AuditData, Scorer
from mlsafety.audit._inputs import PROBE_PROMPTS, AuditConfig
from mlsafety.core import ArrayDataset, Classifier, LanguageModel, modality_of

_SETTINGS = (
    "checks", "check_params", "seed", "quick", "batch_size", "image_size", "channels", "budget", "max_samples", "head",
)  # fmt: skip
"""The configuration fields that change a stored number (gates and output paths do not; text columns
change the data, which is hashed by content)."""


def package_version() -> str:
    """The installed mlsafety version (``0+unknown`` when run from a bare source tree)."""
    try:
        return version("mlsafety")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


@dataclass(frozen=True)
class Component:
    """One input of a run.

    Attributes:
        what: how a sentence names it (``the test data``, ``the seed``).
        digest: hash of its content.
        source: what the user gave for it (a path, a zoo name, a value), for messages.
    """

    what: str
    digest: str
    source: str


def _update_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def _update_texts(h: Any, texts: Any) -> None:
    """Every text with its length in bytes, so no two different sequences hash alike."""
    h.update(f"texts({len(texts)})".encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(f"{len(b)}:".encode())
        h.update(b)


def _dataset_digest(ds: ArrayDataset) -> str:
    h = hashlib.sha256()
    if modality_of(ds) == "text":
        _update_texts(h, ds.x)
    else:
        _update_tensor(h, ds.x)
    _update_tensor(h, ds.y)
    return h.hexdigest()


def _tokenizer_digest(clf: Classifier | LanguageModel) -> str:
    """The tokenizer's vocabulary and rules (its serialised form) and the truncation length."""
    tok: Any = clf.tokenizer
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True).encode())
    limits = (clf.max_length, getattr(tok, "model_max_length", None), getattr(tok, "padding_side", None))
    h.update(repr(limits).encode())
    return h.hexdigest()


def _model_digests(spec: str, clf: Classifier | LanguageModel) -> tuple[str, str]:
    """(code, weights): the factory file's bytes and the architecture; every parameter and buffer."""
    code = hashlib.sha256(spec.encode())
    file = spec.rpartition(":")[0] if ":" in spec else spec
    if file.endswith(".py") and Path(file).is_file():
        code.update(Path(file).read_bytes())
    code.update(repr(clf.module).encode())
    weights = hashlib.sha256()
    for name, t in clf.module.state_dict().items():
        weights.update(name.encode())
        _update_tensor(weights, t)
    return code.hexdigest(), weights.hexdigest()


_UNSEEDED = " (no --weights)"


def _builtin_weights(spec: str) -> str:
    return f"{spec}{_UNSEEDED}" if ".py" in spec else f"{spec}'s shipped weights"


def _value_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _factory_digest(spec: str, scorer: Scorer | None = None) -> str:
    """A ``file.py:factory`` spec, the file's bytes (a reward or gold scorer's code) and, when the loaded
    ``scorer`` is given, its outputs on :data:`~mlsafety.audit._inputs.PROBE_PROMPTS` (to 6 significant
    digits): what the file reads (a helper module, a weights file) counts too."""
    h = hashlib.sha256(spec.encode())
    file = spec.rpartition(":")[0]
    if Path(file).is_file():
        h.update(Path(file).read_bytes())
    if scorer is not None:
        with torch.no_grad():
            out = scorer(list(PROBE_PROMPTS))
        h.update(json.dumps([f"{float(v):.6g}" for v in out.detach().flatten().cpu().tolist()]).encode())
    return h.hexdigest()


def components(
    config: AuditConfig,
    model: Classifier | LanguageModel,
    data: AuditData,
    scorers: dict[str, Scorer | None] | None = None,
) -> dict[str, Component]:
    """Every input of a run, keyed by a stable name, each with its content hash (``config.data``
    named, as :func:`~mlsafety.audit.prepare_inputs` leaves it). A language model is hashed as a
    text model is (code, every weight, tokenizer); its ``--reward`` / ``--gold`` factories by their
    file's bytes and, when the loaded ``scorers`` (``{"reward": ..., "gold": ...}``) are given, their
    outputs on two probe texts (only when given, so other runs keep their fingerprints). A scorer whose
    outputs are random (sampling, dropout) therefore blocks ``--resume``: make it deterministic."""
    code, weights = _model_digests(config.model, model)
    out = {
        "model": Component("the model code", code, config.model),
        "weights": Component("the model weights", weights, config.weights or _builtin_weights(config.model)),
        "data": Component("the test data", _dataset_digest(data.test), str(config.data)),
        "val": Component(
            "the validation data",
            _dataset_digest(data.val),
            config.val or (data.val.source if len(data.val) == 0 else f"the validation part of {config.data}"),
        ),
        "train": Component(
            "the training data",
            "none" if data.train is None else _dataset_digest(data.train),
            config.train or ("none" if data.train is None else f"the training part of {config.data}"),
        ),
    }
    if modality_of(model) == "text":  # image runs keep their components (and their fingerprints)
        out["tokenizer"] = Component("the tokenizer", _tokenizer_digest(model), config.model)
    for key, what in (("reward", "the proxy reward (--reward)"), ("gold", "the gold reward (--gold)")):
        spec = getattr(config, key, None)
        if spec is not None:
            out[key] = Component(what, _factory_digest(spec, (scorers or {}).get(key)), spec)
    for name, ds in data.ood.items():
        out[f"ood:{name}"] = Component(f"the OOD set {name!r}", _dataset_digest(ds), name)
    for name in _SETTINGS:
        value = getattr(config, name, None)
        if name in ("budget", "max_samples", "head") and value is None:
            continue  # runs without them keep the fingerprints they had before these settings existed
        if name == "checks" and value is not None:
            value = sorted(value)
        if name == "image_size" and value is not None:
            value = list(value)
        out[f"setting:{name}"] = Component(f"--{name.replace('_', '-')}", _value_digest(value), json.dumps(value))
    # the type decides the kernels (and so the numbers); the index is kept for messages
    out["setting:device"] = Component("the device type", _value_digest(model.device.type), str(model.device))
    out["version:mlsafety"] = Component("the mlsafety version", package_version(), package_version())
    out["version:torch"] = Component("the torch version", torch.__version__, torch.__version__)
    return out


def fingerprint(parts: dict[str, Component]) -> str:
    """One short hash over every component (the ``runs.fingerprint`` column)."""
    return _value_digest(sorted((k, c.digest) for k, c in parts.items()))[:16]


def record(parts: dict[str, Component]) -> dict[str, dict[str, str]]:
    """The components as stored in the run's configuration record (``inputs``)."""
    return {k: {"what": c.what, "digest": c.digest, "source": c.source} for k, c in sorted(parts.items())}


def differences(stored: Any, parts: dict[str, Component]) -> list[str]:
    """What changed between a stored run's ``inputs`` record and the current components.

    Returns:
        One phrase per changed component (``the test data changed (data.npz has other content)``),
        in a fixed order; empty when nothing changed. A record without hashes (a run stored by an
        older mlsafety) gives one phrase saying so.
    """
    if not isinstance(stored, dict) or not stored:
        return ["the run was stored by an older mlsafety that kept no input hashes"]
    changes: list[str] = []
    for key in sorted(set(stored) | set(parts), key=lambda k: (list(parts).index(k) if k in parts else 1e9, k)):
        old, new = stored.get(key), parts.get(key)
        if new is None:
            changes.append(f"{old.get('what', key)} is no longer given")  # type: ignore[union-attr]
        elif old is None:
            changes.append(f"{new.what} was not part of the run ({new.source} is new)")
        elif old.get("digest") != new.digest:
            before = old.get("source", "")
            if key.startswith(("setting:", "version:")):
                changes.append(f"{new.what} changed ({before} -> {new.source})")
            elif before == new.source and new.source.endswith(_UNSEEDED):
                factory = new.source[: -len(_UNSEEDED)]
                changes.append(
                    f"{new.what} changed ({factory} built other weights; give --weights, or seed the factory, "
                    "so that a run can be resumed)"
                )
            elif before == new.source:
                changes.append(f"{new.what} changed ({new.source} has other content)")
            else:
                changes.append(f"{new.what} changed ({before} -> {new.source})")
    return changes


def input_changes(
    stored: Any,
    config: AuditConfig,
    model: Classifier | LanguageModel,
    data: AuditData,
    keys: tuple[str, ...],
) -> list[str]:
    """What changed, among the components named in ``keys``, between a stored run's ``inputs`` record
    and the inputs as prepared now (``data`` as :func:`~mlsafety.audit.prepare_inputs` returns it,
    before any sample cap).

    A record without hashes (a run stored by an older mlsafety) gives no phrase: there is nothing to
    compare against. Used by ``mlsafety guard export``, which refits a monitor from a run's inputs.
    """
    if not isinstance(stored, dict) or not stored:
        return []
    parts = {k: c for k, c in components(config, model, data).items() if k in keys}
    return differences({k: v for k, v in stored.items() if k in keys}, parts)
