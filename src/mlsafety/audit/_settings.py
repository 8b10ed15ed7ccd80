"""What two runs were measured with, and where it differs: ``compare`` compares like with like.

A run records its configuration (``RunInfo.config``) and, since issue 22, the parameters every
check ran with after the profile (``--quick``) and the budget (``--budget``, ``--max-samples``) were
applied (``effective_params``). Two runs whose settings differ measure different things (other sample
sizes, attack steps, severities...): a difference in such a check's numbers may be caused by the
settings, not by the model, so ``compare`` names the settings that differ and does not count those
checks' changes as regressions unless asked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RUN_WIDE = ("seed", "quick", "budget", "max_samples")
"""Run settings that change what every check measures (a profile, the sample sizes, every random draw)."""

ROW_SETTINGS = ("detector",)
"""Row parameters that say what a metric measures: the ``ood`` check's plain keys (``ood/<set>/auroc``)
hold the monitored detector, which a run chooses (Energy in runs made before the choice existed). Two
rows of one key with different values here measure different things: a settings difference, not a change
of the model."""


def row_setting_diff(a: Any, b: Any) -> str | None:
    """``param: a -> b`` when stored rows ``a`` and ``b`` (of one key) differ in a :data:`ROW_SETTINGS`
    parameter, else None."""
    pa, pb = getattr(a, "params", None) or {}, getattr(b, "params", None) or {}
    for key in ROW_SETTINGS:
        if key in pa and key in pb and _show(pa[key]) != _show(pb[key]):
            return f"{key}: {_show(pa[key])} -> {_show(pb[key])}"
    return None


@dataclass(frozen=True)
class SettingsDiff:
    """The settings two runs differ in.

    Attributes:
        run_wide: ``setting: a -> b`` for each run-wide setting that differs (:data:`RUN_WIDE`).
        by_check: check name -> ``param: a -> b`` lines, for each check whose effective parameters differ.
        sample_sizes: ``check: param: a -> b`` for sample sizes that differ only because one ``--budget``
            (the same in both runs) chose them from each run's measured costs: the estimates measure the
            same thing at another precision, which their intervals carry, so these touch no check.
    """

    run_wide: list[str] = field(default_factory=list)
    by_check: dict[str, list[str]] = field(default_factory=dict)
    sample_sizes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.run_wide or self.by_check)

    def affects(self, check: str) -> bool:
        """Whether ``check``'s numbers may differ because of the settings (run-wide ones touch every check)."""
        return bool(self.run_wide) or check in self.by_check

    def lines(self) -> list[str]:
        """One line per differing setting, run-wide first."""
        out = list(self.run_wide)
        for check, diffs in sorted(self.by_check.items()):
            out += [f"{check}: {d}" for d in diffs]
        return out


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def effective_params(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every check's parameters as a run recorded them; for runs stored before they were recorded,
    rebuilt from the profile (``quick``) and the user's ``check_params`` with today's defaults."""
    recorded = config.get("effective_params")
    if isinstance(recorded, dict):
        return {k: dict(v) for k, v in recorded.items()}
    from mlsafety.audit._check import CHECKS

    quick = bool(config.get("quick", False))
    given: dict[str, dict[str, Any]] = config.get("check_params") or {}
    names = config.get("checks") or CHECKS.available()
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in CHECKS:
            try:
                out[name] = CHECKS.create(name, quick=quick, **given.get(name, {})).params
            except Exception:
                out[name] = {"quick": quick, **given.get(name, {})}
    return out


def settings_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> SettingsDiff:
    """The settings in which run configurations ``a`` and ``b`` (``RunInfo.config``) differ."""
    run_wide = [
        f"{key}: {_show(a.get(key))} -> {_show(b.get(key))}"
        for key in RUN_WIDE
        if _show(a.get(key)) != _show(b.get(key))
    ]
    pa, pb = effective_params(a), effective_params(b)
    planned = _budget_sizes(a, b)
    by_check: dict[str, list[str]] = {}
    sizes: list[str] = []
    for check in sorted(set(pa) & set(pb)):
        keys = sorted(set(pa[check]) | set(pb[check]))
        diffs = [k for k in keys if _show(pa[check].get(k)) != _show(pb[check].get(k))]
        lines = [f"{k}: {_show(pa[check].get(k))} -> {_show(pb[check].get(k))}" for k in diffs]
        if diffs and all((check, k) in planned for k in diffs):
            sizes += [f"{check}: {line}" for line in lines]
        elif diffs:
            by_check[check] = lines
    return SettingsDiff(run_wide, by_check, sizes)


def _budget_sizes(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The ``(check, param)`` sample sizes both runs' budget plans chose, from the same configured size,
    under the same ``--budget`` (none when the budgets differ or a run has none). A knob counting
    optimisation steps (``*_steps``) is left out: fewer steps change what is measured, not its precision."""
    if a.get("budget") is None or _show(a.get("budget")) != _show(b.get("budget")):
        return set()

    def knobs(config: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
        plan = config.get("plan")
        rows = plan.get("knobs", []) if isinstance(plan, dict) else []
        return {(str(k.get("check")), str(k.get("param"))): k.get("configured") for k in rows if isinstance(k, dict)}

    ka, kb = knobs(a), knobs(b)
    return {key for key in ka.keys() & kb.keys() if ka[key] == kb[key] and not key[1].endswith("_steps")}


__all__ = ["ROW_SETTINGS", "RUN_WIDE", "SettingsDiff", "effective_params", "row_setting_diff", "settings_diff"]
