"""A2T-style adversarial training for text: the cheap attack's search and the before/after row."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlsafety.core import Classifier, InputError, TextDataset, TrainConfig
from mlsafety.robustness.text import Attack, AttackedText, Constraint, Transformation, Untargeted
from mlsafety.robustness.text._train import (
    GradientImportanceSearch,
    adversarial_train_text,
    evaluate_robust_training,
)
from tests.support.linear_text import MeanEmbeddingClassifier
from tests.support.text import (
    NEGATIVE_WORDS,
    NEUTRAL_WORDS,
    POSITIVE_WORDS,
    VOCAB,
    tiny_bert_classifier,
    tiny_sentences,
    tiny_tokenizer,
)

SENTIMENT = set(POSITIVE_WORDS + NEGATIVE_WORDS)


class _Neutral(Transformation):
    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        return NEUTRAL_WORDS[:40]


class _KeepSentiment(Constraint):
    """Sentiment words (which carry the label) and changed words stay; at most two words change."""

    def modifiable(self, text: AttackedText, indices: set[int]) -> set[int]:
        return {i for i in indices if text.original_words[i] not in SENTIMENT and i not in text.modified}

    def allows(self, original: AttackedText, candidates: list[AttackedText]) -> list[bool]:  # type: ignore[override]
        return [len(c.changed) <= 2 for c in candidates]


def _attack(model: torch.nn.Module, budget: int = 30) -> Attack:
    return Attack(model, Untargeted(), _Neutral(), [_KeepSentiment()], GradientImportanceSearch(), query_budget=budget)


def _fresh(seed: int = 0) -> MeanEmbeddingClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MeanEmbeddingClassifier(len(VOCAB), 16)
    model.tokenizer = tiny_tokenizer("cls")
    return model


def test_gradient_importance_order_is_the_gradient_norm_order() -> None:
    """Words are tried in the order of the L1 norm of the loss gradient at their embeddings (by hand here)."""
    model = tiny_bert_classifier(seed=3)
    text = "the film was good and the day was fine"
    clf = Classifier(model)
    batch = clf.encode([text])
    emb = clf.embeddings(batch).detach().requires_grad_(True)
    label = int(clf.logits([text]).argmax())
    loss = F.cross_entropy(clf.logits_from_embeddings(emb, batch.attention_mask), torch.tensor([label]))
    (grad,) = torch.autograd.grad(loss, emb)
    norms = grad[0].abs().sum(dim=-1)[1:-1]  # one token per word between [CLS] and [SEP]
    expected = norms.argsort(descending=True).tolist()

    asked: list[int] = []

    class _Recorder(Transformation):
        def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
            asked.append(index)
            return []  # nothing to try: the search moves on to the next word

    Attack(model, Untargeted(), _Recorder(), [], GradientImportanceSearch()).attack([text], [label])
    assert asked == expected


def test_word_importance_is_the_l1_norm_of_the_mean_token_gradient() -> None:
    """A2T's ranking (the authors' TextAttack GreedyWordSwapWIR(wir_method="gradient")): a word split into
    several tokens scores ||mean of its tokens' gradients||_1, not the sum of the tokens' norms, which would
    rank a word up for being split into more pieces."""
    from mlsafety.robustness.text._train import word_importance

    grad = torch.tensor(
        [
            [0.0, 0.0],  # [CLS]
            [1.0, -1.0],  # word 0, first of its two tokens
            [-1.0, 2.0],  # word 0, second
            [0.75, 0.5],  # word 1, one token
            [0.0, 0.0],  # [SEP]
        ]
    )
    spans = [[1, 2], [3], []]
    scores = word_importance(grad, spans, [0, 1, 2])
    assert scores == pytest.approx({0: 0.5, 1: 1.25, 2: 0.0})  # word 0: |0| + |0.5|; summed norms gave 5
    assert sorted(scores, key=lambda i: -scores[i]) == [1, 0, 2]


def test_a2t_training_lowers_the_attack_success_on_held_out_texts() -> None:
    texts, labels = tiny_sentences(120, seed=11, min_words=6, max_words=12)
    data = TextDataset(texts, torch.tensor(labels))
    held, held_y = tiny_sentences(60, seed=12, min_words=6, max_words=12)
    config = TrainConfig(epochs=3, lr=0.05, batch_size=32, schedule="constant", weight_decay=0.0)

    clean = _fresh()
    plain_log = adversarial_train_text(clean, data, _attack, config, warmup=3)  # the same loop, never attacking
    assert plain_log.added == [0, 0, 0]
    before = evaluate_robust_training(held, torch.tensor(held_y), _attack(clean))

    robust = _fresh()
    log = adversarial_train_text(robust, data, _attack, config, warmup=1, attack_share=0.5, adv_weight=1.0)
    assert log.attacked == [0, 60, 60] and all(k > 0 for k in log.added[1:])
    after = evaluate_robust_training(held, torch.tensor(held_y), _attack(robust))

    assert before.attack_success_rate is not None and after.attack_success_rate is not None
    assert after.accuracy_under_attack.value > before.accuracy_under_attack.value + 0.05
    assert after.attack_success_rate.value < before.attack_success_rate.value
    for row in (before, after):
        est = row.accuracy_under_attack
        assert est.ci_low <= est.value <= est.ci_high and est.n == 60


def test_bad_settings_are_refused() -> None:
    data = TextDataset(["good film", "bad film"], torch.tensor([1, 0]))
    with pytest.raises(InputError, match="attack_share"):
        adversarial_train_text(_fresh(), data, _attack, attack_share=0.0)
    with pytest.raises(InputError, match="adv_weight"):
        adversarial_train_text(_fresh(), data, _attack, adv_weight=0.0)


def test_trainable_trains_only_the_named_submodules_and_keeps_the_rest_in_eval_mode() -> None:
    """As the minilm-mr recipe trains only its top layer and head: the rest keeps its weights, runs without
    dropout while training (eval mode), and its requires_grad flags are restored afterwards."""
    texts, labels = tiny_sentences(40, seed=5, min_words=4, max_words=8)
    data = TextDataset(texts, torch.tensor(labels))
    model = _fresh(1)
    embed_before = model.embed.weight.detach().clone()
    fc_before = model.fc.weight.detach().clone()
    seen: list[tuple[bool, bool]] = []  # (embed.training, fc.training) at each forward
    handle = model.fc.register_forward_hook(lambda m, i, o: seen.append((model.embed.training, m.training)))
    config = TrainConfig(epochs=2, lr=0.05, batch_size=16, schedule="constant", weight_decay=0.0)
    try:
        log = adversarial_train_text(model, data, _attack, config, warmup=1, attack_share=0.5, trainable=["fc"])
    finally:
        handle.remove()
    assert log.attacked == [0, 20]
    assert torch.equal(model.embed.weight, embed_before)
    assert not torch.allclose(model.fc.weight, fc_before)
    training_steps = [s for s in seen if s[1]]  # forwards of the loss (the attack's run in eval mode)
    assert training_steps and all(embed_mode is False for embed_mode, _ in training_steps)
    assert all(p.requires_grad for p in model.parameters()) and not model.training

    everything = _fresh(1)
    adversarial_train_text(everything, data, _attack, config, warmup=2)
    assert not torch.equal(everything.embed.weight, embed_before)  # without trainable= the embedding trains too


def test_trainable_names_must_exist() -> None:
    data = TextDataset(["good film", "bad film"], torch.tensor([1, 0]))
    with pytest.raises(InputError, match="trainable names no submodule"):
        adversarial_train_text(_fresh(), data, _attack, trainable=["head"])


def test_a2t_recipe_lets_at_least_four_words_change_as_the_authors_recipe() -> None:
    """A2T's word budget (Yoo & Qi's TextAttack recipe A2TYoo2021: MaxModificationRate(max_rate=0.1,
    min_threshold=4)) is max(ceil(10% of the words), 4): a 9-word text may change 4 words, a 20-word one 4
    (not 0 and 2), a 41- or 45-word one 5 (not 4), a 60-word one 6; and nouns may not become verbs
    (PartOfSpeech(allow_verb_noun_swap=False))."""
    from mlsafety.robustness.text import constraints as C
    from mlsafety.robustness.text._train import A2T

    attack = A2T().build(_fresh())
    (limit,) = [c for c in attack.constraints if isinstance(c, C.MaxWordsPerturbed)]
    for n, most in ((9, 4), (20, 4), (41, 5), (45, 5), (60, 6)):  # TextAttack: max(ceil(0.1 n), 4)
        original = AttackedText.from_text(" ".join(["film"] * n))
        texts = [original.replace_words(dict.fromkeys(range(k), "movie")) for k in (most, most + 1)]
        assert limit.allows(original, texts) == [True, False], n
    (pos,) = [c for c in attack.constraints if isinstance(c, C.PartOfSpeech)]
    assert pos.allow_noun_verb is False
