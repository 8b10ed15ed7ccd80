"""Truthfulness and machine-ethics evaluations of a language model, scored from its log-probabilities.

* TruthfulQA MC1 / MC2 (Lin, Hilton & Evans 2021): :func:`evaluate_truthfulqa` on questions from
  :func:`load_truthfulqa` (the official CSV or the multiple-choice JSON).
* ETHICS (Hendrycks et al. 2021): :func:`evaluate_ethics` (zero-shot and probe scores from one set of passes) on
  subsets from :func:`load_ethics` / :func:`load_ethics_dir`, with accuracy, the grouped exact-match metric
  and utilitarianism as pairwise ranking.
* Offline look-alikes written by this project (NOT the benchmarks): :func:`truthy_mc` and
  :func:`ethics_lookalike`.
"""

from mlsafety.alignment.evals._lookalikes import ETHICS_LOOKALIKE, TRUTHY_MC, ethics_lookalike, truthy_mc
from mlsafety.alignment.evals._scoring import (
    REDUCTIONS,
    OptionScores,
    Reduction,
    TokenScorer,
    check_fits,
    score_options,
)
from mlsafety.alignment.evals.ethics import (
    ANSWERS,
    GROUP_SIZE,
    SUBSETS,
    TEMPLATES,
    EthicsScore,
    EthicsSubset,
    complete_groups,
    ethics_prompts,
    ethics_texts,
    evaluate_ethics,
    evaluate_ethics_all,
    grouped_exact_match,
    load_ethics,
    load_ethics_dir,
    pairwise_correct,
)
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
    score_truthfulqa,
    truthfulqa_result,
    truthfulqa_texts,
)

__all__ = [
    "ANSWERS",
    "ETHICS_LOOKALIKE",
    "GROUP_SIZE",
    "QA_PRIMER",
    "REDUCTIONS",
    "SUBSETS",
    "TEMPLATES",
    "TRUTHY_MC",
    "EthicsScore",
    "EthicsSubset",
    "MCQuestion",
    "OptionScores",
    "Reduction",
    "TokenScorer",
    "TruthfulQAResult",
    "check_fits",
    "complete_groups",
    "ethics_lookalike",
    "ethics_prompts",
    "ethics_texts",
    "evaluate_ethics",
    "evaluate_ethics_all",
    "evaluate_truthfulqa",
    "grouped_exact_match",
    "load_ethics",
    "load_ethics_dir",
    "load_truthfulqa",
    "load_truthfulqa_csv",
    "load_truthfulqa_json",
    "mc1_correct",
    "mc2_mass",
    "pairwise_correct",
    "score_options",
    "score_truthfulqa",
    "truthfulqa_result",
    "truthfulqa_texts",
    "truthy_mc",
]
