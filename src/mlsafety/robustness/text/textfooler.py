"""TextFooler (Jin et al., "Is BERT Really Robust? A Strong Baseline for Natural Language Attack on Text
Classification and Entailment", AAAI 2020), as TextAttack's ``TextFoolerJin2019`` recipe composes it.

Words are ranked by the score gain of deleting them, then each in turn is replaced by the best of
its ``max_candidates`` nearest neighbours in a word-embedding space that keeps: stop words and
already-changed words untouched, word-vector cosine >= ``min_word_cos``, a shared part of speech
(nouns and verbs interchangeable), and windowed sentence similarity >= ``sim_threshold``, each step's window
against the text it changes (Jin et al.'s algorithm 1; TextAttack's ``compare_against_original=False``), not
against the original.

Deviations (the resources TextAttack downloads are not available offline):

- counter-fitted word vectors (Mrksic et al. 2016) -> the victim's (``embeddings="victim"``) or
  MiniLM's (``"minilm"``) input embeddings over whole-word vocabulary entries; cosine thresholds
  therefore mean something different (neighbours in a model's input space are often inflections);
- those input embeddings put antonyms close (``good`` / ``bad``, ``dry`` / ``wet``), which counter-fitting
  pushes apart (its WordNet and PPDB antonym pairs), so the recipe adds a constraint TextFooler does not
  have: no changed word is a WordNet antonym of the word it replaces (``NoAntonym``; ``refuse_antonyms=False``
  turns it off, for comparison). Sentiment flips WordNet does not list as antonyms (``bored`` -> ``fun``)
  still pass;
- the Universal Sentence Encoder -> the embedded MiniLM encoder (mean-pooled, angular similarity
  of the 15-word windows, TextAttack's threshold 0.840845057, texts shorter than the window
  accepted unchecked as in TextAttack's recipe);
- the context part-of-speech tagger -> WordNet's synset parts of speech (see ``PartOfSpeech``);
- stop words: scikit-learn's English list plus clitics, not TextFooler's own list.

``min_word_cos=0.9, sim_threshold=0.98, metric cosine`` approximates Morris et al. 2020's
human-calibrated constraints ("Reevaluating Adversarial Examples in Natural Language", Findings
of EMNLP 2020; their grammar checker is not available here).
"""

from __future__ import annotations

from typing import Literal

from mlsafety.core import ModelLike, Param, as_classifier
from mlsafety.robustness.text._base import Attack, check_text_classifier
from mlsafety.robustness.text._recipe import Recipe, register_text_attack
from mlsafety.robustness.text._resources import minilm_encoder, minilm_similarity, wordnet
from mlsafety.robustness.text.constraints import (
    NoAntonym,
    PartOfSpeech,
    RepeatModification,
    SentenceSimilarity,
    StopWords,
    WordEmbeddingDistance,
)
from mlsafety.robustness.text.goals import Untargeted
from mlsafety.robustness.text.search import GreedyWordImportance
from mlsafety.robustness.text.transformations import EmbeddingSwap, word_vectors


@register_text_attack("textfooler", tags=("black-box", "word-level"))
class TextFooler(Recipe):
    """TextFooler (Jin et al. 2020); see the module docstring for its parts and deviations."""

    embeddings = Param(
        "victim", str, choices=("victim", "minilm"), doc="word vectors: the victim's or MiniLM's input embeddings"
    )
    max_candidates = Param(50, int, low=1, doc="nearest neighbours tried per word")
    min_word_cos = Param(0.5, float, low=-1, high=1, doc="cosine of original and new word vectors at least")
    sim_threshold = Param(0.840845057, float, low=-1, high=1, doc="windowed sentence similarity at least")
    sim_metric = Param("angular", str, choices=("angular", "cosine"), doc="sentence similarity: angular or cosine")
    window = Param(15, int, low=1, doc="words in the sentence-similarity window")
    refuse_antonyms = Param(True, bool, doc="refuse a swap for a WordNet antonym (NoAntonym; False: the old recipe)")

    def build(self, model: ModelLike) -> Attack:
        clf = as_classifier(model)
        check_text_classifier(clf, "textfooler")
        wordnet()  # the part-of-speech constraint reads WordNet: a missing package is one line, now
        vectors = word_vectors(self.embeddings, clf)
        encoder = minilm_encoder()
        metric: Literal["angular", "cosine"] = "angular" if self.sim_metric == "angular" else "cosine"
        constraints = [
            RepeatModification(),
            StopWords(),
            WordEmbeddingDistance(vectors, self.min_word_cos),
            PartOfSpeech(allow_noun_verb=True),
            *([NoAntonym()] if self.refuse_antonyms else []),
            SentenceSimilarity(encoder, self.sim_threshold, metric, self.window, compare_against_original=False),
        ]
        return Attack(
            clf,
            Untargeted(),
            EmbeddingSwap(vectors, self.max_candidates),
            constraints,
            GreedyWordImportance("delete"),
            query_budget=self.query_budget,
            batch_size=self.batch_size,
            similarity=minilm_similarity,
            seed=self.seed,
            name="textfooler",
        )
