"""minilm-mr: the sentence classifier's wiring on a tiny random BERT, its recipe, and the shipped model."""

from __future__ import annotations

import pytest
import torch

from mlsafety import zoo
from mlsafety.core import Classifier, TrainConfig, encode
from mlsafety.zoo._minilm_mr import (
    NAME,
    SentenceClassifier,
    TopLayers,
    fit_top_layers,
    lower_hidden_states,
    mean_pool,
    pack,
    packed_loss,
    seeded_head,
)
from mlsafety.zoo._text import SentenceEncoder
from tests.support.text import tiny_bert_classifier, tiny_text_dataset

SENTENCES = ["a good film", "the movie was really very bad and sad", "love it"]


def tiny_model(seed: int = 0, attention: str = "eager") -> SentenceClassifier:
    """A SentenceClassifier over a random two-layer BERT (hidden 32), eval mode."""
    hf = tiny_bert_classifier(seed=seed)
    hf.set_attn_implementation(attention)
    torch.manual_seed(seed)
    return SentenceClassifier(SentenceEncoder(hf.bert, hf.tokenizer)).eval()


def test_logits_shape_and_the_classifier_adapter_finds_head_and_tokenizer():
    model = tiny_model()
    batch = encode(model.tokenizer, SENTENCES)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert logits.shape == (3, 2)
    clf = Classifier(model)
    assert clf.modality == "text"
    feats, out = clf.features_and_logits(SENTENCES)
    torch.testing.assert_close(out, logits)
    assert feats.shape == (3, 32)
    torch.testing.assert_close(model.fc(feats), logits)


def test_inputs_embeds_path_equals_ids_path_and_carries_gradients():
    model = tiny_model()
    batch = encode(model.tokenizer, SENTENCES)
    from_ids = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    emb = model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
    from_embeds = model(inputs_embeds=emb, attention_mask=batch.attention_mask)
    torch.testing.assert_close(from_embeds, from_ids)
    from_embeds[:, 1].sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_mean_pooling_ignores_padding():
    """Right padding (BERT's absolute positions count from the first token, so it pads on the right)."""
    model = tiny_model()
    alone = torch.cat([model(**_ids(model, [s])) for s in SENTENCES])
    padded = model(**_ids(model, SENTENCES))
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))


def _ids(model: SentenceClassifier, texts: list[str]) -> dict[str, torch.Tensor]:
    batch = encode(model.tokenizer, texts)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}


@pytest.mark.parametrize(("k", "attention"), [(0, "eager"), (1, "eager"), (2, "eager"), (1, "sdpa")])
def test_top_layers_on_lower_hidden_states_give_the_whole_models_logits(k, attention):
    """The training path (hidden states computed once, then the top k layers) is the deployed path
    (with either attention kernel: the real MiniLM runs SDPA, the tiny one eager)."""
    model = tiny_model(attention=attention)
    x = lower_hidden_states(model, SENTENCES, k=k)
    assert x.shape[0] == 3 and x.shape[-1] == 33
    mask = x[..., -1].long()
    with torch.no_grad():
        top = TopLayers.of(model, k)(x[..., :-1], mask)
        whole = model(**_ids(model, SENTENCES))
    torch.testing.assert_close(top, whole, atol=1e-5, rtol=1e-5)
    keys = set(TopLayers.of(model, k).state_dict())
    assert {"fc.weight", "fc.bias"} <= keys
    assert {key.split(".")[1] for key in keys if key.startswith("layers.")} == {str(i) for i in range(k)}


def test_packed_loss_cuts_padding_columns_without_changing_the_loss():
    model = tiny_model()
    x = lower_hidden_states(model, SENTENCES)
    y = torch.tensor([1, 0, 1])
    top = TopLayers.of(model)
    wide = torch.cat([x, torch.zeros(3, 5, x.shape[-1])], dim=1)  # five more padding columns
    g = torch.Generator()
    torch.testing.assert_close(packed_loss(top, wide, y, g), packed_loss(top, x, y, g))
    torch.testing.assert_close(pack(x[..., :-1], x[..., -1]), x)


def _fit(seed: int) -> dict[str, torch.Tensor]:
    model = tiny_model(seed=1)
    data = tiny_text_dataset(n=48, seed=0)
    config = TrainConfig(epochs=4, lr=1e-2, batch_size=16, weight_decay=0.0, seed=seed, stream=("test",))
    top = fit_top_layers(model, data, config)
    return {k: v.clone() for k, v in top.state_dict().items()}


def test_recipe_is_deterministic_learns_and_trains_only_the_top_layer():
    first, again, other = _fit(0), _fit(0), _fit(1)
    for key in first:
        torch.testing.assert_close(first[key], again[key], atol=0, rtol=0)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    fresh = tiny_model(seed=1)
    model = tiny_model(seed=1)
    data = tiny_text_dataset(n=48, seed=0)
    config = TrainConfig(epochs=15, lr=1e-2, batch_size=16, weight_decay=0.0, stream=("test",))
    fit_top_layers(model, data, config)
    assert not model.training
    lower = model.encoder.bert.encoder.layer[0].state_dict()  # frozen: the lower layer is untouched
    for key, value in fresh.encoder.bert.encoder.layer[0].state_dict().items():
        assert torch.equal(lower[key], value), key
    assert not torch.equal(
        model.encoder.bert.encoder.layer[1].output.dense.weight, fresh.encoder.bert.encoder.layer[1].output.dense.weight
    )
    accuracy = (Classifier(model).logits(data.texts).argmax(1) == data.y).float().mean().item()
    assert accuracy >= 0.9


def test_the_recipes_head_depends_on_its_seed_only_and_the_encoder_is_kept():
    """The recipe's starting point is a function of its seed, whatever the global generator's state."""
    model = tiny_model()
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    first = seeded_head(model, 0).fc.weight.clone()
    torch.manual_seed(123)
    torch.rand(7)
    again = seeded_head(tiny_model(), 0).fc.weight.clone()
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert not torch.equal(seeded_head(tiny_model(), 1).fc.weight, first)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder[key]), key


def test_the_zoo_lists_minilm_mr_with_its_recipe():
    info = zoo.model_info(NAME)
    assert info.recipe == NAME and info.dataset == "mr" and info.modality == "text" and info.load is not None
    from mlsafety.core import training_recipe

    assert callable(training_recipe(NAME))


@pytest.mark.slow
def test_shipped_minilm_mr_is_accurate_and_ships_only_the_trained_part():
    from safetensors.torch import load_file

    shipped = load_file(str(zoo.weights_path(NAME)))
    assert {k.split(".")[0] for k in shipped} == {"layers", "fc"}
    model = zoo.load_model(NAME)
    assert not model.training and model.tokenizer is not None
    test = zoo.load_dataset("mr", "test")
    part = test.subset(torch.arange(300))
    logits = Classifier(model).logits(part.texts)
    assert logits.shape == (300, 2)
    accuracy = (logits.argmax(1) == part.y).float().mean().item()
    assert accuracy >= 0.75
