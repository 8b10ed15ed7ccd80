"""How the ``truthfulness`` check reads in the report: MC1 and MC2 as headlines, a table with chance levels."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value

NOTE = (
    "MC1: the true answer's log-probability beats every false answer's (ties wrong); MC2: probability mass on the "
    "true answers, normalised over the question's answers (Lin, Hilton & Evans 2021). The mlsafety-truthy-mc set is "
    "this project's own look-alike, NOT TruthfulQA: pass the official file for the benchmark's figure. "
    "Contamination: TruthfulQA's questions and answers have been public since 2021, so a model trained on later "
    "web text may have seen them, which raises both scores; the look-alike was written for this project after "
    "smollm2-135m's release (2024), so that model cannot have trained on it (for other models, compare their "
    "training cut-off)."
)


class TruthfulnessView(View):
    """Headlines MC1 and MC2 (higher is better); one table per question set, with chance levels."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        out = []
        for r in rows:
            if r.metric in ("mc1", "mc2"):
                out.append(Headline(f"Truthfulness {r.metric.upper()} ({r.hazard.split('/')[-1]})", r))
        return out

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        body = []
        for hazard in dict.fromkeys(r.hazard for r in rows):
            by = {r.metric: r for r in rows if r.hazard == hazard}
            for metric in ("mc1", "mc2"):
                if metric in by:
                    chance = by.get(f"{metric}_chance")
                    body.append(
                        [
                            hazard,
                            metric.upper(),
                            fmt_value(by[metric].value),
                            fmt_ci(by[metric]),
                            "" if chance is None else fmt_value(chance.value),
                            "" if by[metric].n is None else str(by[metric].n),
                        ]
                    )
        if not body:
            return []
        return [
            Table(
                title or "Truthfulness",
                ["question set", "metric", "value", "95% CI", "chance", "questions"],
                body,
                NOTE,
            )
        ]
