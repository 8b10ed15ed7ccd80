"""Core: the model adapter, datasets, seeded generators, device handling, loaders and errors."""

from mlsafety.core._batches import DataLike, as_array_dataset, iter_batches
from mlsafety.core._data import (
    ArrayDataset,
    check_images,
    check_label_form,
    check_labels,
    is_hf_dataset_folder,
    load_hf_image_dataset,
    load_image_folder,
    load_npz,
    read_class_file,
    validate_dataset,
)
from mlsafety.core._errors import InputError, MlsafetyError, NotFittedError, UnknownNameError
from mlsafety.core._forward import Outputs, forward
from mlsafety.core._hazard import Hazard
from mlsafety.core._hookpoints import HookFn, HookPoints, HookTable
from mlsafety.core._lm import LanguageModel
from mlsafety.core._loading import (
    ImagePreprocess,
    PreprocessedModel,
    call_factory,
    load_factory,
    load_weights,
    read_state_dict,
)
from mlsafety.core._model import (
    Classifier,
    HeadInfo,
    ModelLike,
    Normalize,
    as_classifier,
    device_of,
    frozen,
    pool_features,
    unwrap_logits,
)
from mlsafety.core._outliers import permute_noise_mosaic_outliers, transform_mix_outliers, word_shuffle_outliers
from mlsafety.core._params import HyperParams, Param, check_is_fitted
from mlsafety.core._paths import check_output_path
from mlsafety.core._progress import Progress, track
from mlsafety.core._random import derive_seed, draw_seed, generator, rand_like, randn_like
from mlsafety.core._registry import Registry
from mlsafety.core._text import TextBatch, TextDataset, Texts, encode, modality_of
from mlsafety.core._textdata import load_hf_dataset, load_text_csv, load_text_jsonl, validate_text_dataset
from mlsafety.core._train import (
    BatchHook,
    LossFn,
    TrainConfig,
    cross_entropy_loss,
    random_shift,
    register_recipe,
    seeded_init,
    train,
    training_recipe,
)

__all__ = [
    "ArrayDataset",
    "BatchHook",
    "Classifier",
    "DataLike",
    "Hazard",
    "HeadInfo",
    "HookFn",
    "HookPoints",
    "HookTable",
    "HyperParams",
    "ImagePreprocess",
    "InputError",
    "LanguageModel",
    "LossFn",
    "MlsafetyError",
    "ModelLike",
    "Normalize",
    "NotFittedError",
    "Outputs",
    "Param",
    "PreprocessedModel",
    "Progress",
    "Registry",
    "TextBatch",
    "TextDataset",
    "Texts",
    "TrainConfig",
    "UnknownNameError",
    "as_array_dataset",
    "as_classifier",
    "call_factory",
    "check_images",
    "check_is_fitted",
    "check_label_form",
    "check_labels",
    "check_output_path",
    "cross_entropy_loss",
    "derive_seed",
    "device_of",
    "draw_seed",
    "encode",
    "forward",
    "frozen",
    "generator",
    "is_hf_dataset_folder",
    "iter_batches",
    "load_factory",
    "load_hf_dataset",
    "load_hf_image_dataset",
    "load_image_folder",
    "load_npz",
    "load_text_csv",
    "load_text_jsonl",
    "load_weights",
    "modality_of",
    "permute_noise_mosaic_outliers",
    "pool_features",
    "rand_like",
    "randn_like",
    "random_shift",
    "read_class_file",
    "read_state_dict",
    "register_recipe",
    "seeded_init",
    "track",
    "train",
    "training_recipe",
    "transform_mix_outliers",
    "unwrap_logits",
    "validate_dataset",
    "validate_text_dataset",
    "word_shuffle_outliers",
]
