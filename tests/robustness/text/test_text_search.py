"""Text attacks on a model with a known decision rule: minimal flips, budgets, batching, constraints.

The victim (``tests.support.linear_text.sentiment_model``) predicts class 1 exactly when the summed
sentiment strength of the text's words is positive, so the cheapest flip can be worked out by hand
or by brute force, and every returned text can be checked against the rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from mlsafety.core import InputError
from mlsafety.robustness.text import (
    Attack,
    AttackedText,
    Problem,
    Targeted,
    Transformation,
    Untargeted,
    evaluate_text_attack,
)
from mlsafety.robustness.text import constraints as C
from mlsafety.robustness.text import search as S
from tests.support.linear_text import STRENGTH, sentiment, sentiment_model
from tests.support.text import NEGATIVE_WORDS, POSITIVE_WORDS, tiny_sentences


class ListSwap(Transformation):
    """Every word may become any of ``words`` (the same set for every word)."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        return list(self.words)


class CountingModel(nn.Module):
    """Wraps a text model and records the batch size of every forward call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.batches: list[int] = []

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()  # type: ignore[operator,no-any-return]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.batches.append(int(input_ids.shape[0]))
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)  # type: ignore[no-any-return]


TEXT = "the film was good but excellent and wonderful"
"""Sentiment 1.0 + 2.0 + 2.25 = 5.25; no single swap to "bad" (-1) or "awful" (-1.25) flips it."""
SWAPS = ["bad", "awful"]


def minimal_flip(text: str, swaps: list[str], stop: frozenset[str]) -> int:
    """Fewest words to replace (each by its best swap) so that the sentiment is <= 0, by brute force."""
    words = text.split()
    free = [i for i, w in enumerate(words) if w not in stop]
    worst = min(STRENGTH[s] for s in swaps)
    for k in range(1, len(free) + 1):
        for chosen in itertools.combinations(free, k):
            total = sum(worst if i in chosen else STRENGTH.get(w, 0.0) for i, w in enumerate(words))
            if total <= 0:
                return k
    return -1


SEARCHES = [
    S.GreedyWordImportance("delete"),
    S.GreedyWordImportance("unk"),
    S.GreedyWordImportance("pwws"),
    S.BeamSearch(beam_width=3),
]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: getattr(s, "importance", s.name))
def test_search_finds_the_known_minimal_flip(search: S.SearchMethod) -> None:
    stop = C.StopWords()
    k = minimal_flip(TEXT, SWAPS, stop.words)
    assert k == 2
    attack = Attack(sentiment_model(), Untargeted(), ListSwap(SWAPS), [C.RepeatModification(), stop], search)
    (res,) = attack.attack([TEXT], [1])
    assert res.status == "succeeded" and res.perturbed_pred == 0
    assert sentiment(res.perturbed) <= 0
    words = TEXT.split()
    # the two strongest positive words, each turned into the most negative swap
    assert res.changed == (words.index("excellent"), words.index("wonderful"))
    assert len(res.changed) == k
    assert res.perturbed.split()[res.changed[0]] == "awful"
    assert res.marked == "the film was good but [[awful]] and [[awful]]"


def test_random_order_is_not_minimal_on_this_text() -> None:
    """The planted text separates ranking from luck: some seeds' random order spends a third word."""
    counts = set()
    for seed in range(6):
        attack = Attack(
            sentiment_model(),
            Untargeted(),
            ListSwap(SWAPS),
            [C.RepeatModification(), C.StopWords()],
            S.GreedyWordImportance("random"),
            seed=seed,
        )
        (res,) = attack.attack([TEXT], [1])
        counts.add(len(res.changed))
    assert max(counts) > 2


def test_targeted_goal_and_skipped_examples() -> None:
    attack = Attack(
        sentiment_model(), Targeted(), ListSwap(SWAPS), [C.RepeatModification()], S.GreedyWordImportance("delete")
    )
    res = attack.attack([TEXT, "the film was bad"], [1, 0], targets=[0, 1])
    assert res[0].status == "succeeded" and res[0].perturbed_pred == 0 and res[0].target == 0
    assert res[1].status == "failed"  # only negative swaps: a negative text cannot become positive
    untargeted = Attack(sentiment_model(), Untargeted(), ListSwap(SWAPS), [], S.GreedyWordImportance("delete"))
    (skip,) = untargeted.attack(["the film was bad"], [1])  # already misclassified
    assert skip.status == "skipped" and skip.queries == 1 and skip.perturbed == skip.original


def test_one_padded_batch_per_step() -> None:
    """Original (1 text), importance (one batch of every word), then one batch per word tried."""
    model = CountingModel(sentiment_model())
    attack = Attack(
        model,
        Untargeted(),
        ListSwap(SWAPS),
        [C.RepeatModification(), C.StopWords()],
        S.GreedyWordImportance("delete"),
    )
    (res,) = attack.attack([TEXT], [1])
    modifiable = 4  # film, good, excellent, wonderful
    assert model.batches == [1, modifiable, len(SWAPS), len(SWAPS)]
    assert attack.queries.calls == len(model.batches) and res.queries == sum(model.batches)
    beam = CountingModel(sentiment_model())
    Attack(beam, Untargeted(), ListSwap(SWAPS), [C.RepeatModification(), C.StopWords()], S.BeamSearch(2)).attack(
        [TEXT], [1]
    )
    assert beam.batches[0] == 1 and beam.batches[1] == modifiable * len(SWAPS)  # the whole first expansion at once
    assert len(beam.batches) <= 1 + modifiable


def test_the_originals_of_several_texts_are_classified_in_one_pass() -> None:
    """The issue: the model is never called one text at a time. Each original used to get a pass of its own; all of
    them now go through one padded batch first, and each still counts as one query of its own example."""
    texts = [TEXT, "the film was bad", "a good and fine plot", TEXT.replace("film", "story")]
    labels = [1, 1, 1, 1]  # the second is already wrong: skipped after its one query
    model = CountingModel(sentiment_model())
    attack = Attack(model, Untargeted(), ListSwap(SWAPS), [C.RepeatModification(), C.StopWords()],
                    S.GreedyWordImportance("delete"))  # fmt: skip
    results = attack.attack(texts, labels)
    assert model.batches[0] == len(texts) and 1 not in model.batches
    assert results[1].status == "skipped" and results[1].queries == 1
    assert sum(r.queries for r in results) == sum(model.batches) == attack.queries.texts
    # the same results as attacking each text alone
    for text, y, r in zip(texts, labels, results):
        (alone,) = Attack(sentiment_model(), Untargeted(), ListSwap(SWAPS), [C.RepeatModification(), C.StopWords()],
                          S.GreedyWordImportance("delete")).attack([text], [y])  # fmt: skip
        assert (alone.status, alone.perturbed, alone.queries) == (r.status, r.perturbed, r.queries)


def test_batches_are_split_at_batch_size() -> None:
    model = CountingModel(sentiment_model())
    attack = Attack(model, Untargeted(), ListSwap(SWAPS), [C.RepeatModification()], S.BeamSearch(4), batch_size=3)
    attack.attack([TEXT], [1])
    assert max(model.batches) <= 3 and sum(model.batches) == attack.queries.texts


@pytest.mark.parametrize("budget", [1, 2, 5, 9, 40])
def test_query_budget_is_respected(budget: int) -> None:
    many = POSITIVE_WORDS + NEGATIVE_WORDS
    for search in SEARCHES:
        attack = Attack(
            sentiment_model(), Untargeted(), ListSwap(many), [C.RepeatModification()], search, query_budget=budget
        )
        results = attack.attack([TEXT, "the movie was very good and fine"], [1, 1])
        for r in results:
            assert r.queries <= budget
            if r.success:
                assert sentiment(r.perturbed) <= 0
    # without a budget the attack succeeds in its last batch; a budget that stops before that batch fails,
    # and one that just covers it succeeds with exactly the queries it needed
    counted = CountingModel(sentiment_model())
    free = Attack(counted, Untargeted(), ListSwap(many), [C.RepeatModification()], SEARCHES[0])
    (full,) = free.attack([TEXT], [1])
    assert full.success and full.queries == sum(counted.batches)
    last = counted.batches[-1]

    def run(budget: int) -> str:
        attack = Attack(
            sentiment_model(), Untargeted(), ListSwap(many), [C.RepeatModification()], SEARCHES[0], query_budget=budget
        )
        return attack.attack([TEXT], [1])[0].status

    assert run(full.queries - last) == "failed"
    assert run(full.queries) == "succeeded"


class BagEncoder:
    """A stand-in sentence encoder: cosine of bag-of-words count vectors (exact, hand-checkable)."""

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        out = []
        for x, y in zip(a, b):
            wa, wb = x.lower().split(), y.lower().split()
            vocab = sorted(set(wa) | set(wb))
            va = torch.tensor([wa.count(w) for w in vocab], dtype=torch.float64)
            vb = torch.tensor([wb.count(w) for w in vocab], dtype=torch.float64)
            out.append(float(va @ vb / (va.norm() * vb.norm())))
        return torch.tensor(out)


def _constraints(vectors: object) -> list[C.Constraint]:
    return [
        C.RepeatModification(),
        C.StopWords(),
        C.MaxWordsPerturbed(max_share=0.3),
        C.EditDistance(max_edits=14),
        C.SentenceSimilarity(BagEncoder(), threshold=0.6, metric="cosine", window=4, windows="all", skip_short=False),
    ]


def test_no_returned_text_violates_a_constraint() -> None:
    """Property over 40 seeded sentences and every search: each success keeps every constraint's check."""
    texts, labels = tiny_sentences(40, seed=3, min_words=4, max_words=9)
    swaps = POSITIVE_WORDS + NEGATIVE_WORDS + ["movie", "film", "day"]
    n_success = 0
    for search in SEARCHES:
        cons = _constraints(None)
        attack = Attack(sentiment_model(), Untargeted(), ListSwap(swaps), cons, search, query_budget=300)
        results = attack.attack(texts, labels)
        for text, r in zip(texts, results):
            if not r.success:
                continue
            n_success += 1
            original = AttackedText.from_text(text)
            final = original.replace_words({i: r.perturbed.split()[i] for i in r.changed})
            assert final.text == r.perturbed
            for c in cons:
                assert c.check(original, final), (type(c).__name__, r.marked)
            assert (sentiment(r.perturbed) > 0) != (r.label == 1)
    assert n_success >= 20  # the property is exercised, not vacuous


def test_constraints_reject_what_they_should() -> None:
    o = AttackedText.from_text("the movie was good and very fine")
    one = o.replace_word(3, "bad")
    two = one.replace_word(6, "awful")
    assert C.MaxWordsPerturbed(max_words=1).allows(o, [one, two]) == [True, False]
    # 7 words: 0.2 x 7 = 1.4 rounded up (TextAttack's rounding) allows 2, rounded down 1; 0.1 x 7 rounded up 1
    assert C.MaxWordsPerturbed(max_share=0.2).allows(o, [one, two]) == [True, True]
    assert C.MaxWordsPerturbed(max_share=0.2, round_up=False).allows(o, [one, two]) == [True, False]
    assert C.MaxWordsPerturbed(max_share=0.1).allows(o, [one, two]) == [True, False]
    assert C.StopWords().modifiable(o, set(range(o.num_words))) == {1, 3, 6}
    assert C.RepeatModification().modifiable(one, {1, 3, 6}) == {1, 6}
    assert C.EditDistance(3).allows(o, [one, two]) == [True, False]  # good->bad is 3 edits, fine->awful 5 more
    sim = C.SentenceSimilarity(BagEncoder(), threshold=0.7, metric="cosine", window=3, windows="all", skip_short=False)
    # window of 3 around index 3: "was good and" vs "was bad and": cosine 2/3 < 0.7
    assert sim.allows(o, [one]) == [False]
    assert C.SentenceSimilarity(BagEncoder(), threshold=0.66, metric="cosine", window=3, skip_short=False).allows(
        o, [one]
    ) == [True]


def test_edit_distance_decides_as_the_whole_texts_distance() -> None:
    """The per-word bound only shortcuts the decision: every verdict equals ``levenshtein`` on the whole texts,
    also where the bound is loose (a word's letters moved across a space: bound 6, distance 2)."""
    o = AttackedText.from_text("abcd e")
    moved = o.replace_words({0: "a", 1: "bcde"})
    assert C.levenshtein(o.text, moved.text) == 2
    assert [C.EditDistance(k).allows(o, [moved])[0] for k in (1, 2, 5, 6)] == [False, True, True, True]
    g = torch.Generator().manual_seed(0)
    words = ["movie", "plot", "actors", "scene", "dull", "great", "story"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    base = AttackedText.from_text("the " + " ".join(words) + ", it is.")
    cands = []
    for _ in range(300):
        text = base
        for i in torch.randperm(base.num_words, generator=g)[: int(torch.randint(1, 5, (1,), generator=g))].tolist():
            w = list(text.words[i])
            for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
                j = int(torch.randint(0, len(w), (1,), generator=g))
                w[j] = letters[int(torch.randint(0, 26, (1,), generator=g))]
            text = text.replace_word(i, "".join(w))
        cands.append(text)
    for k in (0, 2, 4, 8):
        assert C.EditDistance(k).allows(base, cands) == [C.levenshtein(base.text, c.text) <= k for c in cands]


def test_levenshtein_known_values() -> None:
    assert C.levenshtein("kitten", "sitting") == 3
    assert C.levenshtein("flaw", "lawn") == 2
    assert C.levenshtein("same", "same") == 0
    assert C.levenshtein("", "abc") == 3


def test_bad_input_is_one_line() -> None:
    def make(budget: int | None = None) -> Attack:
        return Attack(
            sentiment_model(), Untargeted(), ListSwap(SWAPS), [C.StopWords()], S.BeamSearch(), query_budget=budget
        )

    with pytest.raises(InputError, match="empty"):
        make().attack(["   "], [1])
    with pytest.raises(InputError, match="only stop words"):  # attack() reports such a text as failed
        make().check_texts([TEXT, "the and but was"])
    with pytest.raises(InputError, match="query_budget"):
        make(budget=0)
    with pytest.raises(InputError, match="one label per text"):
        make().attack([TEXT], [1, 0])
    with pytest.raises(InputError, match="text classifier"):
        Attack(nn.Linear(4, 2), Untargeted(), ListSwap(SWAPS), [], S.BeamSearch())
    with pytest.raises(InputError, match="targets="):
        Attack(sentiment_model(), Targeted(), ListSwap(SWAPS), [], S.BeamSearch()).attack([TEXT], [1])


def test_evaluation_counts_and_intervals() -> None:
    attack = Attack(
        sentiment_model(), Untargeted(), ListSwap(SWAPS), [C.RepeatModification()], S.GreedyWordImportance()
    )
    texts = [TEXT, "the film was bad", "good", "the movie was good"]
    results = attack.attack(texts, [1, 0, 1, 1])
    # "the film was bad" with label 0 can only get worse for class 1: negative swaps keep it class 0
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded", "succeeded"]
    s = evaluate_text_attack(results)
    assert (s.n, s.attacked, s.succeeded) == (4, 4, 3)
    assert s.success_rate is not None and s.success_rate.value == pytest.approx(0.75)
    assert s.accuracy_under_attack.value == pytest.approx(0.25)
    assert s.success_rate.ci_low < 0.75 < s.success_rate.ci_high
    shares = [2 / 8, 1 / 1, 1 / 4]
    assert s.perturbed_share is not None and s.perturbed_share.value == pytest.approx(sum(shares) / 3)
    assert s.perturbed_share.ci_low <= s.perturbed_share.value <= s.perturbed_share.ci_high
    assert s.queries is not None and s.queries.value == pytest.approx(sum(r.queries for r in results) / 4)
    assert "sentence_similarity" not in s.metrics()


def test_default_texts_per_pass_follow_the_models_device() -> None:
    from mlsafety.robustness.text._base import CPU_TEXTS_PER_PASS, texts_per_pass

    assert texts_per_pass(nn.Linear(2, 2), None, gpu=128) == CPU_TEXTS_PER_PASS == 32
    assert texts_per_pass(nn.Linear(2, 2, device="meta"), None, gpu=128) == 128  # weights off the CPU
    assert texts_per_pass(nn.Linear(2, 2), 7, gpu=128) == 7
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        texts_per_pass(nn.Linear(2, 2), 0, gpu=128)
    model = CountingModel(sentiment_model())
    beam = Attack(model, Untargeted(), ListSwap(POSITIVE_WORDS + NEGATIVE_WORDS), [C.RepeatModification()],
                  S.BeamSearch(8))  # fmt: skip
    assert beam.queries.batch_size == 32
    beam.attack([TEXT], [1])
    assert max(model.batches) == 32 and sum(model.batches) == beam.queries.texts  # a step of more texts is split


def _three_class_model() -> nn.Module:
    """Class 1's logit is the mean sentiment s, class 2's is -2 s, class 0's is 0: a negative text reads
    as class 2, a positive one as class 1."""
    model = sentiment_model()
    head = nn.Linear(model.fc.in_features, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, 0] = 1.0
        head.weight[2, 0] = -2.0
    model.fc = head
    return model


def test_targeted_attack_skips_misclassified_examples_and_the_summary_counts_only_correct_ones() -> None:
    """A text the model already gets wrong is skipped under a targeted goal too: pushing it from one wrong
    class into the target is no attack on a correct prediction. The summary's accuracies are the shares of
    texts classified correctly before (1 of 2) and after the attack (0 of 2), the success rate 1 of the 1
    correctly classified text."""
    attack = Attack(
        _three_class_model(), Targeted(), ListSwap(["excellent"]), [C.RepeatModification()],
        S.GreedyWordImportance("delete"),
    )  # fmt: skip
    texts = ["the film was bad", "the film was bad"]
    results = attack.attack(texts, [0, 2], targets=[1, 1])  # both read as class 2: the first is wrong
    assert [r.original_pred for r in results] == [2, 2]
    assert [r.status for r in results] == ["skipped", "succeeded"]
    assert results[0].queries == 1 and results[1].perturbed_pred == 1
    s = evaluate_text_attack(results)
    assert (s.n, s.attacked, s.succeeded) == (2, 1, 1)
    assert s.original_accuracy.value == pytest.approx(0.5)
    assert s.accuracy_under_attack.value == 0.0
    assert s.success_rate is not None and s.success_rate.value == 1.0


class DictSwap(Transformation):
    """Each word's own replacement list."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        return list(self.table.get(text.words[index], []))


def test_pwws_order_is_softmax_saliency_times_the_best_swaps_probability_drop() -> None:
    """Ren et al. 2019, eq. 7-8: H_i = softmax(S)_i * dP*_i with S_i = P(y|x) - P(y|x with word i -> UNK) and
    dP*_i = P(y|x) - min over word i's synonyms of P(y|x with the synonym), by hand from the model's
    probabilities. The planted words separate this order from saliency alone, the drop alone, and the
    softmax times the candidates' raw score (without subtracting P(y|x))."""
    from mlsafety.core import Classifier

    model = sentiment_model()
    table = {"movie": ["worse"], "day": ["fine"], "great": ["terrible"], "fine": ["movie"]}
    text = "movie day great fine"
    attack = Attack(model, Untargeted(), DictSwap(table), [C.RepeatModification()], S.GreedyWordImportance("pwws"))
    original = AttackedText.from_text(text)
    problem = Problem(attack, original, 1, None, torch.Generator().manual_seed(0))
    order = S.GreedyWordImportance("pwws").order(problem, problem.query([original]))

    words = text.split()

    def p1(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return Classifier(model).logits(texts).softmax(dim=1)[:, 1].double()

    p = float(p1([text])[0])
    unk = p1([" ".join(["[UNK]" if j == i else w for j, w in enumerate(words)]) for i in range(4)])
    saliency = p - unk
    swapped = [" ".join([table[w][0] if j == i else w for j, w in enumerate(words)]) for i in range(4)]
    best = p1(swapped)  # one synonym per word here
    drop = p - best
    expected = (saliency.softmax(0) * drop).argsort(descending=True).tolist()
    assert expected == [2, 3, 0, 1]  # great, fine, movie, day
    assert order == expected
    for wrong in (saliency, drop, saliency.softmax(0) * (1 - best)):
        assert wrong.argsort(descending=True).tolist() != expected


@pytest.mark.parametrize("budget", [3, 7, None])
@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: getattr(s, "importance", s.name))
def test_every_text_the_model_reads_is_a_counted_query(search: S.SearchMethod, budget: int | None) -> None:
    """The texts the victim actually reads (counted at its forward) are the results' queries, each within budget."""
    model = CountingModel(sentiment_model())
    attack = Attack(
        model, Untargeted(), ListSwap(POSITIVE_WORDS + NEGATIVE_WORDS), [C.RepeatModification(), C.StopWords()],
        search, query_budget=budget,
    )  # fmt: skip
    results = attack.attack([TEXT, "the movie was very good and fine", "the film was bad"], [1, 1, 1])
    assert sum(model.batches) == sum(r.queries for r in results)
    assert all(r.queries <= (budget or 10**9) for r in results)


def test_a_target_equal_to_the_true_label_is_skipped_not_refused() -> None:
    """As TextAttack: a text whose target is its true class already meets the goal, so it is skipped (one query,
    unchanged) while the rest of the call is attacked. Four texts the model classifies correctly: two with
    target = label (skipped), one flipped to its target, one that cannot be (only negative swaps). Success rate
    1 of the 2 attacked (counting the skipped as successes would give 3/4, as failures 1/4); original accuracy
    4/4 and accuracy under attack 3/4 (only the flipped text is wrong), read from the predictions."""
    model = CountingModel(sentiment_model())
    attack = Attack(model, Targeted(), ListSwap(SWAPS), [C.RepeatModification()], S.GreedyWordImportance("delete"))
    texts = ["the film was good", "the film was good", "the film was bad", "the film was bad"]
    results = attack.attack(texts, [1, 1, 0, 0], targets=[1, 0, 0, 1])
    assert [r.status for r in results] == ["skipped", "succeeded", "skipped", "failed"]
    assert [r.original_pred for r in results] == [1, 1, 0, 0]
    assert [r.target for r in results] == [1, 0, 0, 1]
    for r in (results[0], results[2]):
        assert r.queries == 1 and r.perturbed == r.original and r.changed == ()
    assert results[1].perturbed_pred == 0
    s = evaluate_text_attack(results)
    assert (s.n, s.attacked, s.succeeded) == (4, 2, 1)
    assert s.success_rate is not None and s.success_rate.value == pytest.approx(1 / 2)
    assert s.original_accuracy.value == pytest.approx(4 / 4)
    assert s.accuracy_under_attack.value == pytest.approx(3 / 4)
    assert s.queries is not None and s.queries.value == pytest.approx((results[1].queries + results[3].queries) / 2)


@pytest.mark.parametrize("named_head", [True, False])
def test_labels_and_targets_outside_the_models_classes_are_one_line(named_head: bool) -> None:
    """A class index outside 0..K-1 is refused in one line: -1 would silently read the last class (numpy-style
    indexing) and K crashed with an IndexError. With the head named (K known) nothing is queried first."""
    from mlsafety.core import Classifier

    counting = CountingModel(sentiment_model())
    model = Classifier(counting, head="inner.fc") if named_head else counting
    targeted = Attack(model, Targeted(), ListSwap(SWAPS), [C.RepeatModification()], S.GreedyWordImportance())
    untargeted = Attack(model, Untargeted(), ListSwap(SWAPS), [C.RepeatModification()], S.GreedyWordImportance())
    good = ["the film was good", "the film was good"]
    for bad in (-1, 2):
        calls = {
            "target": lambda bad=bad: targeted.attack(good, [1, 1], targets=[0, bad]),
            "label": lambda bad=bad: untargeted.attack(good, [1, bad]),
            "label (targeted)": lambda bad=bad: targeted.attack(good, [1, bad], targets=[0, 0]),
        }
        for case, call in calls.items():
            what = case.split()[0]
            with pytest.raises(InputError, match=f"{what} {bad} .*not a class of") as err:
                call()
            assert "\n" not in str(err.value)
            if named_head or bad == 2:  # K is known: the message names the range
                assert "this 2-class model" in str(err.value) and f"{what}s in 0..1" in str(err.value)
    if named_head:
        assert counting.batches == []
    with pytest.raises(InputError, match="2 texts but 1 targets"):
        targeted.attack(good, [1, 1], targets=[0])


def test_share_of_words_is_rounded_up_as_textattack() -> None:
    """TextAttack's MaxWordsPerturbed allows ceil(max_percent x words): 25% of 3 words is ceil(0.75) = 1 word
    (rounding down allowed none, so a 3-word text could never be attacked); 14% of 50 words is exactly 7
    (the float product 7.000000000000001 must not round up to 8)."""
    three = AttackedText.from_text("good movie day")
    one, two = three.replace_word(0, "bad"), three.replace_words({0: "bad", 1: "awful"})
    assert C.MaxWordsPerturbed(max_share=0.25).allows(three, [one, two]) == [True, False]
    assert C.max_words_for_share(0.25, 3) == 1
    fifty = AttackedText.from_text(" ".join(["movie"] * 50))
    seven = fifty.replace_words(dict.fromkeys(range(7), "bad"))
    eight = fifty.replace_words(dict.fromkeys(range(8), "bad"))
    assert C.MaxWordsPerturbed(max_share=0.14).allows(fifty, [seven, eight]) == [True, False]
    assert C.max_words_for_share(0.14, 50) == 7
    # A2T's MaxModificationRate(0.1, min_threshold=4): the share's count or 4, whichever is more
    assert C.MaxWordsPerturbed(max_share=0.1, min_words=4).allows(three, [one, two]) == [True, True]


class _RecordingCos:
    """A sentence encoder that records the pairs it compares and calls every pair similar (cosine 1)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        self.seen.extend(zip(a, b))
        return torch.ones(len(a))


def test_sentence_similarity_can_compare_each_step_against_its_parent() -> None:
    """TextFooler (Jin et al. 2020, and TextAttack's ``compare_against_original=False``) compares each candidate's
    window with the CURRENT text's, so an earlier change inside the window is not held against every later step;
    the search used to hand every constraint the original, whatever the constraint asked for."""
    text = "the film was good and very excellent"
    enc = _RecordingCos()
    sim = C.SentenceSimilarity(enc, 0.9, "cosine", window=3, skip_short=False, compare_against_original=False)
    attack = Attack(sentiment_model(), Untargeted(), ListSwap(["bad"]), [C.RepeatModification(), sim],
                    S.GreedyWordImportance("delete"))  # fmt: skip
    original = AttackedText.from_text(text)
    problem = Problem(attack, original, 1, None, torch.Generator().manual_seed(0))
    current = original.replace_word(3, "bad")  # "good" already changed
    (cand,) = problem.candidates(current, [4])  # "and" -> "bad": its window "bad and very" -> "bad bad very"
    assert cand.words[3:5] == ("bad", "bad")
    assert enc.seen == [("bad and very", "bad bad very")]  # the parent's window, not the original's "good and very"
    enc.seen.clear()
    keep = C.SentenceSimilarity(enc, 0.9, "cosine", window=3, skip_short=False)  # the default: the original
    problem = Problem(
        Attack(sentiment_model(), Untargeted(), ListSwap(["bad"]), [keep], S.GreedyWordImportance("delete")),
        original, 1, None, torch.Generator().manual_seed(0),
    )  # fmt: skip
    problem.candidates(current, [4])
    assert enc.seen == [("good and very", "bad bad very")]
    assert sim.check(original, cand) and keep.compare_against_original


class _SumClassifier(nn.Module):
    """Three-class logits: the sum of the words' 3-vectors (special tokens and padding add nothing)."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        super().__init__()
        from tests.support.text import VOCAB, tiny_tokenizer

        self.embed = nn.Embedding(len(VOCAB), 3)
        with torch.no_grad():
            self.embed.weight.zero_()
            for w, v in vectors.items():
                self.embed.weight[VOCAB.index(w)] = torch.tensor(v)
        self.tokenizer = tiny_tokenizer("cls")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return (self.embed(input_ids) * m[..., None].to(torch.float32)).sum(dim=1)  # type: ignore[no-any-return]


def test_deletion_importance_counts_a_changed_prediction_as_textfooler_does() -> None:
    """Jin et al. 2020, eq. 2: a word whose deletion changes the prediction (to y') also scores the rise of
    p(y'). Planted with three classes: deleting "dog" moves p from (.5, .25, .25) to (.34, .33, .33), prediction
    kept (drop .16); deleting "cat" to (.40, .45, .15), prediction changed (drop .10, plus .20 for class 1). The
    paper ranks "cat" first (.30 > .16); the drop alone ranked "dog" first."""
    lp0, l_cat, l_dog = (torch.tensor(v).log() for v in ([0.5, 0.25, 0.25], [0.40, 0.45, 0.15], [0.34, 0.33, 0.33]))
    # logits = cat + dog + mat: without dog cat + mat = log l_dog, without cat dog + mat = log l_cat
    vectors = {"cat": (lp0 - l_cat).tolist(), "dog": (lp0 - l_dog).tolist(), "mat": (l_dog + l_cat - lp0).tolist()}
    model = _SumClassifier(vectors).eval()
    attack = Attack(model, Untargeted(), ListSwap(["big"]), [], S.GreedyWordImportance("delete"))
    original = AttackedText.from_text("cat dog mat")
    problem = Problem(attack, original, 0, None, torch.Generator().manual_seed(0))
    start = problem.query([original])
    assert start.logits[0].softmax(-1).tolist() == pytest.approx([0.5, 0.25, 0.25], abs=1e-5)
    order = S.GreedyWordImportance("delete").order(problem, start)
    assert order.index(0) < order.index(1)  # "cat" before "dog"
