"""`--executor ray` refusals that need no Ray session (issue 20): Ray not installed, an address that does
not answer. Both are one line, exit 2, and leave no database behind."""

import socket
import sys

from click.testing import CliRunner

from mlsafety.cli import main


def test_without_ray_the_install_command_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    db = tmp_path / "runs.sqlite"
    res = CliRunner().invoke(main, ["audit", "--executor", "ray", "--check", "clean", "--db", str(db)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'mlsafety[ray]'" in lines[0], res.output
    assert not db.exists()
    many = CliRunner().invoke(main, ["audit-many", "digits-cnn", "--executor", "ray", "--db", str(db)])
    assert many.exit_code == 2 and "mlsafety[ray]" in many.output and not db.exists()


def _closed_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_address_that_does_not_answer_is_one_line_and_stores_nothing(tmp_path, monkeypatch):
    db = tmp_path / "runs.sqlite"
    address = f"127.0.0.1:{_closed_port()}"
    res = CliRunner().invoke(main, ["audit", "--executor", "ray", "--ray-address", address, "--db", str(db)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and address in lines[0] and "does not answer" in lines[0], res.output
    assert not db.exists()
    monkeypatch.setenv("RAY_ADDRESS", address)  # the environment's address is checked the same way
    res = CliRunner().invoke(main, ["audit", "--executor", "ray", "--db", str(db)])
    assert res.exit_code == 2 and "does not answer" in res.output and not db.exists()
    bad = CliRunner().invoke(main, ["audit", "--executor", "ray", "--ray-address", "nohost", "--db", str(db)])
    assert bad.exit_code == 2 and "HOST:PORT" in bad.output
    local = CliRunner().invoke(main, ["audit", "--ray-address", address, "--db", str(db)])
    assert local.exit_code == 2 and "--executor ray" in local.output and not db.exists()
