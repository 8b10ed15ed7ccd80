"""Commands that write a file check --out before their long work (exit 2, one line, nothing done)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.cli.cli_support import one_error_line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["harden", "--eps", "0.1", "--out", "{tmp}/w.pt"], "--out must end in .safetensors"),
        (["harden", "--eps", "0.1", "--out", "{tmp}"], "is a directory"),  # click checks this one
        (["harden", "--eps", "0.1", "--out", "{tmp}/file/w.safetensors"], "is not a folder; pass another --out"),
        (["zoo", "train", "digits-cnn", "--out", "{tmp}/file/w.safetensors"], "is not a folder; pass another --out"),
        (["zoo", "train", "digits-cnn", "--out", "{tmp}/w.bin"], "--out must end in .safetensors"),
        (["corrupt", "zoo:digits:0", "--out", "{tmp}/file/g.png"], "is not a folder; pass another --out"),
    ],
)
def test_a_bad_out_fails_before_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args, needle) -> None:
    import mlsafety.robustness as robustness
    import mlsafety.zoo as zoo

    def never(*a, **k):  # the long work must not start
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(robustness, "harden", never)
    monkeypatch.setattr(zoo, "train_model", never)
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    one_error_line(result, needle)


def test_report_out_under_a_file_names_the_file_not_errno(tmp_path: Path) -> None:
    """`mlsafety report latest --out notes.txt/r.html` said "cannot write the report to ...: File exists" (the
    strerror of mkdir); it says, as audit --report does, that notes.txt is not a folder."""
    db = str(tmp_path / "r.sqlite")
    assert (
        CliRunner()
        .invoke(main, ["audit", "--check", "clean", "--db", db, "--report", str(tmp_path / "a.html")])
        .exit_code
        == 0
    )
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["report", "latest", "--db", db, "--out", str(tmp_path / "file" / "r.html")])
    one_error_line(result, "file is not a folder; pass another --out")
