"""Assertions shared by the command-line tests."""

import re

PROGRESS = re.compile(r"^(estimate: |  budget: |\[\d+/\d+\] |warning: the budget is too small)")
"""The audit's progress lines on stderr when not on a terminal (issue 22): the estimate before the first
task, the sizes a budget cut, one line per finished task. They precede an error raised mid-run."""


def without_progress(text):
    """The non-empty lines of ``text`` that are not progress lines."""
    return [line for line in text.splitlines() if line.strip() and not PROGRESS.match(line)]


def one_error_line(result, *needles):
    """The one ``error:`` line of a CLI result that exited 2 (after any progress lines), checked to contain
    every needle."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = without_progress(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def slow_model_source(delay: float) -> str:
    """A model file (``slow.py:slow``) whose every forward pass sleeps ``delay`` s, so a signal sent to an audit
    arrives while tasks remain."""
    return f"""
import time

import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        time.sleep({delay})
        return self.net(x)


def slow():
    return Slow()
"""
