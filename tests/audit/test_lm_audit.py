"""The audit on a causal language model (issues 16 and 17): modality "lm", prompt sets, rewards, resume."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from click.testing import CliRunner

from mlsafety.audit import CHECKS, AuditConfig, Check, Row, Task, TaskResult, register_check, run_audit
from mlsafety.cli import main
from mlsafety.core import InputError, LanguageModel
from tests.support.text import save_with_tokenizer, tiny_gpt2, tiny_llama

SCORERS = """
import torch


def length():
    return lambda texts: torch.tensor([float(len(t)) for t in texts])


def words():
    return lambda texts: torch.tensor([float(len(t.split())) for t in texts])


def wrong_shape():
    return lambda texts: torch.zeros(len(texts), 3)


def not_finite():
    return lambda texts: torch.full((len(texts),), float("nan"))


def token_ids():
    def score(texts):
        return torch.tensor([float(len(t)) for t in texts])

    score.input_type = "token ids"
    return score
"""

PROMPTS = "text\n" + "".join(f"{w} movie was quite\n" for w in ("the", "a", "this", "that", "one", "good"))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm")
    save_with_tokenizer(tiny_llama(0), folder / "llama")
    gpt2 = tiny_gpt2(0)
    gpt2.save_pretrained(folder / "gpt2")
    gpt2.tokenizer.save_pretrained(folder / "gpt2")
    (folder / "labelled.csv").write_text("text,label\nthe movie was,1\na movie was,0\n")
    (folder / "prompts.csv").write_text(PROMPTS)
    (folder / "scorers.py").write_text(SCORERS)
    return folder


@pytest.fixture
def lm_check() -> Iterator[type[Check]]:
    """A temporary three-task check on language models that records its calls and can crash."""

    @register_check("test-lm-counting")
    class LmCounting(Check):
        pillar = "performance"
        title = "lm counting"
        modalities = ("lm",)
        crash_at = -1
        calls: ClassVar[list[str]] = []
        seen: ClassVar[dict[str, Any]] = {}

        def tasks(self, ctx):  # type: ignore[no-untyped-def]
            test = ctx.data.test
            LmCounting.seen.update(lm=ctx.lm, reward=ctx.reward, gold=ctx.gold, prompts=len(test),
                                   texts=list(test.x[:2]), labels=test.y[:2].tolist())  # fmt: skip

            def make(i: int) -> Task:
                def run() -> TaskResult:
                    if i == LmCounting.crash_at:
                        raise RuntimeError("simulated crash")
                    LmCounting.calls.append(f"t{i}")
                    return TaskResult([Row("clean", f"value_{i}", float(i), kind="setting")])

                return Task(f"t{i}", run)

            return [make(i) for i in range(3)]

    try:
        yield LmCounting
    finally:
        CHECKS._entries.pop("test-lm-counting", None)


def _counts(db: Path) -> tuple[int, int, int]:
    con = sqlite3.connect(db)
    try:
        return tuple(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "tasks", "results"))  # type: ignore[return-value]
    finally:
        con.close()


def test_an_lm_folder_is_audited_end_to_end_and_classifier_checks_are_not_applicable(lm_dir, tmp_path):
    config = AuditConfig(model=str(lm_dir / "llama"), checks=["transparency", "clean"])
    result = run_audit(config, db=tmp_path / "runs.sqlite", report=tmp_path / "report.html")
    rows = {r.key: r for r in result.rows}
    skip = rows["clean/clean/not_applicable"]
    assert skip.params == {"modality": "lm", "reason": "image/text-only: needs a classifier's logits"}
    assert result.report_path is not None and result.report_path.is_file()
    html = result.report_path.read_text()
    assert "language model" in html and "needs a classifier&#39;s logits" in html
    with sqlite3.connect(tmp_path / "runs.sqlite") as con:
        ((model, data, status),) = con.execute("SELECT model, data, status FROM runs").fetchall()
    assert (model, data, status) == (str(lm_dir / "llama"), "mr", "complete")


def test_the_default_prompts_are_mr_openings_with_labels(lm_dir, lm_check):
    from mlsafety import zoo

    run_audit(AuditConfig(model=str(lm_dir / "llama"), checks=["test-lm-counting"]), db=None, report="")
    seen = lm_check.seen
    assert isinstance(seen["lm"], LanguageModel) and seen["reward"] is None and seen["gold"] is None
    reviews = zoo.load_text_dataset("mr", split="test")
    assert seen["prompts"] == len(reviews)
    assert seen["texts"] == [
        "An enigmatic film that's too clever for its",
        "From its invitingly upbeat overture to its pathos",
    ]
    assert seen["labels"] == [0, 1]


def test_a_saved_gpt2_lm_head_model_is_a_language_model(lm_dir, lm_check):
    from mlsafety.audit._inputs import is_language_model

    assert is_language_model(str(lm_dir / "gpt2")) and is_language_model(str(lm_dir / "llama"))
    config = AuditConfig(model=str(lm_dir / "gpt2"), data=str(lm_dir / "prompts.csv"), checks=["test-lm-counting"])
    run_audit(config, db=None, report="")
    assert type(lm_check.seen["lm"].module).__name__ == "GPT2LMHeadModel" and lm_check.seen["prompts"] == 6


def test_label_column_label_given_explicitly_reads_the_labels(lm_dir, lm_check):
    base = {"model": str(lm_dir / "llama"), "data": str(lm_dir / "labelled.csv"), "checks": ["test-lm-counting"]}
    run_audit(AuditConfig(**base), db=None, report="")
    assert lm_check.seen["labels"] == [-1, -1]
    run_audit(AuditConfig(**base, label_column="label"), db=None, report="")
    assert lm_check.seen["labels"] == [1, 0]


@pytest.mark.parametrize("extra", [{"val": "mr"}, {"train": "mr"}, {"ood": ["mr"]}])
def test_val_train_and_ood_are_refused_for_a_language_model(lm_dir, extra, tmp_path):
    flag = "--" + next(iter(extra))
    with pytest.raises(InputError, match=f"^{flag} does not apply to a language model"):
        run_audit(AuditConfig(model=str(lm_dir / "llama"), **extra), db=tmp_path / "runs.sqlite", report="")
    assert not (tmp_path / "runs.sqlite").exists() or _counts(tmp_path / "runs.sqlite")[0] == 0


def test_rewards_reach_the_checks_and_refusals_store_nothing(lm_dir, lm_check, tmp_path):
    scorers = lm_dir / "scorers.py"
    (lm_dir / "one.csv").write_text("text\nthe movie was\n")
    base = {"model": str(lm_dir / "llama"), "data": str(lm_dir / "prompts.csv"), "checks": ["test-lm-counting"]}
    db = tmp_path / "runs.sqlite"
    run_audit(AuditConfig(**base, reward=f"{scorers}:length", gold=f"{scorers}:words"), db=db, report="")
    seen = lm_check.seen
    assert seen["prompts"] == 6
    assert seen["reward"](["abc", "de"]).tolist() == [3.0, 2.0]
    assert seen["gold"](["a b c"]).tolist() == [3.0]
    for extra, needle in [
        ({"reward": f"{scorers}:length"}, "--gold is missing"),
        ({"gold": f"{scorers}:words"}, "--reward is missing"),
        ({"reward": f"{scorers}:wrong_shape", "gold": f"{scorers}:words"}, r"returned a tensor of shape \(2, 3\)"),
        ({"reward": f"{scorers}:length", "gold": f"{scorers}:not_finite"}, "non-finite rewards"),
        ({"reward": f"{scorers}:nope", "gold": f"{scorers}:words"}, "defines no function 'nope'"),
        ({"reward": f"{scorers}:length", "gold": f"{scorers}:token_ids"}, "take different input types"),
        (
            {"reward": f"{scorers}:length", "gold": f"{scorers}:words", "data": str(lm_dir / "one.csv")},
            "holds 1 prompt; proxy gaming .* needs at least 2",
        ),
    ]:
        with pytest.raises(InputError, match=needle) as info:
            run_audit(AuditConfig(**{**base, **extra}), db=db, report="")
        assert "\n" not in str(info.value)
    assert _counts(db)[0] == 1  # only the first run
    with pytest.raises(InputError, match="--reward applies to a causal language model"):
        run_audit(AuditConfig(model="digits-cnn", reward=f"{scorers}:length", gold=f"{scorers}:words"), db=db)
    assert _counts(db)[0] == 1


def test_cli_refuses_a_reward_without_gold_and_a_wrong_shape_with_one_line(lm_dir, tmp_path):
    db = tmp_path / "runs.sqlite"
    scorers = lm_dir / "scorers.py"
    args = ["audit", "--model", str(lm_dir / "llama"), "--data", str(lm_dir / "prompts.csv"), "--db", str(db)]
    for extra, needle in [
        (["--reward", f"{scorers}:length"], "--gold is missing"),
        (["--reward", f"{scorers}:wrong_shape", "--gold", f"{scorers}:words"], "shape (2, 3)"),
    ]:
        result = CliRunner().invoke(main, [*args, *extra])
        assert result.exit_code == 2, result.output
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert len(lines) == 1 and needle in lines[0], result.output
    assert not db.exists() or _counts(db)[0] == 0


def test_resume_of_an_lm_run_skips_the_stored_tasks(lm_dir, lm_check, tmp_path):
    db = tmp_path / "runs.sqlite"
    config = AuditConfig(model=str(lm_dir / "llama"), data=str(lm_dir / "prompts.csv"), checks=["test-lm-counting"])
    lm_check.crash_at = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_audit(config, db=db, report="")
    assert _counts(db) == (1, 1, 1)
    lm_check.crash_at = -1
    lm_check.calls.clear()
    result = run_audit(config, db=db, report="", resume=True)
    assert result.resumed_tasks == 1 and result.ran_tasks == 2
    assert lm_check.calls == ["t1", "t2"]
    assert _counts(db) == (1, 3, 3)


def test_lm_fingerprint_follows_the_weights_and_the_reward_file(lm_dir, tmp_path):
    from mlsafety.audit._fingerprint import components
    from mlsafety.audit._inputs import prepare_audit_inputs

    config = AuditConfig(model=str(lm_dir / "llama"), data=str(lm_dir / "prompts.csv"))
    inputs = prepare_audit_inputs(config)
    base = components(config, inputs.model, inputs.data)
    assert {"tokenizer", "weights", "data"} <= set(base) and "reward" not in base
    with torch.no_grad():
        inputs.model.module.lm_head.weight[0, 0] += 1.0  # type: ignore[union-attr]
    changed = components(config, inputs.model, inputs.data)
    assert changed["weights"].digest != base["weights"].digest
    assert changed["tokenizer"].digest == base["tokenizer"].digest
    scorers = lm_dir / "scorers.py"
    rewarded = AuditConfig(**{**config.__dict__, "reward": f"{scorers}:length", "gold": f"{scorers}:words"})
    assert {"reward", "gold"} <= set(components(rewarded, inputs.model, inputs.data))


def test_editing_the_reward_file_changes_its_digest_and_refuses_resume(lm_dir, lm_check, tmp_path):
    from mlsafety.audit._fingerprint import components
    from mlsafety.audit._inputs import prepare_audit_inputs

    scorers = tmp_path / "scorers.py"
    scorers.write_text(SCORERS)
    db = tmp_path / "runs.sqlite"
    config = AuditConfig(model=str(lm_dir / "llama"), data=str(lm_dir / "prompts.csv"), checks=["test-lm-counting"],
                         reward=f"{scorers}:length", gold=f"{scorers}:words")  # fmt: skip
    inputs = prepare_audit_inputs(config)
    before = components(config, inputs.model, inputs.data)["reward"].digest
    lm_check.crash_at = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_audit(config, db=db, report="")
    lm_check.crash_at = -1
    scorers.write_text(SCORERS + "\n# edited\n")
    assert components(config, inputs.model, inputs.data)["reward"].digest != before
    with pytest.raises(InputError, match=r"cannot resume run \S+: the proxy reward \(--reward\) changed") as info:
        run_audit(config, db=db, report="", resume=True)
    assert "\n" not in str(info.value)


def test_what_a_reward_file_reads_counts_in_its_digest(lm_dir, tmp_path):
    from mlsafety.audit._fingerprint import components
    from mlsafety.audit._inputs import prepare_audit_inputs

    (tmp_path / "w.txt").write_text("1.0")
    scorers = tmp_path / "reads.py"
    scorers.write_text(
        "from pathlib import Path\nimport torch\n\n\ndef weighted():\n"
        "    w = float((Path(__file__).parent / 'w.txt').read_text())\n"
        "    return lambda texts: torch.tensor([w * len(t) for t in texts])\n"
    )
    config = AuditConfig(model=str(lm_dir / "llama"), data=str(lm_dir / "prompts.csv"),
                         reward=f"{scorers}:weighted", gold=f"{lm_dir / 'scorers.py'}:words")  # fmt: skip

    def digest() -> str:
        inputs = prepare_audit_inputs(config)
        scored = {"reward": inputs.reward, "gold": inputs.gold}
        return components(config, inputs.model, inputs.data, scored)["reward"].digest

    before = digest()
    assert digest() == before  # deterministic scorer: resumable
    (tmp_path / "w.txt").write_text("2.0")  # the .py file is unchanged, its outputs are not
    assert digest() != before
