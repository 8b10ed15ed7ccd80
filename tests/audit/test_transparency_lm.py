"""The transparency check on a causal language model: logit lens and IOI patching summary (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.core import InputError, LanguageModel
from tests.support.text import tiny_llama

IOI = {
    "ioi_names": ["cat", "dog", "paris", "london", "france", "england"],
    "ioi_places": ["city"],
    "ioi_objects": ["book", "food"],
    "ioi_templates": ["the {A} and {B} saw a {OBJECT} in the {PLACE} . {C} ran to"],
}
PROMPTS = "text\n" + "".join(f"{a} {b} was quite\n" for a in ("the", "a", "this") for b in ("movie", "film", "book"))


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, LanguageModel]:
    folder = tmp_path_factory.mktemp("lm-transparency")
    model = tiny_llama(1)
    model.save_pretrained(folder / "llama")
    model.tokenizer.save_pretrained(folder / "llama")
    (folder / "prompts.csv").write_text(PROMPTS)
    config = AuditConfig(
        model=str(folder / "llama"),
        data=str(folder / "prompts.csv"),
        checks=["transparency"],
        quick=True,
        check_params={"transparency": {**IOI, "ioi_top_heads": 3}},
    )
    result = run_audit(config, db=folder / "runs.sqlite", report=folder / "report.html")
    return folder, {r.metric: r for r in result.rows}, LanguageModel(model)


def test_the_last_lens_layer_is_the_models_own_prediction(audited):
    _, rows, lm = audited
    texts = PROMPTS.splitlines()[1:]
    batch = lm.encode(texts, padding_side="left")
    with torch.no_grad():
        logits = lm.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
    expected = logits.float().log_softmax(-1).amax(-1).mean()  # log-prob of the argmax = the final prediction
    layers = lm.n_layers + 1  # every block's resid_pre, then the last resid_post
    last = rows[f"lens_logprob_layer_{layers - 1:02d}"]
    assert last.n == len(texts) and last.value == pytest.approx(float(expected), abs=1e-4)
    assert rows[f"lens_top1_layer_{layers - 1:02d}"].value == 1.0
    assert f"lens_logprob_layer_{layers:02d}" not in rows
    assert all(rows[f"lens_top1_layer_{i:02d}"].ci_low <= rows[f"lens_top1_layer_{i:02d}"].value for i in range(layers))
    from mlsafety.monitoring.interp import logit_lens  # the one-pass lens agrees with the library's at every read

    ref = logit_lens(lm, texts, top_k=1, targets=logits.argmax(-1))
    assert ref.target_mean is not None
    for i in range(layers):
        assert rows[f"lens_logprob_layer_{i:02d}"].value == pytest.approx(float(ref.target_mean[i]), abs=1e-4)
        share = float((ref.top_ids[i, :, 0] == logits.argmax(-1)).float().mean())
        assert rows[f"lens_top1_layer_{i:02d}"].value == pytest.approx(share)


def test_ioi_logit_diff_matches_the_model_and_top_heads_are_ranked(audited):
    from mlsafety.monitoring.interp.ioi import ioi_dataset

    folder, rows, lm = audited
    from mlsafety.audit.checks.transparency import CHECK
    from mlsafety.core import derive_seed

    data = ioi_dataset(lm, n=8, seed=derive_seed(0, CHECK, "ioi"), **{k[4:]: v for k, v in IOI.items()})
    batch = lm.encode(data.prompts, padding_side="left")
    with torch.no_grad():
        last = lm.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1].float()
    diff = last.gather(1, data.io_ids[:, None]) - last.gather(1, data.s_ids[:, None])
    row = rows["ioi_logit_diff"]
    assert row.n == 8 and row.value == pytest.approx(float(diff.mean()), abs=1e-4)
    assert row.ci_low <= row.value <= row.ci_high
    heads = sorted((r for r in rows.values() if r.metric.startswith("ioi_head_")), key=lambda r: r.params["rank"])
    assert 1 <= len(heads) <= 3
    assert [r.value for r in heads] == sorted((r.value for r in heads), reverse=True)
    html = (folder / "report.html").read_text()
    assert "Logit lens (last token)" in html and "IOI patching summary" in html
    assert "Transparency: logit lens and IOI patching" in html and "Attribution maps on correct" not in html
    first = min(i for i in range(lm.n_layers + 1) if rows[f"lens_top1_layer_{i:02d}"].value >= 0.5)
    point = rows[f"lens_top1_layer_{first:02d}"].params["point"]
    assert f"Logit lens: first read ({point}) whose top-1 is the final prediction" in html
    assert html.count("data:image/png") >= 3  # lens, attribution screen and exact heads heat maps


def test_a_tokenizer_without_single_token_names_stores_the_reason(audited, tmp_path):
    folder, _, _ = audited
    config = AuditConfig(model=str(folder / "llama"), data=str(folder / "prompts.csv"), checks=["transparency"],
                         quick=True)  # fmt: skip
    rows = {r.metric: r for r in run_audit(config, db=tmp_path / "db.sqlite", report="").rows}
    assert "single tokens" in rows["ioi_not_run"].params["reason"]
    assert "lens_top1_layer_00" in rows


def test_bad_lm_settings_are_refused_before_the_run(audited, tmp_path):
    folder, _, _ = audited
    config = AuditConfig(model=str(folder / "llama"), data=str(folder / "prompts.csv"), checks=["transparency"],
                         check_params={"transparency": {"ioi_prompts": 1}})  # fmt: skip
    with pytest.raises(InputError, match="ioi_prompts must be an integer >= 2"):
        run_audit(config, db=tmp_path / "db.sqlite", report="")
    assert not (tmp_path / "db.sqlite").exists()  # refused while the audit was planned: nothing stored


def test_a_mistake_in_the_users_ioi_lists_is_refused_before_the_run(audited, tmp_path):
    folder, _, _ = audited
    bad = {**IOI, "ioi_names": ["cat"]}  # one name: IOI prompts need more
    config = AuditConfig(model=str(folder / "llama"), data=str(folder / "prompts.csv"), checks=["transparency"],
                         quick=True, check_params={"transparency": bad})  # fmt: skip
    with pytest.raises(InputError, match=r"only 1 names are single tokens .* pass names= with more") as info:
        run_audit(config, db=tmp_path / "db.sqlite", report="")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "db.sqlite").exists()


@pytest.mark.parametrize(
    ("model", "gate", "needle"),
    [
        ("lm", "transparency/clean/sanity_pass_share", "does not store sanity_pass_share on language models"),
        ("digits-cnn", "transparency/clean/ioi_logit_diff", "does not store ioi_logit_diff on image models"),
    ],
)
def test_a_gate_on_a_metric_of_another_modality_is_refused_before_the_run(audited, tmp_path, model, gate, needle):
    folder, _, _ = audited
    spec = str(folder / "llama") if model == "lm" else model
    data = str(folder / "prompts.csv") if model == "lm" else None
    config = AuditConfig(model=spec, data=data, checks=["transparency"], quick=True, fail_under={gate: 0.0})
    with pytest.raises(InputError, match=needle):
        run_audit(config, db=tmp_path / "db.sqlite", report="")
    assert not (tmp_path / "db.sqlite").exists()
