"""Sentiment reward scorers: proxies learn sentiment from few labels; the scorer contract is enforced."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.metrics import auroc
from mlsafety.monitoring.proxy_gaming.scorers import LinearProxy, check_scorers, train_text_proxy
from tests.support.text import tiny_sentences


def test_bow_proxy_learns_planted_sentiment() -> None:
    texts, labels = tiny_sentences(200, seed=0)
    proxy = LinearProxy("bow").fit(texts, torch.tensor(labels))
    held, y = tiny_sentences(200, seed=1)
    scores = proxy(held)
    assert scores.shape == (200,) and scores.dtype == torch.float64
    pos, neg = scores[torch.tensor(y) == 1], scores[torch.tensor(y) == 0]
    assert float(auroc(neg, pos)) > 0.95  # the sentiment word decides the label


def test_proxy_needs_both_classes_and_fit() -> None:
    with pytest.raises(InputError, match="both classes"):
        LinearProxy("bow").fit(["good", "great"], torch.tensor([1, 1]))
    with pytest.raises(InputError, match="not fitted"):
        LinearProxy("bow")(["good"])
    with pytest.raises(InputError, match="features"):
        LinearProxy("words")  # type: ignore[arg-type]


def test_train_text_proxy_is_deterministic_and_stronger_with_more_labels() -> None:
    a, b = train_text_proxy(50, "bow", seed=3), train_text_proxy(50, "bow", seed=3)
    probe = ["a wonderful , moving film", "a dull , lifeless mess", "the plot is thin but the cast is great"]
    torch.testing.assert_close(a(probe), b(probe))
    assert not torch.equal(a(probe), train_text_proxy(50, "bow", seed=4)(probe))
    strong = train_text_proxy(1000, "bow", seed=0)
    assert float(strong(["a wonderful , moving film"])[0]) > float(strong(["a dull , lifeless mess"])[0])
    with pytest.raises(InputError, match="n_labels"):
        train_text_proxy(1)


def test_fewer_bow_features_keep_the_most_frequent_words() -> None:
    texts = ["good film", "good plot", "good cast", "bad film", "bad plot", "dull film", "dull cast"] * 3
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0] * 3)
    # counts: film 9, good 9, bad 6, cast 6, dull 6, plot 6: the two most frequent are film and good
    proxy = LinearProxy("bow", max_features=2).fit(texts, labels)
    assert sorted(proxy.vectorizer_.vocabulary_) == ["film", "good"]
    s = proxy(["bad cast", "dull plot", "good"])  # words it does not see score alike
    assert float(s[0]) == float(s[1]) < float(s[2])
    with pytest.raises(InputError, match="max_features"):
        LinearProxy("bow", max_features=0)


def test_fewer_embedding_features_keep_the_top_principal_components() -> None:
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.arange(n) % 2
    emb = torch.randn(n, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 4.0, 3.0, 0.5, 0.5, 0.5])
    emb[:, 4] += 1.5 * (2 * y - 1)  # the label lives along a low-variance axis only
    texts = [str(i) for i in range(n)]
    top3 = LinearProxy("minilm", max_features=3).fit(texts, y, emb)
    full = LinearProxy("minilm").fit(texts, y, emb)
    assert top3.projection_[1].shape == (3, 6)
    assert float(auroc(*[top3.score_embeddings(emb)[y == c] for c in (0, 1)])) < 0.65  # blind to axis 4
    assert float(auroc(*[full.score_embeddings(emb)[y == c] for c in (0, 1)])) > 0.9
    mean, comps = top3.projection_
    # the kept directions are the principal axes 0-2 of the data (up to sign), the scores their projection
    torch.testing.assert_close(torch.from_numpy(abs(comps)).argmax(1).sort().values, torch.tensor([0, 1, 2]))
    manual = top3.classifier_.decision_function((emb.numpy() - mean) @ comps.T)
    torch.testing.assert_close(top3.score_embeddings(emb), torch.from_numpy(manual))
    with pytest.raises(InputError, match="at least 7 training texts"):
        LinearProxy("minilm", max_features=7).fit(texts[:6], y[:6], emb[:6])


def _tensor_scorer(x: torch.Tensor) -> torch.Tensor:
    return x.float().sum(-1)


class _Declared:
    input_type = "tensor"

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.zeros(len(texts))


def test_check_scorers_refuses_mixed_or_broken_rewards() -> None:
    def good(texts: list[str]) -> torch.Tensor:
        return torch.tensor([float(len(t)) for t in texts])

    check_scorers({"proxy": good, "gold": good}, ["a", "bb"])
    with pytest.raises(InputError, match="different input types"):
        check_scorers({"proxy": good, "gold": _Declared()}, ["a", "bb"])
    with pytest.raises(InputError, match="gold reward does not take a list of texts"):
        check_scorers({"proxy": good, "gold": _tensor_scorer}, ["a", "bb"])
    with pytest.raises(InputError, match=r"returned \(1,\) for 2 texts"):
        check_scorers({"proxy": lambda t: torch.zeros(1), "gold": good}, ["a", "bb"])
    with pytest.raises(InputError, match="non-finite"):
        check_scorers({"proxy": lambda t: torch.full((len(t),), float("nan")), "gold": good}, ["a", "bb"])

    def broken(texts: list[str]) -> torch.Tensor:
        raise KeyError("vocab")

    with pytest.raises(InputError, match=r"proxy reward does not take a list of texts \(KeyError") as info:
        check_scorers({"proxy": broken, "gold": good}, ["a", "bb"])
    assert "\n" not in str(info.value)
    check_scorers({"proxy": broken, "gold": good}, None)  # input types only: already probed elsewhere
    with pytest.raises(InputError, match="different input types"):
        check_scorers({"proxy": good, "gold": _Declared()}, None)


@pytest.mark.slow
def test_gold_scorer_ranks_clear_reviews() -> None:
    from mlsafety.monitoring.proxy_gaming.scorers import GoldScorer

    gold = GoldScorer()
    s = gold(["A wonderful, moving film with a superb cast.", "A dull, lifeless mess that wastes its cast."])
    assert s.shape == (2,) and float(s[0]) > 2.0 > -2.0 > float(s[1])
