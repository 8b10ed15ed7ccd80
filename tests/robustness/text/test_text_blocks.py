"""The text-attack building blocks one at a time: texts, character edits, word vectors, WordNet, recipes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from mlsafety.core import Classifier, InputError, UnknownNameError
from mlsafety.robustness import text as T
from mlsafety.robustness.text import AttackedText, WordVectors
from mlsafety.robustness.text import constraints as C
from mlsafety.robustness.text import transformations as TR
from mlsafety.zoo import install_wordnet, load_wordnet
from mlsafety.zoo._assets import WORDNET_FILES, WORDNET_SOURCE, WORDNET_SYNSETS, lexnames_text
from tests.support.linear_text import sentiment, sentiment_model

HAS_WORDNET = all((WORDNET_SOURCE / f).is_file() for f in WORDNET_FILES)
needs_wordnet = pytest.mark.skipif(not HAS_WORDNET, reason="Debian's wordnet-base/wordnet-sense-index not installed")


def test_attacked_text_keeps_separators_and_tracks_changes() -> None:
    a = AttackedText.from_text("The film isn't well-made, sadly.")
    assert a.words == ("The", "film", "isn't", "well-made", "sadly") and a.text == "The film isn't well-made, sadly."
    b = a.replace_word(1, "movie").replace_word(4, "alas")
    assert b.text == "The movie isn't well-made, alas." and b.changed == (1, 4) and b.last == 4
    assert b.modified == {1, 4} and b.original_words == a.words
    assert b.replace_word(1, "film").changed == (4,) and b.replace_word(1, "film").modified == {1, 4}
    assert b.marked() == "The [[movie]] isn't well-made, [[alas]]."
    assert a.without_word(0) == "film isn't well-made, sadly." and a.without_word(2) == "The film well-made, sadly."
    assert a.without_word(2, mask="[UNK]") == "The film [UNK] well-made, sadly."
    assert a.window(4, 3) == "isn't well-made sadly" and a.window(0, 3) == "The film isn't"
    assert a.window(2, None) == a.text


def test_char_edits_make_one_edit_of_each_kind() -> None:
    text = AttackedText.from_text("a wonderful film")
    g = torch.Generator().manual_seed(0)
    for kind in TR.EDITS:
        edits = TR.CharEdits([kind], random_one=False).replacements(text, 1, g)
        assert edits and all(e != "wonderful" for e in edits)
        for e in edits:
            d = C.levenshtein("wonderful", e)
            assert d == (2 if kind == "swap" else 1)  # a transposition is two single-character edits
            if kind == "swap":
                assert sorted(e) == sorted("wonderful")
            if kind == "key":
                i = next(k for k, (x, y) in enumerate(zip("wonderful", e)) if x != y)
                assert e[i] in TR.KEY_NEIGHBOURS["wonderful"[i]]
    assert len(TR.CharEdits(random_one=False, kinds=["delete"]).replacements(text, 1)) == len("wonderful")
    one = TR.CharEdits().replacements(text, 1, g)
    assert 1 <= len(one) <= 4
    assert TR.CharEdits().replacements(text, 0, g) == []  # "a": too short to edit
    assert set("qwsz") <= set(TR.KEY_NEIGHBOURS["a"]) and "p" not in TR.KEY_NEIGHBOURS["a"]
    with pytest.raises(InputError, match="character edits"):
        TR.CharEdits(["flip"])


def test_word_vectors_use_whole_words_and_cosine() -> None:
    vocab = {"[CLS]": 0, "good": 1, "great": 2, "bad": 3, "##ing": 4, "film": 5, "42": 6}
    m = torch.tensor(
        [[9.0, 9.0], [1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float32
    )
    v = WordVectors(vocab, m)
    assert v.words == ["good", "great", "bad", "film"]  # no special tokens, word pieces or numbers
    words, sims = v.neighbours("good", 3)
    assert words == ("great", "film", "bad") and sims[0] == pytest.approx(0.9 / (0.82**0.5), abs=1e-6)
    assert v.neighbours("Good", 3, min_cos=0.5)[0] == ("great",)
    assert v.cosine("good", "bad") == pytest.approx(-1.0) and v.cosine("good", "unknown") is None
    text = AttackedText.from_text("a Good film")
    assert TR.EmbeddingSwap(v, max_candidates=2).replacements(text, 1) == ["Great", "Film"]
    swapped = text.replace_word(1, "Great")
    assert C.WordEmbeddingDistance(v, 0.5).allows(text, [swapped, text.replace_word(1, "bad")]) == [True, False]


def test_word_vectors_of_a_victim() -> None:
    model = sentiment_model()
    v = WordVectors.from_classifier(Classifier(model))
    assert "good" in v and "[cls]" not in v.words and "a:" not in v.words
    # coordinate 0 is sentiment: the positive words' nearest neighbour is not a negative word
    assert v.neighbours("excellent", 1)[0][0] not in {"bad", "awful", "sad", "hate", "terrible", "horrible", "poor"}


def test_wordnet_missing_package_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        install_wordnet(tmp_path / "assets", source=tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install wordnet-base wordnet-sense-index" in msg and "make debs" in msg


def test_lexnames_is_the_45_line_standard_list() -> None:
    lines = lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    assert lines[29] == "29\tverb.body\t2" and lines[2] == "02\tadv.all\t4"


@needs_wordnet
def test_wordnet_folder_is_built_with_lexnames(tmp_path: Path) -> None:
    folder = install_wordnet(tmp_path)
    assert folder == tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert (folder / "lexnames").read_text() == lexnames_text()
    assert all((folder / f).stat().st_size == (WORDNET_SOURCE / f).stat().st_size for f in WORDNET_FILES)
    assert install_wordnet(tmp_path) == folder  # rebuilt in place, atomically


@pytest.mark.slow
@needs_wordnet
def test_wordnet_has_all_117659_synsets_and_serves_swaps_and_pos() -> None:
    wn = load_wordnet()  # the library's own folder, built on first use; no path given
    assert sum(1 for _ in wn.all_synsets()) == WORDNET_SYNSETS == 117_659  # type: ignore[attr-defined]
    assert wn.synset("dog.n.01").lexname() == "noun.animal"  # type: ignore[attr-defined]
    text = AttackedText.from_text("The Film was happy")
    syn = TR.WordNetSwap().replacements(text, 1)
    assert "Movie" in syn and all("_" not in s for s in syn)  # case kept, multi-word lemmas dropped
    assert "glad" in TR.WordNetSwap().replacements(text, 3)
    pos = C.PartOfSpeech(allow_noun_verb=False)
    assert pos.allows(text, [text.replace_word(3, "glad"), text.replace_word(3, "happily")]) == [True, False]
    assert C.PartOfSpeech().allows(text, [text.replace_word(1, "shoot")]) == [True]  # shoot: noun and verb
    assert pos.allows(text, [text.replace_word(1, "quickly")]) == [False]


def test_registry_and_bad_parameters() -> None:
    assert {"deepwordbug", "pwws", "textfooler"} <= set(T.available())
    with pytest.raises(UnknownNameError, match="Did you mean 'pwws'"):
        T.create("pws", sentiment_model())
    with pytest.raises(InputError, match="query_budget"):
        T.create("deepwordbug", sentiment_model(), query_budget=0)
    with pytest.raises(InputError, match="no parameter"):
        T.create("pwws", sentiment_model(), beam=3)
    with pytest.raises(InputError, match="text classifier"):
        T.create("deepwordbug", torch.nn.Linear(3, 2))


@pytest.mark.slow
@needs_wordnet
def test_recipes_flip_the_known_word_on_a_known_rule_model() -> None:
    """ "the movie was good" is positive only through "good": each recipe must change exactly that word
    (a WordNet synonym or a misspelling the tiny vocabulary does not know reads as [UNK], sentiment 0)."""
    model = sentiment_model()
    texts = ["the movie was good", "i saw the film and it was excellent"]
    for name in ("pwws", "deepwordbug"):
        attack = T.create(name, model, query_budget=200)
        results = attack.attack(texts, [1, 1])
        for text, r in zip(texts, results):
            assert r.status == "succeeded", (name, r)
            words = text.split()
            assert len(r.changed) == 1 and words[r.changed[0]] in {"good", "excellent"}
            assert sentiment(r.perturbed) <= 0 and r.similarity is not None and -1 <= r.similarity <= 1
            original = AttackedText.from_text(text)
            final = original.replace_word(r.changed[0], r.perturbed.split()[r.changed[0]])
            assert all(c.check(original, final) for c in attack.constraints)
    tf = T.create("textfooler", model, embeddings="minilm", min_word_cos=0.3, query_budget=200)
    for text, r in zip(texts, tf.attack(texts, [1, 1])):
        if r.success:
            original = AttackedText.from_text(text)
            final = original.replace_words({i: r.perturbed.split()[i] for i in r.changed})
            assert all(c.check(original, final) for c in tf.constraints)


def test_angular_similarity_and_textfoolers_window() -> None:
    """Angular similarity 1 - arccos(cos) / pi (TextAttack's metric for TextFooler): TextFooler's threshold of 0.5
    radians between the two embeddings is 0.840845057; its 15-word window is the word and 7 on each side, slid
    to stay inside the text, and a text shorter than the window is accepted without comparing."""
    from math import pi

    from mlsafety.robustness.text._resources import angular

    cos = torch.tensor([1.0, 0.0, -1.0, float(torch.cos(torch.tensor(0.5)))])
    assert angular(cos).tolist() == pytest.approx([1.0, 0.5, 0.0, 1 - 0.5 / pi], abs=1e-6)
    assert 1 - 0.5 / pi == pytest.approx(0.840845057, abs=1e-9)

    words = [f"w{k}" for k in range(30)]
    a = AttackedText.from_text(" ".join(words))
    assert a.window(10, 15) == " ".join(words[3:18])  # 7 before, 7 after
    assert a.window(2, 15) == " ".join(words[0:15]) and a.window(28, 15) == " ".join(words[15:30])

    class FixedCos:
        def __init__(self, value: float) -> None:
            self.value = value
            self.seen: list[tuple[str, str]] = []

        def cosine(self, x: Sequence[str], y: Sequence[str]) -> torch.Tensor:
            self.seen.extend(zip(x, y))
            return torch.full((len(x),), self.value)

    changed = a.replace_word(10, "v")
    just_above, just_below = float(torch.cos(torch.tensor(0.499))), float(torch.cos(torch.tensor(0.501)))
    assert C.SentenceSimilarity(FixedCos(just_above)).allows(a, [changed]) == [True]
    enc = FixedCos(just_below)
    assert C.SentenceSimilarity(enc).allows(a, [changed]) == [False]
    assert enc.seen == [(" ".join(words[3:18]), " ".join([*words[3:10], "v", *words[11:18]]))]
    short = AttackedText.from_text(" ".join(words[:14]))
    assert C.SentenceSimilarity(FixedCos(-1.0)).allows(short, [short.replace_word(3, "v")]) == [True]
    assert C.SentenceSimilarity(FixedCos(-1.0), skip_short=False).allows(short, [short.replace_word(3, "v")]) == [False]


def test_recipes_are_composed_with_the_papers_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """TextFooler (Jin et al. 2020 as TextAttack's recipe): 50 embedding neighbours, word cosine >= 0.5, POS with
    nouns and verbs interchangeable, no WordNet antonym (our departure; off with ``refuse_antonyms=False``),
    angular similarity >= 0.840845057 in 15-word windows against the text each step changes (short texts skipped),
    deletion ranking; PWWS: WordNet synonyms, probability-weighted saliency; DeepWordBug: the four character edits
    one each at random, edit distance <= 30, unknown-token ranking; all untargeted, stop words and repeats kept."""
    from mlsafety.robustness.text import pwws as pwws_module
    from mlsafety.robustness.text import search as S
    from mlsafety.robustness.text import textfooler

    # only the wiring is read: no MiniLM or WordNet load (the recipes load WordNet at build to fail early)
    monkeypatch.setattr(textfooler, "minilm_encoder", lambda: object())
    monkeypatch.setattr(textfooler, "wordnet", lambda: None)
    monkeypatch.setattr(pwws_module, "wordnet", lambda: None)
    model = sentiment_model()

    def parts(attack: T.Attack) -> dict[type, object]:
        return {type(c): c for c in attack.constraints}

    tf = T.create("textfooler", model)
    assert isinstance(tf.goal, T.Untargeted) and isinstance(tf.transformation, TR.EmbeddingSwap)
    assert tf.transformation.max_candidates == 50 and tf.transformation.min_cos == -1.0
    assert isinstance(tf.search, S.GreedyWordImportance) and tf.search.importance == "delete"
    c = parts(tf)
    assert set(c) == {
        C.RepeatModification, C.StopWords, C.WordEmbeddingDistance, C.PartOfSpeech, C.NoAntonym, C.SentenceSimilarity,
    }  # fmt: skip
    assert C.NoAntonym not in set(parts(T.create("textfooler", model, refuse_antonyms=False)))
    wed, pos, sim = c[C.WordEmbeddingDistance], c[C.PartOfSpeech], c[C.SentenceSimilarity]
    assert isinstance(wed, C.WordEmbeddingDistance) and wed.min_cos == 0.5
    assert isinstance(pos, C.PartOfSpeech) and pos.allow_noun_verb
    assert isinstance(sim, C.SentenceSimilarity)
    assert (sim.threshold, sim.metric, sim.window, sim.windows, sim.skip_short, sim.compare_against_original) == (
        0.840845057, "angular", 15, "last", True, False,
    )  # fmt: skip

    pwws = T.create("pwws", model)
    assert isinstance(pwws.goal, T.Untargeted) and isinstance(pwws.transformation, TR.WordNetSwap)
    assert pwws.transformation.max_candidates is None
    assert isinstance(pwws.search, S.GreedyWordImportance) and pwws.search.importance == "pwws"
    assert set(parts(pwws)) == {C.RepeatModification, C.StopWords}

    dwb = T.create("deepwordbug", model)
    assert isinstance(dwb.goal, T.Untargeted) and isinstance(dwb.transformation, TR.CharEdits)
    assert set(dwb.transformation.kinds) == set(TR.EDITS) and dwb.transformation.random_one
    assert isinstance(dwb.search, S.GreedyWordImportance) and dwb.search.importance == "unk"
    c = parts(dwb)
    assert set(c) == {C.RepeatModification, C.StopWords, C.EditDistance}
    ed = c[C.EditDistance]
    assert isinstance(ed, C.EditDistance) and ed.max_edits == 30
