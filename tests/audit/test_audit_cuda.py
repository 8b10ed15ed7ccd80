"""Whole audits on CUDA give the CPU's rows: a text classifier and a causal LM, tiny models made here.

Row by row, a check's number on the GPU must lie within float noise of the CPU's or inside the CPU's interval, and
the HTML report (whose views turn tensors into pictures) must be written. The image audit is compared the same way
by tools/device_check.sh on the zoo's digits-cnn.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mlsafety.audit import AuditConfig, run_audit
from tests.audit.test_proxy_gaming_check import REWARDS
from tests.audit.test_text_audit import ood_texts, save_model, write_csv, write_jsonl
from tests.support.text import save_with_tokenizer, tiny_llama, tiny_sentences

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXT_CHECKS = ["clean", "calibration", "calibration-basic", "selective", "ood", "ood-basic", "defence-in-depth"]
PROMPTS = "text\n" + "".join(f"{w} movie was quite\n" for w in ("the", "a", "this", "that", "one", "good"))


def _rows(config: AuditConfig, folder: Path, device: str) -> dict[str, tuple]:
    config = dataclasses.replace(config, device=device)
    report = folder / f"report-{device}.html"
    result = run_audit(config, db=folder / f"runs-{device}.sqlite", report=report)
    assert report.stat().st_size > 0
    return {r.key: (r.value, r.ci_low, r.ci_high) for r in result.rows}


def _agree(cpu: dict[str, tuple], gpu: dict[str, tuple], stochastic: tuple[str, ...] = ()) -> None:
    assert sorted(gpu) == sorted(cpu)
    off = []
    for key, (v, lo, hi) in cpu.items():
        w = gpu[key][0]
        if v is None or w is None or key.startswith(stochastic):
            assert (v is None) == (w is None), key
            continue
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(w), key
            continue
        close = abs(w - v) <= 1e-3 + 1e-3 * abs(v)
        inside = lo is not None and hi is not None and lo - 1e-6 <= w <= hi + 1e-6
        if not (close or inside):
            off.append((key, v, w, lo, hi))
    assert not off, off[:10]


def test_text_classifier_audit_on_cuda_gives_the_cpus_rows(tmp_path: Path) -> None:
    save_model(tmp_path / "model")
    texts, labels = tiny_sentences(40, seed=1)
    write_csv(tmp_path / "data.csv", texts, labels)
    write_jsonl(tmp_path / "far.jsonl", ood_texts(24, seed=2))
    ood = [str(tmp_path / "far.jsonl")]
    config = AuditConfig(model=str(tmp_path / "model"), data=str(tmp_path / "data.csv"), ood=ood, quick=True,
                         checks=TEXT_CHECKS)  # fmt: skip
    _agree(_rows(config, tmp_path, "cpu"), _rows(config, tmp_path, "cuda"))


def test_language_model_audit_on_cuda_gives_the_cpus_rows(tmp_path: Path) -> None:
    save_with_tokenizer(tiny_llama(0), tmp_path / "llama")
    (tmp_path / "prompts.csv").write_text(PROMPTS)
    (tmp_path / "rewards.py").write_text(REWARDS)
    params = {"honesty": {"statements": 24, "templates": 2, "layer_stride": 1, "ccs_epochs": 20}}
    config = AuditConfig(model=str(tmp_path / "llama"), data=str(tmp_path / "prompts.csv"), quick=True,
                         checks=["honesty", "transparency", "proxy-gaming"], check_params=params,
                         reward=f"{tmp_path / 'rewards.py'}:proxy", gold=f"{tmp_path / 'rewards.py'}:gold")  # fmt: skip
    # sampled continuations come from the device's generator: proxy gaming's numbers differ in value, not in kind
    _agree(_rows(config, tmp_path, "cpu"), _rows(config, tmp_path, "cuda"), stochastic=("proxy-gaming/",))
