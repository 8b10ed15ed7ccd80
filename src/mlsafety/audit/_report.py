"""The self-contained HTML report, built from the results store alone.

No network fetches: CSS is inline and every image is a ``data:`` URI. Jinja2 autoescaping escapes
every user-supplied string (model and data names, hazards, captions).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from mlsafety.audit import checks as _checks  # noqa: F401  (registers every check)
from mlsafety.audit._check import CHECKS, PILLARS, Check, StoredRow, Table, fmt_ci, fmt_value
from mlsafety.audit._gates import evaluate_gates
from mlsafety.audit._store import Store
from mlsafety.core import InputError, MlsafetyError

HEADINGS = {
    "performance": ("Model", "How well the model does on the data it was built for."),
    "systemic": (
        "Systemic safety",
        "Defence in depth: under each hazard, how often the model fails and the monitor "
        "lets the failure through, and the failure modes ranked by risk.",
    ),
    "robustness": ("Robustness", "Does the model keep working under adversarial and natural stress?"),
    "monitoring": (
        "Monitoring",
        "Can the system tell when an input is unlike its training data, when its answer is "
        "likely wrong, or when the model hides a trojan? Are its confidences honest?",
    ),
    "alignment": ("Alignment", "Does the model say what it knows, and does it know human values?"),
}
SECTION_ORDER = ("systemic", "performance", "robustness", "monitoring", "alignment")
"""Systemic first: the residual risk of the whole system is what a person signing off reads first."""
assert set(SECTION_ORDER) == set(PILLARS)


@dataclass
class _Image:
    name: str
    mime: str
    caption: str
    b64: str


def _check_class(name: str) -> type[Check] | None:
    return CHECKS.get(name) if name in CHECKS else None


def input_notes(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The lines on what the audit decided about the model and data, from the run record's ``notes``
    (``audit/_inputs.py:input_notes``): the head / features layer chosen, the class mapping used, conversions,
    and a warning when test accuracy is far below validation accuracy from another source."""
    notes = config.get("notes")
    if not isinstance(notes, list):
        return []
    return [
        {"label": str(n.get("label", "")), "text": str(n.get("text", "")), "warning": bool(n.get("warning"))}
        for n in notes
        if isinstance(n, dict)
    ]


def render_report(store: Store, run_id: str) -> str:
    """The report of ``run_id`` as an HTML string."""
    run = store.run(run_id)
    rows = store.results(run.run_id)
    artifacts = store.artifacts(run.run_id)
    seconds = store.task_seconds(run.run_id)
    by_check: dict[str, list[StoredRow]] = {}
    for r in rows:
        by_check.setdefault(r.check, []).append(r)
    check_names = list(dict.fromkeys([r.check for r in rows] + [c for c, _ in artifacts] + list(seconds)))

    gates_cfg = run.config.get("gates", {})
    headlines: list[dict[str, Any]] = []
    sections: dict[str, list[dict[str, Any]]] = {p: [] for p in SECTION_ORDER}
    for name in check_names:
        cls = _check_class(name)
        crow = by_check.get(name, [])
        pillar = cls.pillar if cls else "performance"
        for h in cls.headlines(crow) if cls else []:
            headlines.append(
                {
                    "order": SECTION_ORDER.index(pillar),
                    "check": name,
                    "label": h.label,
                    "key": h.row.key,
                    "value": fmt_value(h.row.value),
                    "ci": fmt_ci(h.row),
                    "kind": h.row.kind,
                    "n": h.row.n,
                    "direction": "higher is better" if h.higher_is_better else "lower is better",
                    "failed": False,
                }
            )
        tables: list[Table] = cls.tables(crow) if cls else Check.tables(crow)
        order = list(getattr(cls.view, "artifact_order", ())) if cls else []
        mine = [a for c, a in artifacts if c == name and a.mime.startswith("image/")]
        mine.sort(key=lambda a: order.index(a.name) if a.name in order else len(order))  # stable: the rest as stored
        images = [_Image(a.name, a.mime, a.caption, base64.b64encode(a.data).decode()) for a in mine]
        # HTML a view draws from its other artifacts (e.g. highlighted text); the view escapes every string.
        draw = getattr(cls.view, "html_fragments", None) if cls else None
        fragments = [Markup(f) for f in draw([a for c, a in artifacts if c == name])] if draw else []
        # a view may title the section by what was run (e.g. transparency on a language model)
        own = getattr(cls.view, "section_text", None) if cls else None
        title, description = (own(crow) if own else None) or (cls.title if cls and cls.title else name,
                                                              cls.description if cls else "")  # fmt: skip
        sections[pillar].append(
            {
                "name": name,
                "title": title,
                "description": description,
                "seconds": seconds.get(name),
                "images": images,
                "fragments": fragments,
                "tables": tables,
            }
        )
    headlines.sort(key=lambda card: card["order"])  # stable: checks keep their order within a pillar
    gates = []
    try:
        failures = evaluate_gates(rows, gates_cfg.get("fail_under", {}), gates_cfg.get("fail_over", {}))
        failed_keys = {f.key for f in failures}
        for kind, bounds in (
            ("fail_under", gates_cfg.get("fail_under", {})),
            ("fail_over", gates_cfg.get("fail_over", {})),
        ):
            for key, bound in bounds.items():
                gates.append({"text": f"{key} {'>=' if kind == 'fail_under' else '<='} {bound:g}", "failed": False})
        for f in failures:
            gates.append({"text": f"FAILED: {f}", "failed": True})
        for card in headlines:
            card["failed"] = card["key"] in failed_keys
    except MlsafetyError as exc:
        gates.append({"text": f"gates not evaluated: {exc}", "failed": True})

    env = Environment(loader=PackageLoader("mlsafety.audit", "templates"), autoescape=select_autoescape(["html"]))
    template = env.get_template("report.html")
    return template.render(
        run=run,
        created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.created)),
        profile="quick" if run.config.get("quick") else "full",
        n_rows=len(rows),
        input_notes=input_notes(run.config),
        headlines=headlines,
        gates=gates,
        sections=[
            {"pillar": p, "heading": HEADINGS[p][0], "blurb": HEADINGS[p][1], "checks": sections[p]}
            for p in SECTION_ORDER
        ],
        config_json=json.dumps(run.config, sort_keys=True),
        unfinished=None
        if run.status == "complete"
        else {"status": run.status, "tasks": len(store.done_tasks(run.run_id))},
    )


def default_report_path(run_id: str) -> Path:
    return Path("reports") / f"mlsafety-{run_id}.html"


def write_report(store: Store, run_id: str, path: Path | None = None) -> Path:
    """Render the report and write it atomically (a temporary file renamed into place).

    On any failure (a full disk, a read-only folder, an interruption) the temporary file is removed,
    so either the whole report is in place or nothing new is.
    """
    html = render_report(store, run_id)
    path = path or default_report_path(store.run(run_id).run_id)
    if path.is_dir():
        raise InputError(f"cannot write the report to {path}: it is a folder; pass a file path")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        _remove(tmp)
        fix = "free some space, or write it elsewhere" if exc.errno == errno.ENOSPC else "write it elsewhere"
        raise InputError(f"cannot write the report to {path}: {exc.strerror or exc}; {fix}") from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
