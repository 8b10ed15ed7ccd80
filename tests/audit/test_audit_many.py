"""``audit-many`` without Ray: one ordinary run per model, and arguments refused before an executor starts."""

import pytest

from mlsafety.audit import AuditConfig, LocalExecutor, run_audit, run_many
from mlsafety.core import InputError
from tests.support.many import write_models_and_data


class _Recording(LocalExecutor):
    started = 0

    def start(self) -> None:
        type(self).started += 1


@pytest.fixture
def files(tmp_path):
    write_models_and_data(tmp_path, 30)
    return tmp_path


def test_bad_arguments_are_refused_before_the_executor_starts(files):
    cfg = AuditConfig(data=str(files / "d.npz"), ood=[], checks=["clean"], weights=str(files / "w.safetensors"))
    models = [f"{files}/m.py:a", f"{files}/m.py:b"]
    with pytest.raises(InputError, match="--weights names one model's weights"):
        run_many(cfg, models, db=files / "runs.sqlite", executor=_Recording())
    with pytest.raises(InputError, match="parallel must be at least 1"):
        run_many(AuditConfig(data=str(files / "d.npz")), models, db=files / "runs.sqlite", executor=_Recording(),
                 parallel=0)  # fmt: skip
    assert _Recording.started == 0 and not (files / "runs.sqlite").exists()


def test_each_model_is_an_ordinary_run_with_the_rows_of_its_own_audit(files):
    cfg = AuditConfig(data=str(files / "d.npz"), ood=[], checks=["clean", "calibration-basic"], seed=2)
    models = [f"{files}/m.py:a", f"{files}/m.py:b"]
    many = run_many(cfg, models, db=files / "many.sqlite")
    for model, result in zip(models, many, strict=True):
        assert not isinstance(result, Exception), result
        alone = run_audit(AuditConfig(**{**cfg.__dict__, "model": model}), db=files / "alone.sqlite", report="")
        assert [(r.key, r.value, r.ci_low, r.ci_high, r.n) for r in result.rows] == [
            (r.key, r.value, r.ci_low, r.ci_high, r.n) for r in alone.rows
        ]
    assert [r.value for r in many[0].rows] != [r.value for r in many[1].rows]
