"""check_output_path: an output that cannot be written fails before the work, naming the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlsafety.core import InputError, check_output_path


def test_a_writable_path_is_returned_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "w.safetensors"
    assert check_output_path(target, suffix=".safetensors") == target
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path) == []


def test_each_problem_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder; pass --out path/to/file"):
        check_output_path(tmp_path)
    with pytest.raises(InputError, match=r"--out must end in \.safetensors, got w\.pt"):
        check_output_path(tmp_path / "w.pt", suffix=".safetensors")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is not a folder; pass another --report"):
        check_output_path(blocker / "r.html", what="report", flag="--report")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere the file system allows")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="is not writable"):
            check_output_path(ro / "w.safetensors", what="weights")
    finally:
        ro.chmod(0o700)
