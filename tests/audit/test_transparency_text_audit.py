"""The ``transparency`` check on a text model (tiny BERT): rows, highlighted sentences, escaping, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlsafety.audit import CHECKS, AuditContext, AuditData
from mlsafety.audit._check import StoredRow
from mlsafety.audit._report import render_report
from mlsafety.audit._store import Store
from mlsafety.audit.views.transparency import TEXT_SALIENCY_MIME, highlight_sentence, text_saliency_html
from mlsafety.core import Classifier, TextDataset
from tests.support.text import tiny_bert_classifier, tiny_text_dataset


def _run_tasks(check, ctx):  # type: ignore[no-untyped-def]
    """Every task of the check (sanity, examples, visualisations) run as the engine runs them, as one result."""
    from mlsafety.audit import TaskResult

    out = TaskResult()
    for r in check.run_tasks(ctx):
        out.rows += r.rows
        out.artifacts += r.artifacts
    return out


@pytest.fixture(scope="module")
def checked():  # type: ignore[no-untyped-def]
    """The check and what it produced (run once for the module: it is the slow part)."""
    import mlsafety.audit.checks  # noqa: F401  (registers the checks)

    test = tiny_text_dataset(n=24, seed=3)
    odd = ["<script>alert(1)</script> is it", "q: the red cat ?"]
    ood = {"odd": TextDataset(odd, torch.full((2,), -1), name="odd", kind="ood")}
    ctx = AuditContext(Classifier(tiny_bert_classifier(num_labels=2, seed=0)), AuditData(test, test, ood=ood))
    check = CHECKS.create(
        "transparency",
        text_methods=["saliency", "integrated-gradients", "occlusion"],
        examples=2,
        text_sanity_inputs=4,
        text_sanity_modes=["cascading"],
    )
    return check, _run_tasks(check, ctx)


def test_the_check_runs_on_text_and_stores_rows_like_for_images(checked) -> None:  # type: ignore[no-untyped-def]
    check, result = checked
    rows = {r.metric: r for r in result.rows}
    for name in ("saliency", "integrated_gradients", "occlusion"):
        assert f"{name}_cascading_spearman" in rows and f"{name}_cascading_pass" in rows
        r = rows[f"{name}_cascading_spearman"]
        assert r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.value <= r.ci_high and r.n == 4
        assert f"{name}_cascading_ssim" not in rows  # SSIM is an image measure
        assert r.params["stages"] == ["classifier", "bert.pooler", "bert.encoder.layer.1", "bert.encoder.layer.0",
                                      "bert.embeddings"]  # fmt: skip
    assert 0 <= rows["sanity_pass_share"].value <= 1 and rows["ig_completeness_gap"].value < 0.05
    assert "class_visualisation_confidence" not in rows
    names = {a.name: a for a in result.artifacts}
    assert {"sanity-checks", "text-saliency-correct", "text-saliency-ood-odd"} <= set(names)
    payload = json.loads(names["text-saliency-correct"].data)
    assert names["text-saliency-correct"].mime == TEXT_SALIENCY_MIME and payload["method"] == "integrated-gradients"
    ex = payload["examples"][0]
    assert ex["label"] == ex["pred"] and [w[0] for w in ex["words"]] == ex["text"].split()
    stored = [StoredRow("transparency", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params), r.kind)
              for r in result.rows]  # fmt: skip
    table = check.tables(stored)[0]
    assert table.headers == ["method", "cascading Spearman", "cascading verdict"]
    html = "".join(check.view.html_fragments(result.artifacts))  # type: ignore[attr-defined]
    assert html.count('<span class="tok"') >= sum(len(e["words"]) for e in payload["examples"])


def test_the_view_escapes_every_string_of_a_sentence() -> None:
    text = 'x <script>alert("x")</script> & y'
    words = [["x", 0.5, 0, 1], ['<script>alert("x")</script>', -1.0, 2, 30], ["&", 0.1, 31, 32], ["y", 0.0, 33, 34]]
    for ws in (words, [w[:2] for w in words]):  # with and without character offsets
        out = highlight_sentence(text, ws)
        assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;" in out
    example = {"text": text, "label": 1, "pred": "<p>", "words": words}
    fragment = text_saliency_html({"group": "<b>g</b>", "method": "<i>m</i>", "examples": [example]})
    assert "<script>" not in fragment and "<b>g</b>" not in fragment and "<i>m</i>" not in fragment
    assert "<p>" not in fragment.replace('<p class="', "")
    # The strongest word is fully coloured (against: blue), a zero word is transparent.
    assert "rgba(38,110,214,0.85)" in highlight_sentence(text, words) and "0.00)" in highlight_sentence(text, words)


def test_the_report_shows_highlighted_sentences_escaped(checked, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, result = checked
    store = Store(tmp_path / "runs.sqlite")
    run_id = store.create_run("tiny-bert", "tiny-text", 0, "fp", {}, "test")
    store.write_task(run_id, "transparency", "transparency", result.rows, result.artifacts, 1.0)
    store.finish_run(run_id)
    html = render_report(store, run_id)
    assert '<div class="text-saliency">' in html and html.count('class="tok"') > 4
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'src="http' not in html and "<link" not in html  # no network assets


def test_a_model_that_gets_nothing_right_still_shows_its_mistakes() -> None:
    """With no correct test input, the sanity checks and the correct examples are skipped with a stored
    reason (they used to end the run with 'no texts to encode'); misclassified and OOD sentences are shown."""
    import mlsafety.audit.checks  # noqa: F401  (registers the checks)

    model = Classifier(tiny_bert_classifier(num_labels=2, seed=0))
    data = tiny_text_dataset(n=12, seed=3)
    from mlsafety.core import forward

    wrong = TextDataset(list(data.x), 1 - forward(model, data.x, features=False).pred.cpu(), name="wrong")
    ood = {"odd": TextDataset(["the red cat", "q: a dog ?"], torch.full((2,), -1), name="odd", kind="ood")}
    ctx = AuditContext(model, AuditData(wrong, wrong, ood=ood))
    check = CHECKS.create("transparency", text_methods=["saliency"], examples=2)
    result = _run_tasks(check, ctx)
    rows = {r.metric: r for r in result.rows}
    assert "no test input is classified correctly" in str(rows["sanity_not_run"].params["reason"])
    assert rows["correct_examples_not_shown"].params["group"] == "correct"
    assert "sanity_pass_share" not in rows and "ig_completeness_gap" not in rows
    names = {a.name for a in result.artifacts}
    assert names == {"text-saliency-misclassified", "text-saliency-ood-odd"}
    stored = [StoredRow("transparency", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params), r.kind)
              for r in result.rows]  # fmt: skip
    (table,) = [t for t in check.tables(stored) if t.title == "Not shown"]
    assert [row[0] for row in table.rows] == ["sanity checks", "correct"]


def test_an_empty_ood_group_is_not_drawn_but_said() -> None:
    import mlsafety.audit.checks  # noqa: F401

    test = tiny_text_dataset(n=8, seed=3)
    ood = {"none": TextDataset([], torch.zeros(0, dtype=torch.long), name="none", kind="ood")}
    ctx = AuditContext(Classifier(tiny_bert_classifier(num_labels=2, seed=0)), AuditData(test, test, ood=ood))
    check = CHECKS.create("transparency", text_methods=["saliency"], examples=2, text_sanity_inputs=2)
    result = _run_tasks(check, ctx)
    assert {r.metric: r for r in result.rows}["ood_examples_not_shown"].hazard == "ood/none"
    assert "text-saliency-ood-none" not in {a.name for a in result.artifacts}


BAD_SETTINGS = {
    "label randomisation": ('text_sanity_modes = ["label"]', "label randomisation is not available for text"),
    "unknown text_method": ('text_method = "salency"', "unknown attribution 'salency'"),
    "unknown text_methods": ('text_methods = ["saliency", "nope"]', "'nope'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_text_settings_are_refused_before_a_run_is_stored(tmp_path: Path, case: str) -> None:
    import sqlite3

    from click.testing import CliRunner

    from mlsafety.cli import main
    from tests.audit.test_text_audit import save_model, write_csv
    from tests.support.text import tiny_sentences

    setting, needle = BAD_SETTINGS[case]
    save_model(tmp_path / "model")
    write_csv(tmp_path / "data.csv", *tiny_sentences(12, seed=4))
    (tmp_path / "c.toml").write_text(f'checks = ["transparency"]\n[params.transparency]\n{setting}\n')
    db = tmp_path / "runs.sqlite"
    args = ["audit", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.csv"),
            "--config", str(tmp_path / "c.toml"), "--db", str(db), "--report", ""]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
