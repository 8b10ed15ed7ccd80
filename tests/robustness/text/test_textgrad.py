"""TextGrad: the projections, the relaxed attack against random substitution, constraints and budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mlsafety.core import Classifier, LanguageModel
from mlsafety.robustness.text import Attack, AttackedText, Constraint, Transformation, Untargeted
from mlsafety.robustness.text._base import Problem
from mlsafety.robustness.text._fluency import Perplexity, perplexities
from mlsafety.robustness.text._projection import project_capped_simplex, project_simplex
from mlsafety.robustness.text.textgrad import (
    RandomSubstitutionSearch,
    TextGradSearch,
    build_relaxation,
    first_allowed,
    margin_loss,
)
from tests.support.linear_text import sentiment, sentiment_model
from tests.support.text import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, tiny_llama

POOL = [*POSITIVE_WORDS, *NEGATIVE_WORDS, "movie", "film", "day", "cat", "dog", "red", "blue", "big"]


class _Pool(Transformation):
    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        return POOL


class _NoRepeat(Constraint):
    def modifiable(self, text: AttackedText, indices: set[int]) -> set[int]:
        return indices - set(text.modified)


class _Keep(Constraint):
    """Words listed in ``frozen`` never change; at most ``k`` words change."""

    def __init__(self, k: int, frozen: tuple[str, ...] = ()) -> None:
        self.k, self.frozen = k, frozen

    def modifiable(self, text: AttackedText, indices: set[int]) -> set[int]:
        return {i for i in indices if text.original_words[i] not in self.frozen}

    def allows(self, original: AttackedText, candidates: list[AttackedText]) -> list[bool]:  # type: ignore[override]
        return [
            len(c.changed) <= self.k and all(original.words[i] not in self.frozen for i in c.changed)
            for c in candidates
        ]


def _positive_texts(n: int, seed: int = 3) -> list[str]:
    """Three positive words among nine neutral ones: two well-chosen swaps flip each, one never does."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pos = [POSITIVE_WORDS[int(i)] for i in torch.randperm(len(POSITIVE_WORDS), generator=g)[:3]]
        neu = [NEUTRAL_WORDS[int(i)] for i in torch.randint(0, 40, (9,), generator=g)]
        words = pos + neu
        out.append(" ".join(words[i] for i in torch.randperm(len(words), generator=g).tolist()))
    return out


# --- projections --------------------------------------------------------------------------------


def test_capped_simplex_projection_hand_solution() -> None:
    a = torch.tensor([[0.9, 0.8, 0.1, 1.5], [0.2, 0.1, 0.0, -1.0], [3.0, 3.0, -2.0, 0.0]])
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True] * 4])
    z = project_capped_simplex(a, 1.0, mask)
    # row 0: clip(a - mu, 0, 1) with mu = 11/15 sums to 1; row 1: inside already; row 2: mu = 2.5
    expected = torch.tensor([[1 / 6, 1 / 15, 0.0, 23 / 30], [0.2, 0.1, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert torch.allclose(z, expected, atol=1e-5)


def test_simplex_projection_hand_solution() -> None:
    a = torch.tensor([[0.2, 0.1, 0.0, 5.0], [2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    u = project_simplex(a, mask)
    expected = torch.tensor([[13 / 30, 10 / 30, 7 / 30, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(u, expected, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projections_equal_the_qp_solution(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.5, 1.0, size=7)
    k = 2.0

    def solve(cons: list[dict[str, object]], bounds: list[tuple[float, float | None]]) -> np.ndarray:
        opts = {"ftol": 1e-12, "maxiter": 500}
        res = minimize(lambda v: 0.5 * np.sum((v - a) ** 2), np.zeros_like(a), jac=lambda v: v - a,
                       bounds=bounds, constraints=cons, method="SLSQP", options=opts)  # fmt: skip
        return np.asarray(res.x)

    capped = solve([{"type": "ineq", "fun": lambda v: k - v.sum()}], [(0.0, 1.0)] * 7)
    simplex = solve([{"type": "eq", "fun": lambda v: v.sum() - 1}], [(0.0, None)] * 7)
    t = torch.tensor(a, dtype=torch.float64)[None]
    ones = torch.ones_like(t, dtype=torch.bool)
    assert np.allclose(project_capped_simplex(t, k, ones)[0].numpy(), capped, atol=1e-5)
    assert np.allclose(project_simplex(t, ones)[0].numpy(), simplex, atol=1e-5)


def test_margin_loss() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 10.0]])
    assert margin_loss(logits, 0, None, 100.0).tolist() == [2.0, -10.0]
    assert margin_loss(logits, 0, 2, 100.0).tolist() == [3.0, -8.0]
    assert margin_loss(logits, 0, None, 1.0).tolist() == [2.0, -1.0]


# --- the attack ---------------------------------------------------------------------------------


def _attack(search: object, k: int, budget: int | None = None, extra: list[Constraint] | None = None) -> Attack:
    model = sentiment_model()
    cons: list[Constraint] = [_NoRepeat(), _Keep(k, ("the", "a")), *(extra or [])]
    return Attack(model, Untargeted(), _Pool(), cons, search, query_budget=budget, seed=0)  # type: ignore[arg-type]


def test_textgrad_beats_random_substitution_at_equal_budget() -> None:
    texts = _positive_texts(24)
    clf = Classifier(sentiment_model())
    steps, samples = 15, 8
    tg = _attack(TextGradSearch(clf, budget_words=2, steps=steps, samples=samples), 2).attack(texts, [1] * len(texts))
    # the baseline gets every query TextGrad spent on gradient steps as extra samples
    rnd = _attack(RandomSubstitutionSearch(clf, budget_words=2, samples=samples + steps), 2).attack(
        texts, [1] * len(texts)
    )
    assert max(r.queries for r in tg) <= max(r.queries for r in rnd) + 1
    won = sum(r.success for r in tg)
    lost = sum(r.success for r in rnd)
    assert won >= 0.9 * len(texts)
    assert won > lost
    for r in tg:
        if r.success:
            assert sentiment(r.perturbed) < 0 and len(r.changed) <= 2


def test_returned_texts_keep_every_constraint_and_the_budget() -> None:
    texts = [*_positive_texts(10, seed=5), "the good film", "a fine day"]
    clf = Classifier(sentiment_model())
    attack = _attack(TextGradSearch(clf, budget_words=2, steps=10, samples=6), 2, budget=14)
    for r in attack.attack(texts, [1] * len(texts)):
        final = AttackedText.from_text(r.original).replace_words(
            {i: w for i, w in enumerate(r.perturbed.split()) if i in r.changed}
        )
        assert all(c.check(AttackedText.from_text(r.original), final) for c in attack.constraints)
        assert all(w in POOL for i, w in enumerate(r.perturbed.split()) if i in r.changed)
        assert r.queries <= 14


def test_samples_respect_the_word_budget() -> None:
    clf = Classifier(sentiment_model())
    search = TextGradSearch(clf, budget_words=2, steps=0, samples=50)
    attack = _attack(search, 12)
    from mlsafety.robustness.text._base import Problem

    problem = Problem(attack, AttackedText.from_text(_positive_texts(1)[0]), 1, None, torch.Generator().manual_seed(0))
    rel = build_relaxation(clf, problem, 30)
    assert rel is not None and len(rel.sites) == 12
    z = torch.full((12,), 0.9)  # Bernoulli draws pick about 11 sites; only the 2 largest may stay
    z[3] = z[7] = 0.95
    u = rel.cmask.float() / rel.cmask.float().sum(dim=1, keepdim=True)
    for subs in search.sample(rel, z, u, torch.Generator().manual_seed(1)):
        assert 1 <= len(subs) <= 2
    # both large ones are drawn with probability 0.95^2: then they, and only they, are kept
    draws = search.sample(rel, z, u, torch.Generator().manual_seed(2))[1:]
    assert sum(set(subs) == {rel.sites[3], rel.sites[7]} for subs in draws) >= 0.75 * len(draws)


# --- fluency ------------------------------------------------------------------------------------


def test_perplexity_ignores_padding_and_filters_candidates() -> None:
    lm = LanguageModel(tiny_llama())
    texts = ["the cat sat on the mat", "a dog", "the cat sat on the mat and the dog ran to the city"]
    together = perplexities(lm, texts)
    alone = torch.cat([perplexities(lm, [t]) for t in texts])
    assert torch.allclose(together, alone, rtol=1e-4)
    # by hand for one text: exp(mean -log p(next token))
    batch = lm.encode([texts[1]])
    with torch.no_grad():
        logp = lm.module(input_ids=batch.input_ids).logits[0, :-1].log_softmax(-1)
    nll = -logp.gather(1, batch.input_ids[0, 1:, None]).mean()
    assert float(together[1]) == pytest.approx(float(nll.exp()), rel=1e-4)
    con = Perplexity(lm, max_ratio=1.0)
    original = AttackedText.from_text(texts[0])
    cands = [original.replace_word(1, w) for w in ("dog", "red", "paris")]
    ppl = perplexities(lm, [original.text] + [c.text for c in cands])
    assert con.allows(original, cands) == [bool(v <= ppl[0] * (1 + 1e-6)) for v in ppl[1:]]


def test_fluency_constraint_holds_on_results() -> None:
    lm = LanguageModel(tiny_llama())
    clf = Classifier(sentiment_model())
    fluency = Perplexity(lm, max_ratio=1.2)
    attack = _attack(TextGradSearch(clf, budget_words=2, steps=5, samples=8), 2, extra=[fluency])
    results = attack.attack(_positive_texts(6, seed=9), [1] * 6)
    assert any(r.success for r in results)
    for r in results:
        if r.success:
            ratio = perplexities(lm, [r.perturbed])[0] / perplexities(lm, [r.original])[0]
            assert float(ratio) <= 1.2 + 1e-4


class _OddLength(Constraint):
    """Allows a candidate whose newest word has an odd length; counts the candidates it judged."""

    def __init__(self) -> None:
        self.judged = 0

    def allows(self, original: AttackedText, candidates: list[AttackedText]) -> list[bool]:  # type: ignore[override]
        self.judged += len(candidates)
        return [len(c.words[c.last]) % 2 == 1 for c in candidates if c.last is not None]


@pytest.mark.parametrize("max_candidates", [1, 3, 100])
def test_first_allowed_keeps_what_judging_all_at_once_keeps_and_judges_fewer(max_candidates: int) -> None:
    """Each site keeps the first ``max_candidates`` allowed substitutes in the transformation's order, as when
    every candidate is judged and the first ones kept; with a small cap fewer candidates are judged."""
    model = sentiment_model()
    counting = _OddLength()
    attack = Attack(model, Untargeted(), _Pool(), [_NoRepeat(), counting], TextGradSearch(Classifier(model)))
    original = AttackedText.from_text(_positive_texts(1)[0])
    problem = attack_problem(attack, original)
    cands = attack.transformation.transform(original, range(original.num_words), problem.g)
    expected: dict[int, list[str]] = {}
    for c in cands:
        if len(c.words[c.last]) % 2 == 1 and len(expected.setdefault(c.last, [])) < max_candidates:
            expected[c.last].append(c.words[c.last])
    got = first_allowed(problem, cands, max_candidates)
    assert got == {i: w for i, w in expected.items() if w}
    assert all(len(w) <= max_candidates for w in got.values())
    if max_candidates < 3:
        assert counting.judged < len(cands)
    else:
        assert counting.judged <= len(cands)


def attack_problem(attack: Attack, original: AttackedText) -> Problem:
    return Problem(attack, original, 1, None, torch.Generator().manual_seed(0))


def test_recipe_similarity_checks_every_changed_words_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """TextGrad changes several words at once, so the recipe's windowed similarity must look at every changed
    word's window: a text whose two changes share the first window (2 of its 15 words: bag-of-words cosine
    13/15 < 0.9) and whose last change is alone in its window (14/15) is refused."""
    from mlsafety.robustness.text import _resources
    from mlsafety.robustness.text import constraints as C
    from mlsafety.robustness.text.textgrad import TextGrad, textgrad_parts

    class BagEncoder:  # cosine of bag-of-words counts
        def cosine(self, a: list[str], b: list[str]) -> torch.Tensor:
            out = []
            for x, y in zip(a, b):
                vocab = sorted(set(x.split()) | set(y.split()))
                va = torch.tensor([x.split().count(w) for w in vocab], dtype=torch.float64)
                vb = torch.tensor([y.split().count(w) for w in vocab], dtype=torch.float64)
                out.append(float(va @ vb / (va.norm() * vb.norm())))
            return torch.tensor(out)

    monkeypatch.setattr(_resources, "minilm_encoder", BagEncoder)
    clf = Classifier(sentiment_model())
    _, constraints, _ = textgrad_parts(clf, TextGrad(min_similarity=0.9, fluency="none"), None)
    (sim,) = [c for c in constraints if isinstance(c, C.SentenceSimilarity)]
    original = AttackedText.from_text(" ".join(f"w{i}" for i in range(20)))
    sampled = original.replace_words({0: "x", 1: "y", 19: "z"})
    assert sim.allows(original, [original.replace_words({0: "x", 19: "z"}), sampled]) == [True, False]
    assert sim.check(original, sampled) is False


@pytest.mark.parametrize("via", ["search", "recipe"])
def test_a_three_word_text_gets_one_word_at_a_quarter_share(via: str) -> None:
    """A 25% share of 3 words allows ceil(0.75) = 1 word (TextAttack's rounding; floor allowed none, so a text
    of 3 words or fewer could never be attacked). One swap ("good" -> a negative word) flips "good movie day";
    the relaxation's budget is that 1 word too, not ``budget_words`` = 3 (sampling 3 sites would break the
    share limit every time)."""
    from mlsafety.robustness.text import constraints as C
    from mlsafety.robustness.text.textgrad import TextGrad

    model = sentiment_model()
    cons: list[Constraint] = [_NoRepeat(), C.MaxWordsPerturbed(max_share=0.25, max_words=3)]
    if via == "search":
        search = TextGradSearch(Classifier(model), budget_words=3, steps=5, samples=8, max_share=0.25)
        attack = Attack(model, Untargeted(), _Pool(), cons, search, seed=0)
    else:
        recipe = TextGrad(budget_words=3, max_share=0.25, steps=5, samples=8, fluency="none")
        attack = recipe.build(model, transformation=_Pool(), constraints=cons)
    (r,) = attack.attack(["good movie day"], [1])
    assert C.max_words_for_share(0.25, 3) == 1
    assert r.status == "succeeded" and len(r.changed) == 1 and sentiment(r.perturbed) < 0


def test_gradient_steps_leave_the_mode_and_every_sample_a_query() -> None:
    """:meth:`TextGradSearch.sample` gives the mode plus ``samples`` draws: the steps must stop with
    ``samples + 1`` queries left, or the budget cuts the last draw before the model sees it."""
    clf = Classifier(sentiment_model())
    samples = 6
    search = TextGradSearch(clf, budget_words=2, steps=50, samples=samples)
    attack = _attack(search, 2, budget=20)
    problem = Problem(attack, AttackedText.from_text(_positive_texts(1)[0]), 1, None, torch.Generator().manual_seed(0))
    problem.query([problem.original])  # the original's query, as Attack makes it
    rel = build_relaxation(clf, problem, 20)
    assert rel is not None
    search.optimise(problem, rel)
    assert problem.remaining == samples + 1
    assert len(search.sample(rel, *search.optimise(problem, rel), torch.Generator().manual_seed(0))) == samples + 1
