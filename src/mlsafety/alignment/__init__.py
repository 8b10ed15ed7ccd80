"""Alignment: does the model say what it knows? Hidden-state probes on contrast pairs, and evaluations.

Probes live in :mod:`mlsafety.alignment.probes` (one method per file); :func:`answer_states` reads every
layer's residual stream at an answer's last token and the answer's log-probability from one forward pass.
"""

from mlsafety.alignment._hidden import AnswerStates, answer_states, check_hidden_access
from mlsafety.alignment._statements import STATEMENTS_SOURCE, Statement, project_statements

__all__ = [
    "STATEMENTS_SOURCE",
    "AnswerStates",
    "Statement",
    "answer_states",
    "check_hidden_access",
    "project_statements",
]
