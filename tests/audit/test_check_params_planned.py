"""A check's bad parameter is refused when the audit is planned, in one line, before its run is stored.

Each case was found by a sweep over every check's parameters (image checks, the text path of adversarial and
transparency, and the language-model checks). Before, each was refused by the library once a task ran (a run
marked failed, two lines), crashed with a traceback (a ``TypeError`` from a number where a list goes), or ran
and stored rows it should not have (an empty list of monitors, ``adaptive = 'no'`` read as on, a severity for
a hazard kind that does not exist, a baseline error of -1 dividing the relative mCE, text-attack parameters
for a recipe not run, adversarial n = 0, transparency threshold = 7).
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.core import InputError
from tests.support.text import tiny_bert_classifier, tiny_llama, tiny_sentences

Case = tuple[str, dict[str, Any], str]

IMAGE: dict[str, Case] = {
    # a text where a cost model reads an integer: a ValueError traceback from the cost plan before
    "adversarial n = 'x'": ("adversarial", {"n": "x"}, "adversarial: n must be an integer, got 'x'"),
    "trojans n_seeds = 'a'": ("trojans", {"scanners": ["strip"], "n_seeds": "a"}, "n_seeds must be an integer"),
    "transparency vis_steps = '5'": ("transparency", {"vis_steps": "5"}, "vis_steps must be an integer, got '5'"),
    "adversarial n = 0": ("adversarial", {"n": 0}, "adversarial: n must be an integer >= 1"),
    "adversarial pairs = -1": ("adversarial", {"pairs": -1}, "adversarial: pairs must be an integer >= 0"),
    "calibration n_bins = 0": ("calibration", {"n_bins": 0}, "calibration: n_bins must be an integer >= 1"),
    "calibration unknown calibrator": ("calibration", {"calibrators": ["tempreature"]}, "unknown calibrator"),
    "calibration-basic n_boot = 0": ("calibration-basic", {"n_boot": 0}, "n_boot must be an integer >= 1"),
    "certified alpha = 1.5": ("certified", {"alpha": 1.5}, "certified: alpha must be a number in (0, 1)"),
    "certified negative radius": ("certified", {"radii": [0.5, -1.0]}, "radii must be a number in [0, inf)"),
    "certified n = 0": ("certified", {"n": 0}, "certified: n must be an integer >= 1"),
    # a number where the list goes, a word or infinite noise: tracebacks, or a run at sigma inf; [] ran nothing
    "certified sigmas = 0.25": ("certified", {"sigmas": 0.25}, "certified: sigmas must be a non-empty list"),
    "certified sigmas = []": ("certified", {"sigmas": []}, "certified: sigmas must be a non-empty list"),
    "certified sigma 'x'": ("certified", {"sigmas": ["x"]}, "certified: sigmas must be a number in (0, inf)"),
    "certified sigma inf": ("certified", {"sigmas": [float("inf")]}, "sigmas must be a number in (0, inf), got inf"),
    "adversarial attack_params = 5": ("adversarial", {"attack_params": 5}, "attack_params must map attack names"),
    "adversarial attack_params pgd = 5": (
        "adversarial",
        {"attack_params": {"pgd": 5}},
        "adversarial: attack_params must map attack names to their parameters",
    ),
    "ood detector parameter": ("ood", {"detectors": ["knn"], "params": {"knn": {"k": -3}}}, "k must be >= 1"),
    "ood params = {msp = 5}": (
        "ood",
        {"detectors": ["msp"], "params": {"msp": 5}},
        "ood: params must map detector names to their parameters",
    ),
    "ood parameters of a detector not run": (
        "ood",
        {"detectors": ["msp"], "params": {"knn": {"k": 5}}},
        "parameters are given for 'knn'",
    ),
    "selective coverage = 1.5": ("selective", {"coverage": 1.5}, "selective: coverage must be a number in (0, 1]"),
    "selective risk = -0.1": ("selective", {"risk": -0.1}, "selective: risk must be a number in [0, 1]"),
    "selective unknown detector": ("selective", {"detectors": ["msp", "nosuch"]}, "unknown detector 'nosuch'"),
    "selective default not run": ("selective", {"default": "energy", "detectors": ["msp"]}, "is not among"),
    "transparency threshold = 7": ("transparency", {"threshold": 7}, "threshold must be a number in [-1, 1]"),
    "transparency examples = -1": ("transparency", {"examples": -1}, "examples must be an integer >= 0"),
    "adversarial attacks = [5]": ("adversarial", {"attacks": [5]}, "attacks must be a non-empty list of names"),
    "corruptions severities = 3.0": ("corruptions", {"severities": 3.0}, "severities must be integers from 1 to 5"),
    "corruptions = 5": ("corruptions", {"corruptions": 5}, "corruptions must be a non-empty list of names"),
    "corruptions = []": ("corruptions", {"corruptions": []}, "corruptions must be a non-empty list of names"),
    "corruptions reference_size = inf": ("corruptions", {"reference_size": float("inf")}, "reference_size must be"),
    "corruptions n_boot = 0": ("corruptions", {"n_boot": 0}, "corruptions: n_boot must be an integer >= 1"),
    "corruptions negative baseline": (
        "corruptions",
        {"corruptions": ["fog"], "baseline": {"fog": -1}},
        "baseline error of 'fog' must be a number in (0, 1]",
    ),
    "corruptions baseline below its clean error": (
        "corruptions",
        {"corruptions": ["fog"], "baseline": {"fog": 0.3, "clean": 0.4}},
        "must be above the baseline's clean error",
    ),
    "corruptions baseline of none audited": (
        "corruptions",
        {"corruptions": ["fog"], "baseline": {"contrast": 0.8}},
        "has an error for none of the audited corruptions",
    ),
    "corruptions baseline with three severities": (
        "corruptions",
        {"corruptions": ["fog"], "severities": [1, 3, 5], "baseline": "alexnet"},
        "needs all five severities",
    ),
    "defence-in-depth monitors = []": ("defence-in-depth", {"monitors": []}, "monitors must be a non-empty list"),
    "defence-in-depth monitor twice": (
        "defence-in-depth",
        {"monitors": ["energy", "energy"]},
        "monitors lists 'energy' more than once",
    ),
    "defence-in-depth adaptive = 'no'": ("defence-in-depth", {"adaptive": "no"}, "adaptive must be true or false"),
    "defence-in-depth severity of no kind": (
        "defence-in-depth",
        {"severity": {"advesarial": 9}},
        "severity names 'advesarial', of no hazard kind",
    ),
    "trojans scanners = 5": ("trojans", {"scanners": 5}, "trojans: scanners must be a non-empty list of names"),
    "trojans n_seeds = 1.5": ("trojans", {"scanners": ["strip"], "n_seeds": 1.5}, "n_seeds must be an integer"),
    "trojans max_clean = -5": ("trojans", {"scanners": ["strip"], "max_clean": -5}, "max_clean must be an integer"),
    "trojans nc_steps below an epoch": (
        "trojans",
        {"scanners": ["neural-cleanse"], "n_seeds": 1, "nc_steps": 3},
        "neural-cleanse steps must be >= epoch_steps",
    ),
    "tta methods = []": ("tta", {"methods": []}, "tta methods must be 'all' or a non-empty list"),
    "tta shares = []": ("tta", {"shares": []}, "tta shares must list malicious shares"),
    "tta attack_batch_sizes = []": ("tta", {"attack_batch_sizes": []}, "attack_batch_sizes must list integers"),
    "tta attack_on severity 9": ("tta", {"attack_on": "corruption/fog/9"}, "<severity 1-5>"),
    "ood-basic default not run": (
        "ood-basic",
        {"detectors": ["msp"], "default": "energy"},
        "default must name one of the detectors it runs (msp)",
    ),
    "ood-basic detectors = 5": ("ood-basic", {"detectors": 5}, "detectors must be a non-empty list of names"),
    "ood-basic n_boot = 0": ("ood-basic", {"n_boot": 0}, "ood-basic: n_boot must be an integer >= 1"),
    "ood n_boot = 0": ("ood", {"detectors": ["msp"], "n_boot": 0}, "ood: n_boot must be an integer >= 1"),
    "ood detectors = [5]": ("ood", {"detectors": [5]}, "detectors must be a list of names"),
    "ood tune = 'no'": ("ood", {"detectors": ["msp"], "tune": "no"}, "tune must be true or false"),
    "transparency text_method a list": ("transparency", {"text_method": ["saliency"]}, "text_method must be one"),
    "transparency methods a string": ("transparency", {"methods": "saliency"}, "methods must be a non-empty list"),
    "transparency unknown sanity mode": (
        "transparency",
        {"text_sanity_modes": ["casading"]},
        "text_sanity_modes has 'casading'",
    ),
    "transparency visualize = 'no'": ("transparency", {"visualize": "no"}, "visualize must be true or false"),
    "transparency adversarial_eps = -1": ("transparency", {"adversarial_eps": -1}, "adversarial_eps must be"),
}


def _refused(config: AuditConfig, db: Path, needle: str) -> None:
    with pytest.raises(InputError) as err:
        run_audit(config, db=db, report="")
    assert needle in str(err.value) and "\n" not in str(err.value)
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


@pytest.mark.parametrize("case", sorted(IMAGE))
def test_bad_image_check_parameter_is_refused_before_the_run_is_stored(case: str, tmp_path: Path) -> None:
    check, params, needle = IMAGE[case]
    config = AuditConfig(model="digits-cnn", checks=[check], check_params={check: params}, max_samples=40)
    _refused(config, tmp_path / "runs.sqlite", needle)


TEXT: dict[str, Case] = {
    "text_recipes = [5]": ("adversarial", {"text_recipes": [5]}, "text_recipes must be a non-empty list of names"),
    "text_params of a recipe not run": (
        "adversarial",
        {"text_recipes": ["deepwordbug"], "text_params": {"hotflip": {}}},
        "text_params are given for 'hotflip', which this audit does not run",
    ),
    "text_params not a mapping of mappings": (
        "adversarial",
        {"text_recipes": ["deepwordbug"], "text_params": {"deepwordbug": 5}},
        "text_params must map recipe names to their parameters",
    ),
    "text_methods = []": ("transparency", {"text_methods": []}, "text_methods must be a non-empty list of names"),
}


@pytest.fixture(scope="module")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("text-params")
    model = tiny_bert_classifier(num_labels=2, seed=0)
    model.save_pretrained(folder / "model")
    model.tokenizer.save_pretrained(folder / "model")
    texts, labels = tiny_sentences(24, seed=1)
    (folder / "data.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels, strict=True)))
    return folder


@pytest.mark.parametrize("case", sorted(TEXT))
def test_bad_text_check_parameter_is_refused_before_the_run_is_stored(
    case: str, text_files: Path, tmp_path: Path
) -> None:
    check, params, needle = TEXT[case]
    config = AuditConfig(
        model=str(text_files / "model"), data=str(text_files / "data.csv"), checks=[check],
        check_params={check: params},
    )  # fmt: skip
    _refused(config, tmp_path / "runs.sqlite", needle)


LM: dict[str, Case] = {
    "honesty batch_size = 0": ("honesty", {"batch_size": 0}, "honesty: batch_size must be an integer >= 1"),
    "honesty layer_stride = true": ("honesty", {"layer_stride": True}, "layer_stride must be an integer >= 1"),
    "truthfulness primer = 5": ("truthfulness", {"primer": 5}, "primer must be a text"),
    "ethics probe = 'no'": ("ethics", {"probe": "no"}, "ethics: probe must be true or false"),
    "ethics subset twice": ("ethics", {"subsets": ["justice", "justice"]}, "each once"),
    "proxy-gaming temperature = 0": ("proxy-gaming", {"temperature": 0}, "temperature must be a number in (0, inf)"),
    "proxy-gaming max_new_tokens = 0": ("proxy-gaming", {"max_new_tokens": 0}, "max_new_tokens must be an integer"),
}


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm-params") / "llama"
    model = tiny_llama(0)
    model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", sorted(LM))
def test_bad_lm_check_parameter_is_refused_before_the_run_is_stored(case: str, lm_folder: Path, tmp_path: Path) -> None:
    check, params, needle = LM[case]
    config = AuditConfig(model=str(lm_folder), checks=[check], check_params={check: params})
    _refused(config, tmp_path / "runs.sqlite", needle)


def test_a_baseline_of_zero_clean_error_is_taken_and_its_mce_is_not_called_alexnet(tmp_path: Path) -> None:
    """A baseline's clean error may be 0 (the library takes [0, 1)), and its normalised mCE is the given
    baseline's, not AlexNet's: the report must not call it AlexNet-normalised. A clean error of 1 leaves no
    corruption error above it, and is refused as the clean error's own fault."""
    from mlsafety.audit.views.corruptions import CorruptionsView

    params = {"corruptions": ["fog"], "baseline": {"fog": 0.5, "clean": 0.0}, "n_boot": 20}
    config = AuditConfig(model="digits-cnn", checks=["corruptions"], check_params={"corruptions": params},
                         max_samples=40)  # fmt: skip
    rows = [r for r in run_audit(config, db=tmp_path / "runs.sqlite", report="").rows if r.check == "corruptions"]
    mce = next(r for r in rows if r.metric == "mce")
    assert mce.params["normalised"] and mce.params["baseline_clean_error"] == 0.0
    labels = [h.label for h in CorruptionsView.headlines(rows) if h.row.metric == "mce"]
    assert labels == ["mCE (normalised by the given baseline)"]
    (summary,) = [t for t in CorruptionsView.tables(rows) if t.title == "Corruption summary"]
    assert not any("AlexNet" in line[0] for line in summary.rows)
    assert "mce (normalised by the given baseline)" in [line[0] for line in summary.rows]
    bad = replace(config, check_params={"corruptions": {**params, "baseline": {"fog": 0.5, "clean": 1.0}}})
    _refused(bad, tmp_path / "bad.sqlite", "baseline's clean error must be a number in [0, 1), got 1.0")
