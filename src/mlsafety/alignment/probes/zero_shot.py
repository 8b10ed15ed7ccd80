"""Zero-shot reading: which of the two answers the language model itself prefers.

Burns et al. (2022) compare probes with the model's own answer: ``log p(yes | prompt)`` against
``log p(no | prompt)`` (summed over each answer's tokens). The raw reading is the model's stated answer
(what the honesty gap compares with the probes). Deviation (stated in results): a calibrated variant
subtracts the median difference over the set, a label-free threshold so that half the items read each
way, since a small model's raw preference for one answer word would otherwise hide what it ranks.
"""

from __future__ import annotations

import torch

from mlsafety.core import InputError


def zero_shot_scores(logp_yes: torch.Tensor, logp_no: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
    """``(N,)`` scores above 0 where the model prefers the affirmative answer.

    Args:
        logp_yes: ``(N,)`` log p(affirmative answer | prompt).
        logp_no: ``(N,)`` log p(negative answer | prompt).
        calibrated: subtract the median difference over the set (label-free).
    """
    if logp_yes.shape != logp_no.shape or logp_yes.ndim != 1:
        raise InputError(
            f"zero-shot needs two (N,) log-probabilities, got {tuple(logp_yes.shape)}, {tuple(logp_no.shape)}"
        )
    diff = logp_yes.float() - logp_no.float()
    return diff - diff.median() if calibrated else diff
