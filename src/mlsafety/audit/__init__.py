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
from mlsafety.audit._context import AuditContext, AuditData, hazard_provider

__all__ = [
    "CHECKS",
    "PILLARS",
    "Artifact",
    "AuditContext",
    "AuditData",
    "Check",
    "Headline",
    "Row",
    "StoredRow",
    "Table",
    "Task",
    "TaskResult",
    "hazard_provider",
    "register_check",
]
