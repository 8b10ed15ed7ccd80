"""``mlsafety trojans population``: writes a loadable population; bad input is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mlsafety.cli import main


def test_trojans_population_command(tmp_path: Path) -> None:
    out = tmp_path / "pop"
    res = CliRunner().invoke(main, ["trojans", "population", "--out", str(out), "--n", "2", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["trojaned"] for m in manifest["members"]] == [False, True]
    assert all((out / f"{m['name']}.safetensors").is_file() for m in manifest["members"])
    assert "wrote 2 models" in res.output


def test_trojans_population_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "pop"
    res = CliRunner().invoke(main, ["trojans", "population", "--out", str(out), "--n", "1"])
    assert res.exit_code == 2
    assert "--n must be at least 2" in res.output
    assert not out.exists()  # refused before the folder is made
