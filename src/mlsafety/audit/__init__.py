"""The audit: check registry, engine, results store, HTML report and gates.

The library never imports this package; this package imports the library.
"""

from mlsafety.audit._check import (
    CHECKS,
    PILLARS,
    Artifact,
    Check,
    Headline,
    Row,
    StoredRow,
    Table,
    Task,
    TaskResult,
    register_check,
)
from mlsafety.audit._config import config_from_mapping, load_config
from mlsafety.audit._context import AuditContext, AuditData, hazard_provider
from mlsafety.audit._gates import Comparison, GateFailure, compare_rows, evaluate_gates, parse_gate_option
from mlsafety.audit._inputs import AuditConfig, resolve_data, resolve_model
from mlsafety.audit._store import Store


def run_audit(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Run an audit (see :func:`mlsafety.audit._engine.run_audit`); imported lazily with the checks."""
    from mlsafety.audit._engine import run_audit as _run

    return _run(*args, **kwargs)


def write_report(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Write a run's HTML report from the store (see :func:`mlsafety.audit._report.write_report`)."""
    from mlsafety.audit._report import write_report as _write

    return _write(*args, **kwargs)


__all__ = [
    "CHECKS",
    "PILLARS",
    "Artifact",
    "AuditConfig",
    "AuditContext",
    "AuditData",
    "Check",
    "Comparison",
    "GateFailure",
    "Headline",
    "Row",
    "Store",
    "StoredRow",
    "Table",
    "Task",
    "TaskResult",
    "compare_rows",
    "config_from_mapping",
    "evaluate_gates",
    "hazard_provider",
    "load_config",
    "parse_gate_option",
    "register_check",
    "resolve_data",
    "resolve_model",
    "run_audit",
    "write_report",
]
