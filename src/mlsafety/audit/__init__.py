"""The audit: check registry, engine, results store, HTML report and gates.

The library never imports this package; this package imports the library.
"""

from mlsafety.audit._budget import BUDGET_NOT_MEASURED, fmt_duration, parse_duration
from mlsafety.audit._check import (
    CHECKS,
    NOT_APPLICABLE,
    PILLARS,
    TRUNCATED,
    Artifact,
    Check,
    Headline,
    Row,
    StoredRow,
    Table,
    Task,
    TaskResult,
    fmt_ci,
    fmt_value,
    register_check,
)
from mlsafety.audit._config import config_from_mapping, load_config
from mlsafety.audit._context import AuditContext, AuditData, hazard_provider

# Last: the engine and the report import every check module, and check modules may import the
# names above from this package.
from mlsafety.audit._engine import (
    PLAN_CHECK,
    AuditInterrupted,
    AuditResult,
    budget_cuts,
    budget_stopped,
    cap_data,
    run_audit,
)
from mlsafety.audit._executors import EXECUTORS, INSTALL_RAY, LocalExecutor, RayExecutor, make_executor
from mlsafety.audit._fingerprint import input_changes
from mlsafety.audit._gates import Comparison, GateFailure, compare_rows, evaluate_gates, parse_gate_option
from mlsafety.audit._inputs import (
    AuditConfig,
    is_language_model,
    load_scorer,
    prepare_inputs,
    resolve_data,
    resolve_language_model,
    resolve_model,
)
from mlsafety.audit._many import run_many
from mlsafety.audit._report import render_report, write_report
from mlsafety.audit._settings import SettingsDiff, row_setting_diff, settings_diff
from mlsafety.audit._store import Store, default_db_path, refuse_db_as_output
from mlsafety.audit.views.defence_in_depth import fmea_report_table
from mlsafety.audit.views.proxy_gaming import curve_png
from mlsafety.audit.views.transparency import heatmap_png

__all__ = [
    "BUDGET_NOT_MEASURED",
    "CHECKS",
    "EXECUTORS",
    "INSTALL_RAY",
    "NOT_APPLICABLE",
    "PILLARS",
    "PLAN_CHECK",
    "TRUNCATED",
    "Artifact",
    "AuditConfig",
    "AuditContext",
    "AuditData",
    "AuditInterrupted",
    "AuditResult",
    "Check",
    "Comparison",
    "GateFailure",
    "Headline",
    "LocalExecutor",
    "RayExecutor",
    "Row",
    "SettingsDiff",
    "Store",
    "StoredRow",
    "Table",
    "Task",
    "TaskResult",
    "budget_cuts",
    "budget_stopped",
    "cap_data",
    "compare_rows",
    "config_from_mapping",
    "curve_png",
    "default_db_path",
    "evaluate_gates",
    "fmea_report_table",
    "fmt_ci",
    "fmt_duration",
    "fmt_value",
    "hazard_provider",
    "heatmap_png",
    "input_changes",
    "is_language_model",
    "load_config",
    "load_scorer",
    "make_executor",
    "parse_duration",
    "parse_gate_option",
    "prepare_inputs",
    "refuse_db_as_output",
    "register_check",
    "render_report",
    "resolve_data",
    "resolve_language_model",
    "resolve_model",
    "row_setting_diff",
    "run_audit",
    "run_many",
    "settings_diff",
    "write_report",
]
