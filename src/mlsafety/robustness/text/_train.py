"""Adversarial training for text, A2T style (Yoo & Qi, "Towards Improving Adversarial Training of NLP
Models", Findings of EMNLP 2021).

A2T makes adversarial training affordable by attacking with a cheap attack: words ranked once by the
gradient of the loss with respect to their input embeddings (:class:`GradientImportanceSearch`, one
backward pass instead of one query per word), then greedily swapped for embedding neighbours under
light constraints. Each epoch after ``warmup`` clean epochs, a ``attack_share``
of the training texts is attacked with the current model, and the epoch trains on the clean texts plus
the successful adversarial ones, the latter weighted by ``adv_weight`` (A2T's alpha) in the loss.

The loop is the project's one training loop (:func:`mlsafety.core.train`, one call per epoch with a
loss hook that weights the adversarial texts); :func:`evaluate_robust_training` gives the before/after
row (clean accuracy and attack success rate on held-out texts, each with its exact 95% interval).

The attack's constraints are those of the authors' TextAttack recipe (``A2TYoo2021``): stop words and
changed words kept, at most ``max(ceil(10% of the words), 4)`` words changed (TextAttack's
``MaxModificationRate(0.1, min_threshold=4)``), WordNet part of speech kept with no noun-verb swaps,
embedding cosine at least ``min_cos``.

Deviations: counter-fitted embeddings are replaced by the victim's input embeddings (as in the
recipes), and since those embeddings put antonyms close (counter-fitting, Mrkšić et al. 2016, pushes them
apart) a swap for a WordNet antonym is refused (:class:`~.constraints.NoAntonym`, ``refuse_antonyms=False``
turns it off): an antonym swap added to training with the original label would teach a wrong label; DistilBERT
sentence similarity is off by default (``a2t`` recipe's ``min_similarity``; the
MiniLM encoder when set) to keep training on a CPU cheap; the learning-rate schedule restarts each
epoch (one :func:`~mlsafety.core.train` call per epoch, default ``schedule="constant"``). Two
differences from the authors' TextAttack ``Trainer``: it attacks shuffled training texts until
``ceil(share x N)`` attacks have succeeded (``num_train_adv_examples``), here ``share x N`` texts are
attacked and the successes kept, so fewer adversarial texts are added when the attack often fails; and
it averages ``w_i loss_i`` over the batch, here ``sum w_i loss_i / sum w_i`` (the same weight ratio
between adversarial and clean texts, a batch scale that Adam mostly absorbs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import (
    Classifier,
    InputError,
    ModelLike,
    Param,
    TextDataset,
    TrainConfig,
    as_classifier,
    derive_seed,
    generator,
    train,
)
from mlsafety.metrics import Estimate, proportion
from mlsafety.robustness.text import _resources
from mlsafety.robustness.text._base import (
    Attack,
    AttackedText,
    Problem,
    QueryResult,
    SearchMethod,
    check_text_classifier,
)
from mlsafety.robustness.text._gradients import embedding_gradients, token_spans
from mlsafety.robustness.text._recipe import Recipe, register_text_attack
from mlsafety.robustness.text.goals import Untargeted
from mlsafety.robustness.text.hotflip import word_char_spans


def word_importance(grad: torch.Tensor, spans: Sequence[Sequence[int]], indices: Iterable[int]) -> dict[int, float]:
    """A2T's word importance: the L1 norm of the loss gradient at the word's input embedding, the gradient of
    a word split into several tokens being the mean of its tokens' (as the authors' TextAttack
    ``GreedyWordSwapWIR(wir_method="gradient")``); 0 for a word no token reads.

    Args:
        grad: ``(T, D)`` loss gradient at each token's input embedding.
        spans: token positions of each word (:func:`~._gradients.token_spans`).
        indices: the words to score.
    """
    return {i: float(grad[list(spans[i])].mean(dim=0).abs().sum()) if spans[i] else 0.0 for i in indices}


class GradientImportanceSearch(SearchMethod):
    """Greedy search in the order of gradient word importance (A2T).

    A word's importance is :func:`word_importance`, from one forward and backward pass on the original
    text. Words are then tried in that order: all candidates for the word in one batch, the best kept if
    it raises the goal's score, until a candidate reaches the goal or the budget is spent.
    """

    name: ClassVar[str] = "gradient-importance"

    def search(self, problem: Problem, start: QueryResult) -> AttackedText:
        clf = problem.model.clf
        orig = problem.original
        indices = problem.modifiable(orig)
        target = None if problem.target is None else torch.tensor([problem.target])
        eg = embedding_gradients(clf, [orig.text], torch.tensor([problem.label]), target)
        spans = token_spans(clf.tokenizer, orig.text, word_char_spans(orig), int(eg.batch.lengths[0]))
        importance = word_importance(eg.grad[0], spans, indices)
        order = sorted(indices, key=lambda i: -importance[i])
        current, score = orig, float(start.scores[0])
        for i in order:
            if problem.exhausted:
                break
            cands = problem.candidates(current, [i])
            if not cands:
                continue
            result = problem.query(cands)
            if len(result) == 0:
                break
            if bool(result.reached.any()):
                best = result.scores.masked_fill(~result.reached, float("-inf"))
                return result.texts[int(best.argmax())]
            j = int(result.scores.argmax())
            if float(result.scores[j]) > score:
                current, score = result.texts[j], float(result.scores[j])
        return current


@register_text_attack("a2t", tags=("white-box", "word-level", "quick"))
class A2T(Recipe):
    """A2T's cheap attack (Yoo & Qi 2021): gradient word importance, embedding-neighbour swaps; see the module docs."""

    max_candidates = Param(20, int, low=1, doc="embedding neighbours tried per word")
    min_cos = Param(0.8, float, low=-1, high=1, doc="input-embedding cosine between a word and its replacement")
    max_share = Param(0.1, float, low=0.01, high=1, doc="share of a text's words changed at most (rounded up)")
    min_words = Param(4, int, low=0, doc="words the share limit allows at least (A2T's min_threshold)")
    min_similarity = Param(None, float, low=-1, high=1, doc="MiniLM sentence cosine at least (None: not checked)")
    refuse_antonyms = Param(True, bool, doc="refuse a swap for a WordNet antonym (NoAntonym; False: the old recipe)")

    name: ClassVar[str] = "a2t"

    def build(self, model: ModelLike) -> Attack:
        from mlsafety.robustness.text.constraints import (
            MaxWordsPerturbed,
            NoAntonym,
            PartOfSpeech,
            RepeatModification,
            SentenceSimilarity,
            StopWords,
            WordEmbeddingDistance,
        )
        from mlsafety.robustness.text.transformations import EmbeddingSwap, word_vectors

        clf = as_classifier(model)
        check_text_classifier(clf, "a2t")
        _resources.wordnet()  # the part-of-speech constraint reads WordNet: a missing package is named first
        vectors = word_vectors("victim", clf)
        constraints = [
            RepeatModification(),
            StopWords(),
            MaxWordsPerturbed(max_share=self.max_share, min_words=self.min_words, round_up=True),
            WordEmbeddingDistance(vectors, self.min_cos),
            PartOfSpeech(allow_noun_verb=False),
            *([NoAntonym()] if self.refuse_antonyms else []),
        ]
        if self.min_similarity is not None:
            constraints.append(SentenceSimilarity(_resources.minilm_encoder(), self.min_similarity, "cosine"))
        return Attack(
            clf,
            Untargeted(),
            EmbeddingSwap(vectors, self.max_candidates),
            constraints,
            GradientImportanceSearch(),
            query_budget=self.query_budget,
            batch_size=self.batch_size,
            seed=self.seed,
            name=self.name,
        )


AttackFactory = Callable[[nn.Module], Attack]
"""Builds the training-time attack on the current model, e.g. ``lambda m: create("a2t", m, query_budget=50)``."""


@dataclass
class TextTrainingLog:
    """What :func:`adversarial_train_text` did, per epoch: texts attacked and adversarial texts added."""

    attacked: list[int]
    added: list[int]


def adversarial_train_text(
    model: nn.Module,
    data: TextDataset,
    attack: AttackFactory,
    config: TrainConfig | None = None,
    warmup: int = 1,
    attack_share: float = 0.2,
    adv_weight: float = 0.6,
    trainable: Sequence[str] | None = None,
) -> TextTrainingLog:
    """Train ``model`` in place, A2T style: ``warmup`` clean epochs, then each epoch attacks a seeded
    ``attack_share`` of ``data`` with ``attack(model)`` and trains on the clean texts plus the successful
    adversarial ones (loss weight ``adv_weight``).

    Args:
        model: a text classifier module (it carries its tokenizer, or is a ``Classifier``'s module).
        data: labelled training texts.
        attack: builds the attack on the current model (called once per attacking epoch).
        config: the loop's settings (epochs, lr, batch size, seed; default ``TrainConfig(schedule="constant")``).
        warmup: clean epochs first (A2T: 1).
        attack_share: share of the training texts attacked each epoch, in (0, 1].
        adv_weight: weight of an adversarial text's loss (A2T's alpha), > 0.
        trainable: names of the submodules to train (as ``model.named_modules()`` gives them, e.g. a
            fine-tuning recipe's top layer and head); every other parameter keeps its value and every
            other module stays in eval mode (no dropout), as when a recipe trains on frozen features.
            None: the whole model. The parameters' ``requires_grad`` flags are restored afterwards.

    Returns:
        The per-epoch log; the model is trained in place and left in eval mode.
    """
    config = config or TrainConfig(schedule="constant")
    if not 0 < attack_share <= 1:
        raise InputError(f"attack_share must be in (0, 1], got {attack_share}")
    if adv_weight <= 0:
        raise InputError(f"adv_weight must be > 0, got {adv_weight}")
    if warmup < 0 or warmup > config.epochs:
        raise InputError(f"warmup must be between 0 and epochs={config.epochs}, got {warmup}")
    clf = as_classifier(model)
    check_text_classifier(clf, "adversarial_train_text")
    with _train_only(model, trainable) as keep_frozen_in_eval:
        return _adversarial_epochs(
            model, clf, data, attack, config, warmup, attack_share, adv_weight, keep_frozen_in_eval
        )


def _subtree(name: str, roots: Sequence[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


@contextlib.contextmanager
def _train_only(model: nn.Module, trainable: Sequence[str] | None) -> Iterator[Callable[[], None]]:
    """Gradients off outside the ``trainable`` submodules for the body (flags restored on exit); yields a
    function that puts every module outside them in eval mode (called before each batch's forward, as
    :func:`mlsafety.core.train` switches the whole model to train mode)."""
    if trainable is None:
        yield lambda: None
        return
    names = dict(model.named_modules())
    roots = list(dict.fromkeys(trainable))
    unknown = [r for r in roots if r not in names or r == ""]
    if unknown or not roots:
        some = ", ".join(n for n in list(names)[1:6])
        raise InputError(f"trainable names no submodule of the model: {unknown or roots}; use names such as {some}")
    outside = [m for n, m in names.items() if not _subtree(n, roots)]
    flags = [(p, p.requires_grad) for n, p in model.named_parameters() if not _subtree(n.rsplit(".", 1)[0], roots)]

    def keep_frozen_in_eval() -> None:
        for m in outside:
            if m.training:
                m.training = False

    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield keep_frozen_in_eval
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _adversarial_epochs(
    model: nn.Module,
    clf: Classifier,
    data: TextDataset,
    attack: AttackFactory,
    config: TrainConfig,
    warmup: int,
    attack_share: float,
    adv_weight: float,
    keep_frozen_in_eval: Callable[[], None],
) -> TextTrainingLog:
    log = TextTrainingLog([], [])
    for epoch in range(config.epochs):
        epoch_data = data
        adversarial: set[str] = set()
        if epoch >= warmup:
            g = generator(config.seed, *config.stream, "a2t", str(epoch))
            k = max(1, round(attack_share * len(data)))
            pick = torch.randperm(len(data), generator=g)[:k].sort().values
            results = attack(model).attack([str(t) for t in data.x[pick]], data.y[pick])
            won = [r for r in results if r.success]
            adversarial = {r.perturbed for r in won}
            log.attacked.append(len(results))
            log.added.append(len(won))
            if won:
                epoch_data = TextDataset(
                    [*data.x, *(r.perturbed for r in won)],
                    torch.cat([data.y, torch.tensor([r.label for r in won], dtype=data.y.dtype)]),
                    name=f"{data.name}-a2t",
                )
        else:
            log.attacked.append(0)
            log.added.append(0)

        def loss(
            m: nn.Module, x: Any, y: torch.Tensor, g: torch.Generator, adv: frozenset[str] = frozenset(adversarial)
        ) -> torch.Tensor:
            keep_frozen_in_eval()
            logits = clf.logits(x)
            w = torch.tensor([adv_weight if t in adv else 1.0 for t in x], device=logits.device)
            return (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()

        seed = derive_seed(config.seed, "a2t-epoch", str(epoch))
        train(model, epoch_data, config.replace(epochs=1, seed=seed, description=f"A2T epoch {epoch + 1}"), loss=loss)
    return log


@dataclass
class RobustTrainingRow:
    """Clean accuracy and attack success rate on held-out texts (exact 95% intervals)."""

    clean_accuracy: Estimate
    attack_success_rate: Estimate | None
    accuracy_under_attack: Estimate


def evaluate_robust_training(texts: Sequence[str], labels: torch.Tensor, attack: Attack) -> RobustTrainingRow:
    """The before/after row of adversarial training: ``attack`` (built on the trained model) on held-out ``texts``."""
    results = attack.attack(list(texts), labels)
    n = len(results)
    attacked = [r for r in results if r.status != "skipped"]
    won = sum(r.success for r in attacked)
    return RobustTrainingRow(
        proportion(len(attacked), n),
        proportion(won, len(attacked)) if attacked else None,
        proportion(len(attacked) - won, n),
    )
