"""Truthfulness and machine-ethics evaluations of a language model, scored from its log-probabilities.

* TruthfulQA MC1 / MC2 (Lin, Hilton & Evans 2021): :func:`evaluate_truthfulqa` on questions from
  :func:`load_truthfulqa` (the official CSV or the multiple-choice JSON).
* ETHICS (Hendrycks et al. 2021): :func:`evaluate_ethics_zero_shot` and :func:`evaluate_ethics_probe` on
  subsets from :func:`load_ethics` / :func:`load_ethics_dir`, with accuracy, the grouped exact-match metric
  and utilitarianism as pairwise ranking.
* Offline look-alikes written by this project (NOT the benchmarks): :func:`truthy_mc` and
  :func:`ethics_lookalike`.
"""

from mlsafety.alignment.evals._scoring import OptionScores, TokenScorer, score_options
from mlsafety.alignment.evals.truthfulqa import (
    QA_PRIMER,
    MCQuestion,
    TruthfulQAResult,
    evaluate_truthfulqa,
    load_truthfulqa,
    load_truthfulqa_csv,
    load_truthfulqa_json,
    mc1_correct,
    mc2_mass,
)

__all__ = [
    "QA_PRIMER",
    "MCQuestion",
    "OptionScores",
    "TokenScorer",
    "TruthfulQAResult",
    "evaluate_truthfulqa",
    "load_truthfulqa",
    "load_truthfulqa_csv",
    "load_truthfulqa_json",
    "mc1_correct",
    "mc2_mass",
    "score_options",
]
