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
    return check, check.tasks(ctx)[0].run()


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
