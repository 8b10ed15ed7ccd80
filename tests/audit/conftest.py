from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest

from mlsafety.audit import CHECKS, Check, Row, Task, TaskResult, register_check


@pytest.fixture
def counting_check() -> Iterator[type[Check]]:
    """A temporary three-task check that records which tasks ran and can crash on demand."""

    @register_check("test-counting")
    class Counting(Check):
        pillar = "performance"
        title = "counting"
        crash_at = -1  # a class switch, not a parameter, so the run's fingerprint stays the same
        calls: ClassVar[list[str]] = []

        def tasks(self, ctx):  # type: ignore[no-untyped-def]
            def make(i: int) -> Task:
                def run() -> TaskResult:
                    if i == Counting.crash_at:
                        raise RuntimeError("simulated crash")
                    Counting.calls.append(f"t{i}")
                    g = ctx.generator("counting", i)
                    import torch

                    return TaskResult([Row("clean", f"value_{i}", float(torch.rand(1, generator=g)), kind="setting")])

                return Task(f"t{i}", run)

            return [make(i) for i in range(3)]

    try:
        yield Counting
    finally:
        CHECKS._entries.pop("test-counting", None)


@pytest.fixture(scope="session")
def quick_audit(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One quick audit of the embedded default with every registered check, shared by the tests."""
    from mlsafety.audit import AuditConfig, run_audit

    folder = tmp_path_factory.mktemp("quick-audit")
    checks = [c for c in CHECKS.available() if not c.startswith("test-")]
    result = run_audit(AuditConfig(quick=True, checks=checks), db=folder / "runs.sqlite", report=folder / "report.html")
    return folder, result
