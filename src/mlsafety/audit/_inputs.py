"""Turning the user's model and data specifications into a checked Classifier and AuditData."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsafety import zoo
from mlsafety.audit._check import Check
from mlsafety.audit._context import AuditData, Scorer
from mlsafety.audit._gates import validate_gates
from mlsafety.core import (
    ArrayDataset,
    Classifier,
    ImagePreprocess,
    InputError,
    LanguageModel,
    MlsafetyError,
    PreprocessedModel,
    TextDataset,
    Texts,
    call_factory,
    check_device,
    encode,
    forward,
    frozen,
    generator,
    is_hf_dataset_folder,
    load_factory,
    load_hf_dataset,
    load_hf_image_dataset,
    load_image_folder,
    load_npz,
    load_text_csv,
    load_text_jsonl,
    load_weights,
    modality_of,
    unwrap_logits,
    validate_dataset,
    validate_text_dataset,
)
from mlsafety.monitoring.proxy_gaming.scorers import check_scorers

MAX_SEED = 2**63 - 1
"""The largest run seed: seeds are stored as SQLite integers (signed 64-bit)."""

_ASKED = "--channels asks for"

PROBE_INPUTS = 16
"""Inputs of each data source the model is run on before the audit starts (spread over the set)."""


@dataclass
class AuditConfig:
    """Everything that defines an audit; two audits with equal configs give equal stored values.

    Attributes:
        model: a zoo model name, ``path/to/file.py:factory``, or a folder holding a saved
            ``transformers`` sequence classifier and its tokenizer (``save_pretrained``, safetensors).
        weights: weights for a factory model (``.safetensors``, or ``.pt`` read with weights_only).
        data: in-distribution test data: a zoo dataset name, an ``.npz`` file or an image folder;
            for a text model a zoo text dataset, a ``.csv`` / ``.jsonl`` file or a folder saved by
            ``datasets.Dataset.save_to_disk``. None: the zoo dataset a zoo model was trained on
            (``digits`` for any other image model; a text model that is not in the zoo needs it).
        val: validation data (same forms); default: the zoo split ``val``, or a seeded 30% of
            ``data`` held out for files and folders.
        train: training data (optional; detectors fit on it when given).
        ood: OOD sets (zoo names, ``.npz`` files or folders; text files and folders for a text
            model); default: the zoo data's own OOD sets when it names them (``fashion-mnist``:
            letters-28, digits-28, natural-patches, noise), else every generic embedded OOD set of the
            model's modality (image sets made at the data's image shape).
        image_size: (H, W) for image folders.
        channels: channels image folders are converted to (1 or 3); None: the model's, found by a
            probe pass (folders are read as RGB and converted).
        text_column / label_column: the columns of text data files and folders.
        checks: check names to run; None runs every registered check.
        check_params: per-check parameters (``[checks.<name>]`` in the TOML config).
        seed: the run seed.
        quick: the reduced profile.
        batch_size: inputs per forward pass.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``...).
        fail_under / fail_over: gates, metric key to bound.
        exposure / severity: systemic settings passed to the defence-in-depth check.
        budget: a time budget for the whole audit (``90s``, ``5m``, ``1h``): sample sizes are chosen
            per check so the run fits it (:mod:`mlsafety.audit._budget`); None: the profile's sizes.
        max_samples: at most this many inputs of each data source (test, validation, training, every
            OOD set), a seeded subset; None: all.
        classes: the class names in the order of the model's outputs (``--classes a,b,c``): the label
            order of image folders (instead of a ``classes.txt`` / ``classes.json`` beside the data or the
            alphabetical folder names), and the names of an ``.npz`` file's labels 0..K-1.
        head: the dotted name of the model's head (``--head classifier``); None: found by tracing which
            layer returns the logits (:meth:`~mlsafety.core.Classifier.trace`).
        reward / gold: for a causal language model, ``path/to/file.py:factory`` of the proxy reward
            being optimised and of the gold (trusted) reward; a factory returns a scorer
            ``scorer(texts) -> Tensor (N,)`` of float rewards. Both or neither.
    """

    model: str = "digits-cnn"
    weights: str | None = None
    data: str | None = None
    val: str | None = None
    train: str | None = None
    ood: list[str] | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    text_column: str = "text"
    label_column: str | None = None
    checks: list[str] | None = None
    check_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    quick: bool = False
    batch_size: int = 256
    device: str = "cpu"
    fail_under: dict[str, float] = field(default_factory=dict)
    fail_over: dict[str, float] = field(default_factory=dict)
    reward: str | None = None
    gold: str | None = None
    classes: list[str] | None = None
    head: str | None = None
    budget: str | None = None
    max_samples: int | None = None


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_settings(config: AuditConfig, where: str | None = None) -> None:
    """Raise :class:`InputError` for a setting no audit can run with.

    ``where`` is the config file the values came from (messages then name its keys); None names
    the command-line options.
    """

    def name(key: str) -> str:
        return f"{where}: {key}" if where else f"--{key.replace('_', '-')}"

    def example(key: str, value: str) -> str:
        return f"{key} = {value}" if where else f"--{key.replace('_', '-')} {value}"

    if isinstance(config.model, str) and not config.model.strip():  # else read as a model folder without config.json
        raise InputError(
            f"{name('model')} is empty; give a zoo model name, path/to/file.py:factory or a saved model folder, "
            "or leave it out for the default"
        )
    if config.max_samples is not None and not _positive_int(config.max_samples):
        raise InputError(
            f"{name('max_samples')} must be a positive integer, got {config.max_samples!r}; "
            f"use e.g. {example('max_samples', '500')}"
        )
    if config.budget is not None:
        from mlsafety.audit._budget import parse_duration

        parse_duration(config.budget)
    if not _positive_int(config.batch_size):
        raise InputError(
            f"{name('batch_size')} must be a positive integer, got {config.batch_size!r}; "
            f"use e.g. {example('batch_size', '256')}"
        )
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(
            f"{name('seed')} must be an integer in [0, 2**63 - 1], got {seed!r}; use e.g. {example('seed', '0')}"
        )
    size = config.image_size
    if size is not None and (len(size) != 2 or not all(_positive_int(v) for v in size)):
        shown = " ".join(str(v) for v in size) if isinstance(size, (tuple, list)) else repr(size)
        raise InputError(
            f"{name('image_size')} must be two positive integers H W, got {shown}; "
            f"use e.g. {example('image_size', '[32, 32]' if where else '32 32')}"
        )
    if config.channels is not None and (isinstance(config.channels, bool) or config.channels not in (1, 3)):
        raise InputError(
            f"{name('channels')} must be 1 (grayscale) or 3 (RGB), got {config.channels!r}; "
            "leave it out to use the model's channel count"
        )
    for key in ("data", "val", "train", "ood"):
        value = getattr(config, key)
        specs = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in specs):
            raise InputError(
                f"{name(key)} is empty; give a zoo dataset name, a file or a folder, or leave it out for the default"
            )


def validate_config(config: AuditConfig, checks: Sequence[Check] | None = None) -> None:
    """Check the settings and the gates (against the selected ``checks`` when given) before any work.

    Raises:
        InputError: a setting out of range, a gate with a non-finite bound, an unknown or
            unselected check, or a metric its check does not declare.
    """
    check_settings(config)
    validate_gates(config.fail_under, config.fail_over, checks)


WEIGHT_FILES = "*.safetensors"
"""What a model folder's weights must be saved as (safetensors: no pickled code is ever run)."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")
"""Files of which a model folder's saved tokenizer holds at least one."""


def _load_hf_folder(
    folder: str | Path,
    auto_class: str,
    what: str,
    missing_fix: Callable[[str, str], str],
    tokenizer: bool = True,
) -> Any:
    """A saved ``transformers`` model of ``auto_class`` (e.g. ``AutoModelForCausalLM``) and its tokenizer
    (``module.tokenizer``), offline and quietly: the one folder loader behind :func:`load_hf_classifier`
    and :func:`load_hf_language_model`. ``what`` names the model in messages; ``missing_fix(class name,
    missing keys shown)`` is the refusal when the weights lack part of the model. ``tokenizer=False`` (image
    models) neither needs nor loads one.

    Raises:
        InputError: no config, weights or tokenizer; a folder transformers cannot load as ``what``;
            weights lacking part of it (transformers would initialise it at random); a tokenizer larger
            than the embedding table (it would index past it).
    """
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise InputError(
            f"--model {folder}: a model folder needs config.json; save the model with model.save_pretrained(folder)"
        )
    if not any(path.glob(WEIGHT_FILES)):
        raise InputError(
            f"--model {folder}: the folder has no weights (.safetensors); save them with "
            "model.save_pretrained(folder) (safetensors is its default)"
        )
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(
            f"--model {folder}: the folder has no tokenizer ({', '.join(TOKENIZER_FILES)}); save the one the model "
            "was trained with: tokenizer.save_pretrained(folder)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    try:  # quiet: no "Loading weights" bar nor LOAD REPORT table on stderr (the refusals below say it)
        with quiet_transformers():
            tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True) if tokenizer else None
            loaded: Any = getattr(transformers, auto_class).from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, output_loading_info=True
            )
        module, info = loaded
    except Exception as exc:  # a user's folder: any failure of transformers becomes one line
        msg = " ".join(str(exc).split())
        raise InputError(
            f"--model {folder}: transformers cannot load it as {what}: {type(exc).__name__}: {msg}"
        ) from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:3]) + (f" ... ({len(missing)} in all)" if len(missing) > 3 else "")
        raise InputError(
            f"--model {folder} has no trained weights for {shown}{missing_fix(type(module).__name__, shown)}"
        )
    if tok is None:
        return module
    rows = module.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise InputError(
            f"--model {folder}: the tokenizer has {len(tok)} tokens but the model's embedding table has {rows} "
            "rows; save the tokenizer the model was trained with in the folder"
        )
    module.tokenizer = tok
    return module


IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
"""The saved image processor of a ``transformers`` image model folder (``processor.save_pretrained``)."""


def _image_classifier_classes() -> frozenset[str]:
    """The class names ``AutoModelForImageClassification`` loads (``ViTForImageClassification``...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (tuple, list)) else (value,))
    return frozenset(names)


def is_image_model_folder(spec: str) -> bool:
    """True when ``spec`` is a folder holding a saved ``transformers`` image model: its config.json names an
    image classifier architecture, or it holds an image processor and no tokenizer (a bare ``ViTModel``
    too, which :func:`load_hf_image_classifier` then refuses)."""
    path = Path(spec)
    if ".py" in spec or not path.is_dir() or not (path / "config.json").is_file():
        return False
    archs = _folder_architectures(path)
    if any(a in _image_classifier_classes() or a.endswith("ForImageClassification") for a in archs):
        return True
    return (path / IMAGE_PROCESSOR_FILE).is_file() and not any((path / f).is_file() for f in TOKENIZER_FILES)


def load_hf_image_classifier(folder: str | Path) -> nn.Module:
    """A saved ``transformers`` image classifier with its image processor folded in front, offline, eval mode.

    The folder is what ``model.save_pretrained(folder)`` and ``processor.save_pretrained(folder)`` write:
    ``config.json``, weights as ``.safetensors`` and ``preprocessor_config.json``. The processor's resize,
    crop, rescale and normalisation (:class:`~mlsafety.core.ImagePreprocess`) run in torch inside the
    model, so inputs stay in [0, 1] ``(N, C, H, W)`` and every epsilon is in those pixel units. Without a
    saved processor the model gets the [0, 1] inputs as they are. Nothing is fetched
    (``HF_HUB_OFFLINE=1``, ``local_files_only=True``).

    Raises:
        InputError: no config or weights; a model transformers cannot load as an image classifier, or whose
            weights lack its head (a bare ``ViTModel``: transformers would initialise the head at random);
            an unreadable processor configuration.
    """
    path = Path(folder)
    archs = ", ".join(_folder_architectures(path)) or "the saved model"

    def fix(cls: str, shown: str) -> str:
        return (f": {archs} has no classification head; train a {cls} (or another ...ForImageClassification) "
                "and save it with model.save_pretrained(folder)")  # fmt: skip

    module = _load_hf_folder(folder, "AutoModelForImageClassification", "an image classifier", fix, tokenizer=False)
    module.eval()
    processor = path / IMAGE_PROCESSOR_FILE
    if not processor.is_file():
        return module  # type: ignore[no-any-return]
    try:
        config = json.loads(processor.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--model {folder}: cannot read {IMAGE_PROCESSOR_FILE}: {_one_line(exc)}; save the "
                         "processor with processor.save_pretrained(folder)") from None  # fmt: skip
    if not isinstance(config, dict):
        raise InputError(f"--model {folder}: {IMAGE_PROCESSOR_FILE} is not a JSON object; save the processor with "
                         "processor.save_pretrained(folder)")  # fmt: skip
    return PreprocessedModel(ImagePreprocess(config), module).eval()


def load_hf_classifier(folder: str | Path) -> nn.Module:
    """A saved ``transformers`` sequence classifier and its tokenizer (``module.tokenizer``), offline.

    The folder is what ``model.save_pretrained(folder)`` and ``tokenizer.save_pretrained(folder)``
    write: ``config.json``, weights as ``.safetensors`` and the tokenizer's files. Nothing is
    fetched (``HF_HUB_OFFLINE=1``, ``local_files_only=True``).

    Raises:
        InputError: a folder without a config, without weights or without a tokenizer; a model that
            transformers cannot load as a sequence classifier, or whose weights lack part of it (a
            bare encoder or a causal LM: transformers would initialise the head at random); a
            tokenizer whose vocabulary is larger than the model's embedding table (it would index
            past it).
    """

    def fix(cls: str, shown: str) -> str:
        return (f": it is not a saved sequence classifier; train a {cls} (or another ...ForSequenceClassification) "
                "and save it with model.save_pretrained(folder)")  # fmt: skip

    return _load_hf_folder(folder, "AutoModelForSequenceClassification", "a sequence classifier", fix)  # type: ignore[no-any-return]


_ROLE_NAMES = {"encoder": "an encoder (it returns embeddings)", "causal-lm": "a causal language model",
               "denoiser": "a denoiser"}  # fmt: skip

LM_ROLE = "causal-lm"
"""The zoo role of the causal language models the audit takes (``smollm2-135m``)."""


def _folder_architectures(path: Path) -> list[str]:
    """The ``architectures`` a saved ``transformers`` folder's config.json names ([] when unreadable)."""
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    names = raw.get("architectures") if isinstance(raw, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _causal_lm_classes() -> frozenset[str]:
    """The class names ``AutoModelForCausalLM`` loads (``GPT2LMHeadModel``, ``LlamaForCausalLM``...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence ``transformers``' progress bars and warnings while loading, restoring both after (also on
    errors), so that a refusal stays one line on stderr."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def is_language_model(spec: str) -> bool:
    """True when ``spec`` names a causal language model: a zoo model of role ``causal-lm``, or a folder
    whose config.json names an architecture ``transformers`` loads as a causal LM (any value of its
    ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``: ``LlamaForCausalLM``, ``GPT2LMHeadModel``...)."""
    if spec in zoo.model_names():
        return zoo.model_info(spec).role == LM_ROLE
    path = Path(spec)
    if ".py" in spec or not path.is_dir():
        return False
    names = _causal_lm_classes()
    return any(a in names or a.endswith("ForCausalLM") for a in _folder_architectures(path))


def load_hf_language_model(folder: str | Path) -> nn.Module:
    """A saved ``transformers`` causal LM and its tokenizer (``module.tokenizer``), offline, eval mode.

    Raises:
        InputError: no config, weights or tokenizer; a model transformers cannot load as a causal LM
            or whose weights lack part of it; a tokenizer larger than the embedding table.
    """

    def fix(cls: str, shown: str) -> str:
        return "; save the whole causal LM with model.save_pretrained(folder)"

    return _load_hf_folder(folder, "AutoModelForCausalLM", "a causal language model", fix).eval()  # type: ignore[no-any-return]


def _device(device: str) -> torch.device:
    """``device`` checked: a known type, and a CUDA device that exists."""
    return check_device(device, "the audit")


def resolve_language_model(spec: str, weights: str | None = None, device: str = "cpu") -> LanguageModel:
    """A :class:`~mlsafety.core.LanguageModel` for a zoo causal LM (``smollm2-135m``) or a folder holding a
    saved ``transformers`` causal LM (:func:`is_language_model`) and its tokenizer, on ``device``, loaded offline.

    Raises:
        InputError: ``spec`` is not a causal LM (naming the ones there are), ``weights`` given (the
            weights are the zoo's or the folder's), a folder transformers cannot load, a bad device.
    """
    if not is_language_model(spec):
        lms = [n for n in zoo.model_names() if zoo.model_info(n).role == LM_ROLE]
        raise InputError(
            f"--model {spec} is not a causal language model; give {' or '.join(lms)} or a folder holding a saved "
            "transformers causal LM (...ForCausalLM, GPT2LMHeadModel; model.save_pretrained) and its tokenizer"
        )
    if weights is not None:
        raise InputError(f"--weights does not apply to the causal language model {spec}; its weights come with it")
    dev = _device(device)
    if spec in zoo.model_names():
        with quiet_transformers():
            lm = zoo.load_language_model(spec)
        lm.module.to(dev)
        return lm
    return LanguageModel(load_hf_language_model(spec).to(dev))


def _check_zoo_classifier(name: str) -> None:
    """Raise :class:`InputError` when zoo model ``name`` is not a classifier (an encoder, a causal LM...)."""
    role = zoo.model_info(name).role
    if role != "classifier":
        classifiers = [n for n in zoo.model_names() if zoo.model_info(n).role == "classifier"]
        raise InputError(
            f"zoo model {name!r} is {_ROLE_NAMES.get(role, f'a {role}')}, not a classifier; "
            f"use a zoo classifier ({', '.join(classifiers)}) or a classifier of your own"
        )


def resolve_model(spec: str, weights: str | None, device: str = "cpu", head: str | None = None) -> Classifier:
    """A Classifier for a zoo name, ``file.py:factory`` (with ``weights``) or a saved ``transformers``
    model folder (:func:`load_hf_classifier`), on ``device``. A module with a ``tokenizer``
    attribute (a zoo text model, a model folder) is a text classifier. A zoo model that is not a
    classifier (an encoder, a causal LM, a denoiser) is refused before it is loaded. ``head`` names the
    head module (``--head``); None finds it by tracing."""
    if spec.endswith(".py") or ".py:" in spec:
        module: nn.Module = load_factory(spec)
        if weights is not None:
            load_weights(module, weights)
    elif spec not in zoo.model_names() and Path(spec).is_dir():
        if is_language_model(spec):
            raise InputError(
                f"--model {spec} is a causal language model, not a classifier; mlsafety audit and mlsafety interp "
                "take it, this command needs a classifier"
            )
        if weights is not None:
            raise InputError(f"--weights does not apply to a model folder ({spec}); its weights are in the folder")
        module = load_hf_image_classifier(spec) if is_image_model_folder(spec) else load_hf_classifier(spec)
    else:
        _check_zoo_classifier(spec)  # before anything is loaded
        if weights is not None:
            module = zoo.model_info(spec).build()
            load_weights(module, weights)
        else:
            module = zoo.load_model(spec)
    if head is not None and head not in dict(module.named_modules()):
        shown = [n for n, m in module.named_modules() if n and getattr(m, "weight", None) is not None][-4:]
        raise InputError(f"--head {head}: the model has no module of that name; its last layers with weights are "
                         f"{', '.join(shown) or 'none'}")  # fmt: skip
    return Classifier(module.to(_device(device)).eval(), head=head)


_ROLES = {
    "data": "--data {spec} (test data)",
    "val": "--val {spec} (validation data)",
    "train": "--train {spec} (training data)",
    "ood": "--ood {spec} (OOD set)",
}


def _load(
    spec: str,
    role: str,
    split: str,
    shape: tuple[int, int, int] | None,
    image_size: tuple[int, int] | None,
    channels: int,
    classes: list[str] | None = None,
) -> ArrayDataset:
    path = Path(spec)
    source = _ROLES[role].format(spec=spec)
    kind = "far" if role == "ood" else "in"
    if spec in zoo.dataset_names():
        if zoo_modality(spec) != "image":
            raise InputError(f"{source}: zoo dataset {spec!r} holds {zoo_modality(spec)} but the model takes images")
        try:
            zoo_set = zoo.load_dataset(spec, split=split, shape=shape if kind != "in" else None)
        except InputError as exc:  # e.g. a set that exists at one shape only: name the option it came from
            raise InputError(f"{source}: {exc}") from None
        return _with_source(zoo_set, source)
    if path.suffix == ".npz":
        ds = load_npz(path, kind=kind, source=source)
        if classes is not None and kind == "in":
            ds.classes, ds.classes_from = list(classes), "--classes"
        return ds
    if is_hf_dataset_folder(path):
        hf_size = image_size or (shape[1:] if shape else None)
        want = {"data": "test", "val": "validation", "train": "train"}.get(role)
        return load_hf_image_dataset(path, hf_size, channels, _pick_split(path, want), kind=kind, source=source,  # type: ignore[arg-type]
                                     classes=classes)  # fmt: skip
    if path.is_dir():
        size = image_size or (shape[1:] if shape else None)
        if size is None:
            raise InputError(f"image folder {source} needs --image-size H W")
        return load_image_folder(path, tuple(size), channels=channels, kind=kind, source=source, classes=classes)  # type: ignore[arg-type]
    if path.suffix or "/" in spec:
        raise InputError(
            f"{source}: not found or not supported (use a zoo name, an existing .npz file or an image folder)"
        )
    raise InputError(f"{source}: unknown zoo dataset {spec!r}; available: {', '.join(zoo.dataset_names())}")


def _pick_split(path: Path, want: str | None) -> str | None:
    """The split of a saved ``DatasetDict`` a role reads: ``want`` when it has it (``validation`` also as
    ``val`` / ``valid``), else None (the loader takes the only split or names the splits)."""
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    for name in (want, "val", "valid") if want == "validation" else (want,):
        if name in splits:
            return name
    return None


def _with_source(ds: ArrayDataset, source: str) -> ArrayDataset:
    return ArrayDataset(ds.x, ds.y, ds.name, ds.kind, ds.description, source)


OOD_GROUPS = ("near", "far")
"""The groups an OOD set is put in by ``--ood near:PATH`` / ``--ood far:PATH`` (``ood = ["near:PATH"]`` in
the config file); a user's set given without one is far, a zoo set keeps the zoo's group."""


def ood_group(spec: str) -> tuple[str, str | None]:
    """``(spec, group)``: an ``--ood`` value without its ``near:`` / ``far:`` prefix, and that group (None:
    no prefix given).

    Raises:
        InputError: a prefix with nothing after it, or a word prefix that is neither group (a typo such
            as ``naer:x.npz``) on a path that does not exist.
    """
    head, sep, rest = spec.partition(":")
    if sep and head in OOD_GROUPS:
        if not rest.strip():
            raise InputError(f"--ood {spec}: give the set after {head}:, e.g. --ood {head}:data/ood.npz")
        return rest, head
    if sep and len(head) > 1 and head.isalpha() and not Path(spec).exists():
        raise InputError(f"--ood {spec}: unknown group {head!r}; mark a set with near: or far:, e.g. --ood near:{rest}")
    return spec, None


def _in_group(ds: Any, group: str | None) -> Any:
    """``ds`` (an image or text dataset) in OOD group ``group`` (unchanged when None)."""
    if group is None or ds.kind == group:
        return ds
    return type(ds)(ds.x, ds.y, ds.name, group, ds.description, ds.source)


def zoo_modality(name: str) -> str:
    """``"image"`` or ``"text"``: what the zoo dataset ``name`` holds."""
    return zoo.dataset_info(name).modality


def data_spec(config: AuditConfig, model: Classifier | None = None) -> str:
    """``config.data``, or when it is None the zoo dataset a zoo model was trained on (``digits``
    for any other image model).

    Raises:
        InputError: a text model that is not in the zoo, given no ``--data``.
    """
    if config.data is not None:
        return config.data
    if config.model in zoo.model_names():
        return zoo.model_info(config.model).dataset
    if model is not None and modality_of(model) == "text":
        raise InputError(
            f"--model {config.model} is a text model outside the zoo: give its test data with --data "
            "(a .csv or .jsonl file, a folder saved by datasets.Dataset.save_to_disk, or a zoo text set such as mr)"
        )
    return "digits"


TEXT_FIT_SIZE = 1000
"""Texts of a zoo text set's training split the OOD detectors are fitted on by default: a seeded
sample, because every text costs a transformer pass and the text audit is meant to finish within
minutes on a CPU. ``--train`` fits them on every text of a file."""

_TEXT_FORMS = "a zoo text dataset, a .csv or .jsonl file, or a folder saved by datasets.Dataset.save_to_disk"


def _load_text(spec: str, role: str, split: str, config: AuditConfig, labelled: bool = True) -> TextDataset:
    """A text dataset from a zoo name, a CSV / JSONL file or a saved Hugging Face dataset folder
    (``labelled=False``: a file's labels are not read, each is -1)."""
    path = Path(spec)
    source = _ROLES[role].format(spec=spec)
    ood = role == "ood" or not labelled
    if spec in zoo.dataset_names():
        if zoo_modality(spec) != "text":
            raise InputError(f"{source}: zoo dataset {spec!r} holds images but the model takes text; "
                             f"give {_TEXT_FORMS}")  # fmt: skip
        ds = zoo.load_text_dataset(spec, split=split)
        return TextDataset(ds.x, ds.y, ds.name, ds.kind, ds.description, source)
    columns: dict[str, Any] = {
        "text": config.text_column, "label": None if ood else (config.label_column or "label"),
        "kind": "far" if role == "ood" else "in",
        "source": source, "options": {"text": "--text-column", "label": "--label-column"},
    }  # fmt: skip
    if path.suffix == ".csv" and path.is_file():
        ds = load_text_csv(path, **columns)
    elif path.suffix == ".jsonl" and path.is_file():
        ds = load_text_jsonl(path, **columns)
    elif path.is_dir():
        ds = load_hf_dataset(path, **columns)
    elif path.suffix or "/" in spec:
        raise InputError(f"{source}: not found or not supported (use {_TEXT_FORMS})")
    else:
        texts = [n for n in zoo.dataset_names() if zoo_modality(n) == "text"]
        raise InputError(f"{source}: unknown zoo dataset {spec!r}; zoo text datasets: {', '.join(texts) or 'none'}")
    return ds


_CLASSES = "class names (--classes, or classes in a --config file)"
"""How a refusal of ``classes`` names them: the one place they are refused where they would be ignored."""


def _resolve_text_data(config: AuditConfig, model: Classifier) -> AuditData:
    """:func:`resolve_data` for a text model: every source loaded; :func:`validate` then checks the labels
    against the model and probes it on each set (once, as for images)."""
    spec = data_spec(config, model)
    if config.classes is not None:  # else silently ignored (a saved HF dataset, audit-many's --config, a library call)
        raise InputError(
            f"{_CLASSES} name the labels of .npz files and image folders; text data keeps its labels as read, so "
            "they would be ignored; drop them"
        )
    is_zoo = spec in zoo.dataset_names()
    test = _load_text(spec, "data", "test", config)
    if is_zoo and test.kind != "in":
        raise InputError(f"{spec!r} is an OOD set; pass in-distribution data with --data")

    if config.val is not None:
        val = _load_text(config.val, "val", "val", config)
    elif is_zoo:
        val = _load_text(spec, "val", "val", config)
        val = TextDataset(val.x, val.y, val.name, val.kind, val.description,
                          f"the validation split of zoo data {spec!r}")  # fmt: skip
    else:
        if len(test) < 10:
            raise InputError(f"{test.source} has {len(test)} inputs; give at least 10, or pass --val")
        perm = torch.randperm(len(test), generator=generator(config.seed, "holdout-val"))
        cut = round(0.3 * len(test))
        val = test.subset(perm[:cut], name=f"{test.name}-val",
                          source=f"--data {spec} (the share of the test data held out for validation)")  # fmt: skip
        test = test.subset(perm[cut:])
    train = None
    if config.train is not None:
        train = _load_text(config.train, "train", "train", config)
    elif is_zoo and config.val is None:
        train = _load_text(spec, "train", "train", config)
        source = f"the training split of zoo data {spec!r}"
        if len(train) > TEXT_FIT_SIZE:
            keep = torch.randperm(len(train), generator=generator(config.seed, "text-fit"))[:TEXT_FIT_SIZE]
            source = f"a seeded sample of {TEXT_FIT_SIZE} texts of {source}"
            train = train.subset(keep.sort().values)
        train = TextDataset(train.x, train.y, train.name, train.kind, train.description, source)
    ood: dict[str, TextDataset] = {}
    for ood_spec in config.ood if config.ood is not None else zoo.ood_names("text"):
        ood_spec, group = ood_group(ood_spec)
        ds = _in_group(_load_text(ood_spec, "ood", "test", config), group)
        if ds.name in ood:
            raise InputError(f"two OOD sets are named {ds.name!r} ({ood[ds.name].source}, {ds.source}); rename one")
        ood[ds.name] = ds
    return AuditData(test=test, val=val, train=train, ood=ood)  # type: ignore[arg-type]


LM_DATA = "mr"
"""The zoo text set whose test reviews open the prompts of a language-model audit given no ``--data``."""
LM_PROMPT_WORDS = 8
"""Words of each review kept as a prompt (its opening); the review's sentiment label is kept with it."""


def review_openings(ds: TextDataset, words: int = LM_PROMPT_WORDS, source: str | None = None) -> TextDataset:
    """The first ``words`` words of every text of ``ds`` (labels kept): prompts for a language model."""
    texts = [" ".join(t.split()[:words]) for t in ds.x]
    return TextDataset(texts, ds.y, ds.name, ds.kind, f"openings ({words} words) of {ds.description or ds.name}",
                       source or ds.source)  # fmt: skip


def _empty_texts(what: str) -> TextDataset:
    return TextDataset([], None, name="none", source=f"no {what} (a language-model audit needs none)")


def resolve_lm_data(config: AuditConfig) -> AuditData:
    """The prompt set of a language-model audit: ``AuditData.test`` holds the prompts.

    Without ``--data`` they are the openings (:data:`LM_PROMPT_WORDS` words) of the test reviews of
    zoo set :data:`LM_DATA`, each with its review's sentiment label;
    ``--data mr`` gives the same openings. Another zoo text set given with ``--data`` is used whole;
    a CSV / JSONL file or a saved dataset folder gives its ``--text-column`` (labels read only when
    ``--label-column`` is given, even as ``label``; else -1). ``val`` is empty, ``train`` None and
    there are no OOD sets: no check on a language model reads them.

    Raises:
        InputError: image-only options, ``--val`` / ``--train`` / ``--ood`` (unused, they would only
            block ``--resume``), an unreadable or empty source.
    """
    for key in ("image_size", "channels"):
        if getattr(config, key) is not None:
            raise InputError(f"--{key.replace('_', '-')} sets how image folders are read, but the model is a "
                             "language model; drop it")  # fmt: skip
    if config.classes is not None:
        raise InputError(f"{_CLASSES} name the labels of .npz files and image folders, but the model is a language "
                         "model; drop them")  # fmt: skip
    for key, flag in (("val", "--val"), ("train", "--train"), ("ood", "--ood")):
        if getattr(config, key):
            raise InputError(f"{flag} does not apply to a language model (no check on one reads it); drop it")
    labelled = config.label_column is not None
    if config.data is None or config.data == LM_DATA:
        test = review_openings(_load_text(LM_DATA, "data", "test", config),
                               source=f"openings of the test reviews of zoo data {LM_DATA!r}")  # fmt: skip
    else:
        test = _load_text(config.data, "data", "test", config, labelled)
        if test.kind != "in":
            raise InputError(f"{config.data!r} is an OOD set; pass the prompts with --data")
    if len(test) == 0:
        raise InputError(f"{test.source} holds no prompts; give at least one text")
    return AuditData(test=test, val=_empty_texts("validation data"), train=None, ood={})  # type: ignore[arg-type]


def validate_lm(model: LanguageModel, data: AuditData) -> None:
    """Every prompt of every set fits the model's length, and the model returns finite logits on a
    probe of :data:`PROBE_INPUTS` prompts of each non-empty set (modes restored).

    Raises:
        InputError: naming the set, the prompt and the fix.
    """
    for ds in _sources(data):
        if not isinstance(ds, TextDataset):
            raise InputError(f"{ds.source} holds images but a language model takes text; give text")
        if len(ds) == 0:
            continue
        batch = encode(model.tokenizer, ds.x, model.max_length, "right")
        if bool(batch.truncated.any()):
            i = int(batch.truncated.nonzero()[0])
            raise InputError(
                f"text {i} of {ds.source} is longer than the model's {model.max_length} tokens; shorten the prompts"
            )
        idx = torch.linspace(0, len(ds) - 1, min(PROBE_INPUTS, len(ds))).round().long().unique()
        try:
            logits, _ = model.run_with_cache(list(ds.x[idx]), [])
        except MlsafetyError:
            raise
        except Exception as exc:  # the user's model: any failure becomes one line
            msg = " ".join(str(exc).split())
            raise InputError(
                f"the language model failed on {len(idx)} prompts of {ds.source}: {type(exc).__name__}: {msg}; "
                "give the tokenizer the model was trained with"
            ) from None
        if not bool(torch.isfinite(logits).all()):
            raise InputError(
                f"the language model returned NaN or infinite logits on prompts of {ds.source}; fix its weights "
                "before auditing it"
            )


PROBE_PROMPTS = ("The movie was", "I did not expect")
"""The two texts each ``--reward`` / ``--gold`` scorer is tried on before anything is stored."""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def load_scorer(spec: str, flag: str = "--reward") -> Scorer:
    """The scorer that factory ``path/to/file.py:factory`` returns, tried on :data:`PROBE_PROMPTS`.

    The factory is called without arguments and returns a callable (a function, or a module whose
    forward takes texts) mapping a sequence of N strings to a float tensor (N,).

    Raises:
        InputError: naming ``flag``, the file, what came back and the fix: a malformed spec, a
            missing file or function, an exception in the file or the factory, a result that is not
            callable, a probe that fails or returns anything but finite floats of shape (2,).
    """
    try:
        scorer = call_factory(spec, flag, "scorer")
    except InputError as exc:
        raise InputError(f"{flag} {spec}: {exc}") from None
    if not callable(scorer):
        raise InputError(
            f"{flag} {spec} returned {type(scorer).__name__}, not a callable; return scorer(texts) -> Tensor (N,)"
        )
    try:
        out = scorer(list(PROBE_PROMPTS))
    except (Exception, SystemExit) as exc:  # the user's code
        raise InputError(
            f"{flag} {spec}: the scorer failed on 2 probe texts with {_one_line(exc)}; it must take a list of str"
        ) from None
    got = f"a tensor of shape {tuple(out.shape)} and dtype {out.dtype}" if isinstance(out, torch.Tensor) else (
        type(out).__name__)  # fmt: skip
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,) or not out.dtype.is_floating_point:
        raise InputError(
            f"{flag} {spec}: the scorer returned {got} for 2 texts; return a float tensor of shape (N,), one reward "
            "per text"
        )
    if not bool(torch.isfinite(out).all()):
        raise InputError(f"{flag} {spec}: the scorer returned non-finite rewards {out.tolist()} for 2 texts; "
                         "return finite floats")  # fmt: skip
    return scorer  # type: ignore[no-any-return]


def resolve_scorers(config: AuditConfig, is_lm: bool) -> tuple[Scorer | None, Scorer | None]:
    """``(reward, gold)`` from ``config.reward`` / ``config.gold`` (each :func:`load_scorer`), or (None, None).

    Raises:
        InputError: one given without the other, either given for a model that is not a causal
            language model, a scorer that fails its probe, or a pair that breaks
            :func:`~mlsafety.monitoring.proxy_gaming.scorers.check_scorers` (e.g. different
            ``input_type``).
    """
    if config.reward is None and config.gold is None:
        return None, None
    if not is_lm:
        given = "--reward" if config.reward is not None else "--gold"
        raise InputError(f"{given} applies to a causal language model (e.g. smollm2-135m); --model {config.model} "
                         "is a classifier: drop it")  # fmt: skip
    if config.reward is None or config.gold is None:
        missing = "--gold" if config.reward is not None else "--reward"
        raise InputError(
            f"{missing} is missing: proxy gaming compares the proxy reward (--reward FILE.py:factory) with a gold "
            "reward (--gold FILE.py:factory); give both or neither"
        )
    reward, gold = load_scorer(config.reward, "--reward"), load_scorer(config.gold, "--gold")
    check_scorers({"proxy": reward, "gold": gold}, list(PROBE_PROMPTS))  # e.g. different input types
    return reward, gold


def _is_folder(spec: str) -> bool:
    return spec not in zoo.dataset_names() and Path(spec).is_dir()


def _run_model(model: Classifier, x: torch.Tensor) -> Any:
    """The model's logits for ``x`` (any output form, :func:`~mlsafety.core.unwrap_logits`), frozen, no gradients."""
    with frozen(model.module), torch.inference_mode():
        return unwrap_logits(model.module(x.to(model.device)))


def model_channels(model: Classifier, size: tuple[int, int], prefer: int = 3) -> int | None:
    """The channel count (``prefer`` first, then 1 and 3) the model accepts at image size ``size``.

    Found by a probe pass on two constant images per candidate in eval mode without gradients;
    None when the model takes none of them (the probe of real inputs then says why).
    """
    for c in dict.fromkeys((prefer, 1, 3)):
        try:
            out = _run_model(model, torch.full((2, c, *size), 0.5))
        except Exception:  # the user's model rejecting this shape is the answer
            continue
        if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 2:
            return c
    return None


def _run_text(model: Classifier, texts: Texts) -> torch.Tensor:
    with frozen(model.module), torch.inference_mode():
        return model.logits(texts)


def probe_model(model: Classifier, ds: ArrayDataset | TextDataset, num_classes: int | None = None) -> int:
    """Run the model on a few real inputs of ``ds``; return K, the number of logits.

    Up to :data:`PROBE_INPUTS` inputs spread over the set go through the model in eval mode (its
    modes are restored); texts through the model's tokenizer. The output must be one logits tensor
    (N, K) with K >= 2 (K equal to ``num_classes`` when given) and finite values.

    Raises:
        InputError: naming ``ds.source``, what the model returned and the fix.
    """
    n = min(PROBE_INPUTS, len(ds))
    idx = torch.linspace(0, len(ds) - 1, n).round().long().unique()
    if isinstance(ds, TextDataset):
        try:
            out = _run_text(model, ds.x[idx])
        except MlsafetyError:
            raise
        except Exception as exc:  # the user's model: any failure becomes one line
            msg = " ".join(str(exc).split())
            raise InputError(
                f"the model failed on {len(idx)} texts of {ds.source}: {type(exc).__name__}: {msg}; "
                "give the tokenizer the model was trained with"
            ) from None
        return _check_logits(out, len(idx), ds.source, num_classes)
    x = ds.x[idx]
    shape = tuple(int(s) for s in x.shape[1:])
    try:
        out = _run_model(model, x)
    except Exception as exc:  # the user's model: any failure becomes one line
        c = int(x.shape[1])
        takes = model_channels(model, (shape[1], shape[2]), prefer=c)
        if takes is not None and takes != c:
            fix = "convert them to grayscale" if takes == 1 else f"give {takes}-channel images"
            raise InputError(
                f"inputs of {ds.source} have {c} channel{'s' if c != 1 else ''} but the model takes {takes}; "
                f"{fix} (shape (N, {takes}, H, W))"
            ) from None
        msg = " ".join(str(exc).split())
        raise InputError(
            f"the model failed on {len(idx)} inputs of {ds.source} of shape {shape}: {type(exc).__name__}: {msg}; "
            "give inputs of the shape the model takes (see --image-size, --channels)"
        ) from None
    k = _check_logits(out, len(idx), ds.source, num_classes)
    if model.head_info is None:  # find the head (and so the features) on these inputs: one more small pass
        model.trace(x.to(model.device))
    return k


def _check_logits(out: Any, n: int, source: str, num_classes: int | None) -> int:
    """K, after checking that ``out`` is finite logits (n, K), K >= 2 (= ``num_classes`` when given)."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"model output must be logits of shape (N, K), got {got} for {n} inputs of {source}; "
            "wrap the model so forward() returns one logits tensor"
        )
    k = int(out.shape[1])
    if k < 2:
        raise InputError(
            f"the model returns {k} logit{'s' if k != 1 else ''} per input; a classifier needs K >= 2 "
            "(one logit per class; for a binary model return two logits, e.g. torch.cat([-z, z], dim=1))"
        )
    if num_classes is not None and k != num_classes:
        raise InputError(
            f"the model returned {k} logits for {source} but {num_classes} for the test data; "
            "return one logit per class for every input"
        )
    bad = ~torch.isfinite(out).all(dim=1)
    if bad.any():
        raise InputError(
            f"the model returned NaN or infinite logits for {int(bad.sum())} of {n} probe inputs of "
            f"{source}; fix the model (look for NaN weights, division by zero, log of 0) before auditing it"
        )
    return k


def resolve_data(config: AuditConfig, model: Classifier | None = None) -> AuditData:
    """Load and hold out the audit's data; raise :class:`InputError` on anything unusable.

    With ``model``, image folders are converted to the model's channel count (``config.channels``,
    else found by a probe pass), and each source is validated as it is loaded (the test data
    before the validation share is held out of it), so every message names the file it is about.
    Without it, folders are read as RGB (or as ``config.channels``) and :func:`validate` checks
    the rest.
    """
    if model is not None and modality_of(model) == "text":
        for key in ("image_size", "channels"):
            if getattr(config, key) is not None:
                raise InputError(
                    f"--{key.replace('_', '-')} sets how image folders are read, but the model takes text; drop it"
                )
        return _resolve_text_data(config, model)
    defaults = AuditConfig()
    for key in ("text_column", "label_column"):
        if getattr(config, key) != getattr(defaults, key):
            raise InputError(
                f"--{key.replace('_', '-')} names a column of text data, but the model takes images; drop it"
            )
    spec = data_spec(config, model)
    channels = config.channels
    if channels is None and model is not None and _is_folder(spec) and config.image_size is not None:
        channels = model_channels(model, tuple(config.image_size))  # type: ignore[arg-type]
    if config.classes is not None and spec in zoo.dataset_names():  # a zoo set keeps its own labels
        raise InputError(
            f"{_CLASSES} name the labels of .npz files and image folders; zoo data {spec!r} keeps its own, so "
            "they would be ignored; drop them"
        )
    test = _load(spec, "data", "test", None, config.image_size, channels or 3, config.classes)
    if spec in zoo.dataset_names() and test.kind != "in":
        raise InputError(f"{spec!r} is an OOD set; pass in-distribution data with --data")
    if channels is None and model is not None:
        channels = model_channels(model, (int(test.x.shape[2]), int(test.x.shape[3])), prefer=int(test.x.shape[1]))
    folder_channels = channels or int(test.x.shape[1])
    shape = tuple(int(s) for s in test.x.shape[1:])
    k = None
    if model is not None:
        validate_dataset(test, None, config.channels, _ASKED)
        k = probe_model(model, test)
        validate_dataset(test, k, channels)
        _check_classes(test, k)

    def load_checked(spec: str, role: str, split: str, shape_hint: tuple[int, int, int] | None) -> ArrayDataset:
        ds = _load(spec, role, split, shape_hint, config.image_size, folder_channels, config.classes)
        if model is not None:
            validate_dataset(ds, k, channels)
        if ds.kind == "in" and k is not None:
            _check_classes(ds, k, test)
        return ds

    if config.val is not None:
        val = load_checked(config.val, "val", "val", None)
    elif spec in zoo.dataset_names():
        val = _with_source(zoo.load_dataset(spec, "val"), f"the validation split of zoo data {spec!r}")
    else:
        if len(test) < 10:
            raise InputError(f"{test.source} has {len(test)} inputs; give at least 10, or pass --val")
        perm = torch.randperm(len(test), generator=generator(config.seed, "holdout-val"))
        cut = round(0.3 * len(test))
        val = test.subset(
            perm[:cut],
            name=f"{test.name}-val",
            source=f"--data {spec} (the share of the test data held out for validation)",
        )
        test = test.subset(perm[cut:])
    train = None
    if config.train is not None:
        train = load_checked(config.train, "train", "train", None)
    elif spec in zoo.dataset_names() and config.val is None:
        train = _with_source(zoo.load_dataset(spec, "train"), f"the training split of zoo data {spec!r}")
    ood_specs = config.ood if config.ood is not None else zoo.ood_names("image", spec)
    ood: dict[str, ArrayDataset] = {}
    for spec in ood_specs:
        spec, group = ood_group(spec)
        ds = _in_group(load_checked(spec, "ood", "test", shape), group)  # type: ignore[arg-type]
        if ds.name in ood:
            raise InputError(f"two OOD sets are named {ds.name!r} ({ood[ds.name].source}, {ds.source}); rename one")
        ood[ds.name] = ds
    return AuditData(test=test, val=val, train=train, ood=ood)


def _check_classes(ds: ArrayDataset, k: int, test: ArrayDataset | None = None) -> None:
    """The class names of ``ds`` (when it has them) number the model's K outputs, and agree with the test data's.

    Raises:
        InputError: a list of another length than K; a validation or training set whose class order differs
            from the test data's (its labels would mean other classes).
    """
    if ds.classes is None:
        return
    alphabetical = ds.classes_from.startswith("folder names")  # a test folder may hold only some classes
    if len(ds.classes) > k or (len(ds.classes) != k and not alphabetical):
        raise InputError(
            f"{ds.source}: the class list ({ds.classes_from}) names {len(ds.classes)} classes but the model returns "
            f"{k} logits; give --classes with one name per output, in the model's order"
        )
    if test is not None and test.classes is not None and ds.classes != test.classes and not alphabetical:
        raise InputError(
            f"{ds.source} orders its classes {', '.join(ds.classes)} ({ds.classes_from}) but the test data "
            f"{', '.join(test.classes)} ({test.classes_from}); give both the same order (--classes a,b,c)"
        )


GAP_INPUTS = 256
"""Inputs of the validation and of the test data (a seeded sample) whose accuracies :func:`accuracy_gap` compares."""
GAP_MIN = 0.2
"""How far (at least) test accuracy must fall below validation accuracy for :func:`accuracy_gap` to warn."""


@dataclass(frozen=True)
class AccuracyGap:
    """Validation and test accuracy on samples of each, when the two come from different sources."""

    val_accuracy: float
    test_accuracy: float
    n_val: int
    n_test: int
    val_source: str
    test_source: str

    @property
    def far_below(self) -> bool:
        """Test accuracy is at least :data:`GAP_MIN` below validation accuracy, and by more than three
        standard errors of the difference (a mislabelled or reordered test set, not chance)."""
        a, b = self.val_accuracy, self.test_accuracy
        se = math.sqrt(max(a * (1 - a), 1e-4) / self.n_val + max(b * (1 - b), 1e-4) / self.n_test)
        return a - b >= GAP_MIN and a - b > 3 * se

    def warning(self) -> str:
        return (
            f"test accuracy {self.test_accuracy:.3f} (n={self.n_test}) is far below validation accuracy "
            f"{self.val_accuracy:.3f} (n={self.n_val}), and they come from different sources ({self.test_source}; "
            f"{self.val_source}): check that both number the classes in the model's order (--classes a,b,c)"
        )


def accuracy_gap(model: Classifier, data: AuditData, seed: int = 0) -> AccuracyGap | None:
    """Accuracy on up to :data:`GAP_INPUTS` validation and test inputs, when the validation data does not come
    from the test data (``--val`` given, or a zoo split); None otherwise or for non-image data."""
    test, val = data.test, data.val
    if isinstance(test, TextDataset) or isinstance(val, TextDataset) or len(val) == 0 or len(test) == 0:
        return None
    if "held out for validation" in val.source:
        return None

    def accuracy(ds: ArrayDataset, role: str) -> tuple[float, int]:
        idx = torch.randperm(len(ds), generator=generator(seed, "accuracy-gap", role))[:GAP_INPUTS]
        logits = forward(model, ds.x[idx], features=False).logits
        return float((logits.argmax(dim=1).cpu() == ds.y[idx]).float().mean()), int(idx.numel())

    (va, nv), (ta, nt) = accuracy(val, "val"), accuracy(test, "test")
    return AccuracyGap(va, ta, nv, nt, val.source, test.source)


def input_notes(model: Classifier | LanguageModel, data: AuditData, seed: int = 0) -> list[dict[str, Any]]:
    """What the audit decided about the model and data before the first check, for the run record (``notes``),
    the summary and the report: the head / features layer chosen (``kind`` ``head``: the layer's name, width and
    how it was found), the class mapping used (``classes``: the names in label order and where the order came
    from), each source converted on loading (``data``: a channels-last ``.npz``) and validation against test
    accuracy when they come from different sources (``accuracy-gap``; ``warning`` True when test accuracy is
    far below, see :class:`AccuracyGap`). Each note has ``kind``, ``label``, ``text`` and ``warning``."""
    notes: list[dict[str, Any]] = []
    if not isinstance(model, Classifier) or isinstance(data.test, TextDataset):
        return notes
    info = model.head_info
    if info is not None:
        notes.append({"kind": "head", "label": "Head (features layer)", "text": info.describe(), "warning": False,
                      "head": info.name, "layer": info.kind, "feature_dim": info.feature_dim, "how": info.how,
                      "pooled": info.pooled, "affine": info.affine})  # fmt: skip
    classes = data.test.classes
    if classes is not None:
        text = ", ".join(f"{i}={c}" for i, c in enumerate(classes)) + f" (from {data.test.classes_from})"
        notes.append({"kind": "classes", "label": "Class mapping used", "text": text, "warning": False,
                      "classes": list(classes), "source": data.test.classes_from})  # fmt: skip
    for ds in _sources(data):
        if "converted from channels-last" in ds.description:
            notes.append({"kind": "data", "label": "Note", "text": f"{ds.source}: {ds.description}",
                          "warning": False})  # fmt: skip
    gap = accuracy_gap(model, data, seed)
    if gap is not None:
        text = gap.warning() if gap.far_below else (
            f"test accuracy {gap.test_accuracy:.3f} (n={gap.n_test}), validation accuracy {gap.val_accuracy:.3f} "
            f"(n={gap.n_val})")  # fmt: skip
        notes.append({"kind": "accuracy-gap", "label": "Warning" if gap.far_below else "Validation and test",
                      "text": text, "warning": gap.far_below, "val_accuracy": round(gap.val_accuracy, 4),
                      "test_accuracy": round(gap.test_accuracy, 4), "n_val": gap.n_val,
                      "n_test": gap.n_test})  # fmt: skip
    return notes


def _sources(data: AuditData) -> list[Any]:
    sets = [data.test, data.val]
    if data.train is not None:
        sets.append(data.train)
    return sets + list(data.ood.values())


def validate(model: Classifier, data: AuditData, channels: int | None = None) -> None:
    """Check every data source and the model's outputs on each before anything is stored.

    Every source's inputs must be finite floats in [0, 1] of one shape (``channels`` channels
    when given), the model must return finite logits (N, K), K >= 2, on a probe batch of each
    source (:func:`probe_model`), and labels of in-distribution data must be integers in [0, K).
    Messages name the source (``--data x.npz (test data)``...).

    Raises:
        InputError: the first problem found, in one line with its fix.
    """
    sets = _sources(data)
    first = data.test
    if isinstance(first, TextDataset):
        k = probe_model(model, first)
        for ds in sets:
            if not isinstance(ds, TextDataset):
                raise InputError(f"{ds.source} holds images but the test data is text; give text for every data set")
            validate_text_dataset(ds, k)
            probe_model(model, ds, k)
        return
    validate_dataset(first, None, channels, _ASKED)
    k = probe_model(model, first)
    takes = int(first.x.shape[1])  # the probe passed: the model takes the test data's channels
    for ds in sets[1:]:
        validate_dataset(ds, None, takes)
        if ds.x.shape[1:] != first.x.shape[1:]:
            raise InputError(
                f"inputs of {ds.source} have shape {tuple(ds.x.shape[1:])} but the test data has "
                f"{tuple(first.x.shape[1:])}; give every data set one image shape (C, H, W)"
            )
        probe_model(model, ds, k)
    for ds in sets:
        validate_dataset(ds, k, takes)


def prepare_inputs(config: AuditConfig, checks: Sequence[Check] | None = None) -> tuple[Classifier, AuditData]:
    """Everything an audit takes from the user, checked: settings, gates, model, data.

    The one call the engine makes before it creates a run: :func:`validate_config`,
    :func:`resolve_model`, :func:`resolve_data` (with the model, so folders get its channels)
    and :func:`validate`. Any problem raises :class:`InputError` before anything is stored.
    ``config.data`` is set to the data's name when it was None (:func:`data_spec`).
    """
    validate_config(config, checks)
    if is_language_model(config.model):
        raise InputError(
            f"--model {config.model} is a causal language model; this command needs a classifier "
            "(mlsafety audit and mlsafety interp take language models)"
        )
    if config.reward is not None or config.gold is not None:
        resolve_scorers(config, False)  # refused: a classifier takes no reward
    model = resolve_model(config.model, config.weights, config.device, config.head)
    config.data = data_spec(config, model)  # None: the model's zoo data (the run records the name)
    data = resolve_data(config, model)
    validate(model, data, config.channels)
    return model, data


@dataclass
class AuditInputs:
    """What :func:`prepare_audit_inputs` checked: the model (a :class:`~mlsafety.core.Classifier`, or a
    :class:`~mlsafety.core.LanguageModel` for a causal LM), its data and the proxy / gold rewards
    (None unless given, language models only)."""

    model: Classifier | LanguageModel
    data: AuditData
    reward: Scorer | None = None
    gold: Scorer | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)
    """What :func:`input_notes` decided (head, class mapping, conversions, accuracy gap), for the run record."""


def prepare_audit_inputs(config: AuditConfig, checks: Sequence[Check] | None = None) -> AuditInputs:
    """:func:`prepare_inputs`, also taking a causal language model (:func:`is_language_model`).

    For a language model: :func:`resolve_language_model`, :func:`resolve_lm_data`, :func:`validate_lm`
    and the rewards (:func:`resolve_scorers`); ``config.data`` is set to :data:`LM_DATA` when None.
    Any problem raises :class:`InputError` before anything is stored.
    """
    if not is_language_model(config.model):
        model, data = prepare_inputs(config, checks)
        return AuditInputs(model, data, notes=input_notes(model, data, config.seed))
    validate_config(config, checks)
    if (config.reward is None) != (config.gold is None):
        resolve_scorers(config, True)  # one without the other: refused before the model loads
    lm = resolve_language_model(config.model, config.weights, config.device)
    data = resolve_lm_data(config)
    config.data = config.data or LM_DATA
    validate_lm(lm, data)
    reward, gold = resolve_scorers(config, True)
    if reward is not None and len(data.test) < 2:
        raise InputError(f"{data.test.source} holds {len(data.test)} prompt; proxy gaming (--reward / --gold) "
                         "needs at least 2 (its intervals are over prompts)")  # fmt: skip
    return AuditInputs(lm, data, reward, gold)
