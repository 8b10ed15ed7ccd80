"""The audit on text (issue 13): a saved transformers classifier and text files run every check that
applies to text; image-only checks and detectors are skipped by their declarations, with the reason.

One tiny random BERT (hidden 32, 2 layers) saved with ``save_pretrained`` and a few dozen sentences
written as CSV / JSONL files by the tests; one audit is shared by the module's tests.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from mlsafety.audit import CHECKS, NOT_APPLICABLE, PLAN_CHECK, TRUNCATED, AuditConfig, Check, run_audit
from mlsafety.audit._gates import metric_problem
from mlsafety.core import InputError
from mlsafety.monitoring import ood
from tests.support.text import NEUTRAL_WORDS, tiny_bert_classifier, tiny_sentences

IMAGE_ONLY = ("certified", "corruptions", "trojans", "tta")
LM_ONLY = ("ethics", "honesty", "proxy-gaming", "truthfulness")
TEXT_CHECKS = (
    "clean", "calibration", "calibration-basic", "selective", "ood", "ood-basic", "defence-in-depth", "adversarial",
)  # fmt: skip
LONG = " ".join(["the movie was good"] * 30)  # 120 words: past the tiny tokenizer's 64 tokens


def save_model(folder, seed=0):
    model = tiny_bert_classifier(num_labels=2, seed=seed)
    model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def write_csv(path, texts, labels=None, text="text", label="label"):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([text] if labels is None else [text, label])
        for i, t in enumerate(texts):
            w.writerow([t] if labels is None else [t, labels[i]])
    return path


def write_jsonl(path, texts, labels=None):
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t} if labels is None else {"text": t, "label": labels[i]}) + "\n")
    return path


def ood_texts(n, seed):
    """Sentences of neutral words only (no sentiment word): the text OOD set of the tests."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(NEUTRAL_WORDS[int(i)] for i in torch.randint(0, 40, (6,), generator=g)) for _ in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("text-audit")
    save_model(d / "model")
    texts, labels = tiny_sentences(40, seed=1)
    texts[3] = LONG  # one test text is truncated
    write_csv(d / "data.csv", texts, labels)
    write_jsonl(d / "far.jsonl", ood_texts(24, seed=2))
    write_csv(d / "near.csv", ood_texts(20, seed=3))
    return d


@pytest.fixture(scope="module")
def audit(files):
    torch.set_num_threads(1)
    ood_sets = [str(files / "far.jsonl"), str(files / "near.csv")]
    config = AuditConfig(model=str(files / "model"), data=str(files / "data.csv"), ood=ood_sets, quick=True)
    result = run_audit(config, db=files / "runs.sqlite", report=files / "report.html")
    return files, result


def rows_of(result, check):
    return [r for r in result.rows if r.check == check]


def test_every_check_is_recorded_image_only_ones_with_the_reason(audit):
    _, result = audit
    stored = {r.check for r in result.rows}
    assert set(TEXT_CHECKS) <= stored
    for name in IMAGE_ONLY:
        rows = rows_of(result, name)
        assert len(rows) == 1, (name, rows)
        (row,) = rows
        assert (row.hazard, row.metric, row.kind, row.value) == ("clean", NOT_APPLICABLE, "decision", 1.0)
        assert row.params == {"modality": "text", "reason": "image-only: needs pixel inputs"}
    for name in TEXT_CHECKS:
        assert all(r.metric != NOT_APPLICABLE for r in rows_of(result, name)), name
    # the skips are declared: no gate or conformance check calls them unknown
    # (the engine's own audit-plan rows record what it decided; they are no check's metrics)
    checks = [r for r in result.rows if not r.check.startswith("test-") and r.check != PLAN_CHECK]
    assert all(metric_problem(r.check, r.metric) is None for r in checks)


def test_the_report_says_why_a_check_was_not_run(audit):
    folder, _ = audit
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert html.count("image-only: needs pixel inputs") >= len(IMAGE_ONLY)
    assert "Truncated inputs" in html


def test_clean_accuracy_matches_the_model_on_the_csv(audit):
    folder, result = audit
    (acc,) = [r for r in result.rows if r.key == "clean/clean/accuracy"]
    # recompute from the saved model and the held-out test part: the audit's number is the model's
    from mlsafety.audit import prepare_inputs

    config = AuditConfig(model=str(folder / "model"), data=str(folder / "data.csv"), ood=[])
    clf, data = prepare_inputs(config)
    with torch.inference_mode():
        pred = clf.logits(data.test.x).argmax(dim=1)
    assert acc.n == len(data.test) == 28  # 30% of 40 held out for validation
    assert acc.value == pytest.approx(float((pred == data.test.y).double().mean()))


def test_ood_rows_cover_feature_and_logit_detectors_but_no_image_only_one(audit):
    _, result = audit
    ood_rows = rows_of(result, "ood")
    detectors = {r.params.get("detector") for r in ood_rows if r.metric.endswith("_auroc")}
    quick_text = set(ood.DETECTORS.tagged(ood.QUICK, ood.TEXT))
    assert detectors == quick_text
    assert {"msp", "energy", "max-logit"} <= detectors  # logit-based
    assert {"knn", "mahalanobis", "vim"} <= detectors  # feature-based
    for name in ("far", "near"):
        keys = {r.metric for r in ood_rows if r.hazard == f"ood/{name}"}
        assert {"knn_auroc", "msp_auroc", "auroc"} <= keys
        assert all(0.0 <= r.value <= 1.0 for r in ood_rows if r.hazard == f"ood/{name}" and r.metric.endswith("auroc"))


def test_every_ood_detector_on_text_is_fed_by_the_shared_pass():
    """The text tag is the selection: every text-tagged detector needs only logits and features, and
    the ones that perturb or re-run the inputs are image-only."""
    text = ood.DETECTORS.tagged(ood.TEXT)
    assert {"odin", "mc-dropout", "deep-ensemble"}.isdisjoint(text)
    for name in ood.available():
        assert ood.IMAGE in ood.DETECTORS.tags(name)  # the raw tag: modalities() falls back to image
        if name in text:
            assert ood.DETECTORS.get(name).needs <= ood.SHARED_NEEDS, name
        else:
            assert not ood.DETECTORS.get(name).needs <= ood.SHARED_NEEDS, name


def test_a_full_ood_check_runs_every_text_detector(files):
    config = AuditConfig(
        model=str(files / "model"), data=str(files / "data.csv"), ood=[str(files / "far.jsonl")], checks=["ood"],
    )  # fmt: skip
    result = run_audit(config, db=files / "full-ood.sqlite", report="")
    detectors = {r.params.get("detector") for r in result.rows if r.metric.endswith("_auroc")}
    # the full profile: every text detector except those that run only when named (opt-in)
    assert detectors == set(ood.DETECTORS.tagged(ood.TEXT)) - {"deep-ensemble"} - set(ood.DETECTORS.tagged(ood.OPT_IN))
    assert {"knn", "mahalanobis", "vim"} <= detectors
    # the headline (plain) rows are the monitored detector's, chosen on held-out data as for images
    plain = [r for r in result.rows if r.metric == "auroc" and r.hazard.startswith("ood/")]
    (monitor,) = [r for r in result.rows if r.metric == "monitored_detector"]
    assert plain and {r.params.get("detector") for r in plain} == {monitor.params["detector"]}


def test_an_image_only_detector_is_refused_on_text_before_anything_is_stored(files):
    db = files / "odin.sqlite"
    config = AuditConfig(
        model=str(files / "model"), data=str(files / "data.csv"), ood=[str(files / "far.jsonl")], checks=["ood"],
        check_params={"ood": {"detectors": ["msp", "odin"], "default": "msp"}},
    )  # fmt: skip
    with pytest.raises(InputError, match=r"detector 'odin' does not work on text models \(image-only: needs pixel"):
        run_audit(config, db=db, report="")
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_truncated_texts_are_counted_per_hazard(audit):
    _, result = audit
    cut = {(r.check, r.hazard): r for r in result.rows if r.metric == TRUNCATED}
    assert cut[("clean", "clean")].kind == "count"
    assert cut[("clean", "clean")].params["max_length"] == 64
    assert cut[("ood", "ood/far")].value == 0 and cut[("ood", "ood/far")].n == 24
    # the long text is in the test part or the validation part of the held-out split
    from mlsafety.audit import prepare_inputs

    folder, _ = audit
    _, data = prepare_inputs(AuditConfig(model=str(folder / "model"), data=str(folder / "data.csv"), ood=[]))
    assert cut[("clean", "clean")].value == (1.0 if LONG in list(data.test.x) else 0.0)


def test_defence_in_depth_measures_clean_and_every_ood_set(audit):
    _, result = audit
    did = rows_of(result, "defence-in-depth")
    hazards = {r.hazard for r in did if r.metric == "escaped_failure_rate"}
    # the adversarial check's text attack is a hazard too (issue 14)
    assert hazards == {"clean", "ood/far", "ood/near", "text-adversarial/deepwordbug"}
    assert any(r.metric == "validation_escape" for r in did)


def test_gates_work_on_text_metrics(files, audit):
    _, result = audit
    auroc = next(r for r in result.rows if r.key == "ood-basic/ood/far/auroc").value
    config = AuditConfig(
        model=str(files / "model"), data=str(files / "data.csv"), ood=[str(files / "far.jsonl")],
        checks=["clean", "ood-basic"], quick=True,
        fail_under={"ood-basic/ood/*/auroc": min(auroc + 0.01, 1.0), "clean/clean/accuracy": 0.0},
        fail_over={"clean/clean/truncated_inputs": 5},
    )  # fmt: skip
    gated = run_audit(config, db=files / "gates.sqlite", report="")
    assert [f.key for f in gated.gate_failures] == ["ood-basic/ood/far/auroc"]


@pytest.mark.parametrize("name", sorted(CHECKS.available()))
def test_each_check_declares_its_modalities(name):
    cls: type[Check] = CHECKS.get(name)
    if name.startswith("test-"):
        return
    assert cls.modalities and set(cls.modalities) <= {"image", "text", "lm"}
    if name in LM_ONLY:
        assert cls.modalities == ("lm",) and cls.not_applicable("image") is not None
        return
    if name in IMAGE_ONLY:
        assert cls.not_applicable("text") == "image-only: needs pixel inputs"
    elif name in TEXT_CHECKS:
        assert cls.not_applicable("text") is None
    assert cls.not_applicable("image") is None


def test_the_run_fingerprint_covers_the_texts_and_the_tokenizer(files, tmp_path):
    from mlsafety.audit import prepare_inputs
    from mlsafety.audit._fingerprint import components

    config = AuditConfig(model=str(files / "model"), data=str(files / "data.csv"), ood=[])
    clf, data = prepare_inputs(config)
    base = components(config, clf, data)
    texts, labels = tiny_sentences(40, seed=1)
    texts[3] = LONG
    texts[0] = texts[0] + " good"  # one word more in one text
    other = AuditConfig(model=str(files / "model"), data=str(write_csv(tmp_path / "d.csv", texts, labels)), ood=[])
    clf2, data2 = prepare_inputs(other)
    changed = components(other, clf2, data2)
    assert {k for k in base if base[k].digest != changed[k].digest} & {"data", "val"}
    assert base["tokenizer"].digest == changed["tokenizer"].digest
    clf2.tokenizer.model_max_length = 32
    assert components(other, clf2, data2)["tokenizer"].digest != base["tokenizer"].digest


def test_a_folder_without_a_trained_head_is_refused_without_the_load_report(tmp_path, capfd):
    """A bare encoder (or a causal LM) saved with save_pretrained would get a random head: refused in one
    line, with transformers' MISSING-keys table kept off stderr and its verbosity restored."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    from mlsafety.audit import resolve_model

    model = tiny_bert_classifier()
    BertModel(model.config).save_pretrained(tmp_path / "bare")
    model.tokenizer.save_pretrained(tmp_path / "bare")
    capfd.readouterr()
    verbosity = hf_logging.get_verbosity()
    with pytest.raises(InputError, match=r"has no trained weights for classifier\.bias, classifier\.weight: it is not"):
        resolve_model(str(tmp_path / "bare"), None)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err, err
    assert hf_logging.get_verbosity() == verbosity


@pytest.mark.parametrize("name", ["minilm", "smollm2-135m", "digits-denoiser-25"])
def test_a_zoo_model_that_is_not_a_classifier_is_refused_before_it_is_loaded(name, monkeypatch):
    from mlsafety import zoo
    from mlsafety.audit import resolve_model

    def loaded(_name):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(zoo, "load_model", loaded)
    with pytest.raises(InputError, match=rf"zoo model '{name}' is an? .*not a classifier; use a zoo classifier \("):
        resolve_model(name, None)


@pytest.mark.slow
def test_zoo_text_data_defaults_to_mr_splits_and_the_text_ood_sets(files):
    """The embedded data (installed assets): val is mr's validation split, the detectors fit on a
    seeded sample of its training split, and the OOD sets are tweets, nyt and amazon."""
    from mlsafety.audit import resolve_data, resolve_model
    from mlsafety.audit._inputs import TEXT_FIT_SIZE

    clf = resolve_model(str(files / "model"), None)
    data = resolve_data(AuditConfig(model=str(files / "model"), data="mr"), clf)
    assert sorted(data.ood) == ["amazon", "nyt", "tweets"]
    assert data.train is not None and len(data.train) == TEXT_FIT_SIZE and "seeded sample" in data.train.source
    assert len(data.val) > TEXT_FIT_SIZE and set(data.test.y.tolist()) == {0, 1}
    again = resolve_data(AuditConfig(model=str(files / "model"), data="mr", ood=[]), clf)
    assert again.train is not None and list(again.train.x) == list(data.train.x)


def test_an_image_audit_stores_no_skip_or_truncation_rows(quick_audit):
    """Every image-capable check runs on images (only the language-model checks, and tta on a model
    without batch norm, say why not), and images are never truncated."""
    from mlsafety.audit._check import is_skip

    _, result = quick_audit
    skipped = sorted(r.key for r in result.rows if is_skip(r))
    assert skipped == [f"{name}/clean/not_applicable" for name in sorted(LM_ONLY)] + ["tta/clean/not_applicable"]
    assert not [r.key for r in result.rows if r.metric == TRUNCATED]


@pytest.mark.parametrize(
    "option, gate",
    [("--fail-under", "corruptions/*/accuracy=0.5"), ("--fail-over", "trojans/*/attack_success_rate=0.2")],
)
def test_a_gate_on_an_image_only_check_is_refused_on_text_before_anything_is_stored(files, option, gate):
    """The check is selected but skipped on text, so it stores no metric to bound: the gate is refused in
    one line (exit 2) once the model's modality is known, and no run is stored."""
    from click.testing import CliRunner

    from mlsafety.cli import main

    check = gate.split("/")[0]
    db = files / f"gate-{check}.sqlite"
    args = [
        "audit",
        "--model",
        str(files / "model"),
        "--data",
        str(files / "data.csv"),
        "--ood",
        str(files / "far.jsonl"),
        "--quick",
    ]
    result = CliRunner().invoke(
        main, [*args, "--check", "clean", "--check", check, option, gate, "--db", str(db), "--report", ""]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    key = gate.partition("=")[0]
    assert f"gate '{key}': the {check} check is image-only and is not run on text models; remove the gate" in lines[0]
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_a_gate_on_a_skipped_checks_not_applicable_row_is_allowed(files):
    config = AuditConfig(
        model=str(files / "model"), data=str(files / "data.csv"), ood=[], checks=["clean", "corruptions"],
        quick=True, fail_under={f"corruptions/clean/{NOT_APPLICABLE}": 1.0},
    )  # fmt: skip
    result = run_audit(config, db=files / "gate-skip.sqlite", report="")
    assert result.gate_failures == []
    assert [r.key for r in rows_of(result, "corruptions")] == [f"corruptions/clean/{NOT_APPLICABLE}"]


def test_classes_on_text_data_are_refused_before_anything_is_stored(files, tmp_path):
    """Class names label .npz files and image folders; text data keeps its labels as read, so the library (not
    only the CLI) refuses them: audit-many's --config and a library call used to ignore them silently."""
    from mlsafety.audit import prepare_inputs

    config = AuditConfig(model=str(files / "model"), data=str(files / "data.csv"), classes=["neg", "pos"])
    with pytest.raises(InputError, match=r"text data keeps its labels as read.*drop them"):
        prepare_inputs(config)
    db = tmp_path / "runs.sqlite"
    with pytest.raises(InputError):
        run_audit(config, db=db, report="")
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
