"""`--executor ray` refusals that need no Ray session (issue 20): Ray not installed, an address that does
not answer. Both are one line, exit 2, and leave no database behind."""

import http.server
import socket
import sys
import threading

import pytest
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


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # the output checked is the CLI's alone
        pass


@pytest.mark.parametrize("kind", ["http", "silent"])
def test_an_address_that_is_not_a_ray_cluster_is_one_line_and_stores_nothing(tmp_path, kind):
    """A port that accepts connections but is no Ray GCS (the dashboard's HTTP port, a silent service): ray.init
    retried it for more than ten minutes, printing a warning every few seconds, before this was checked."""
    db = tmp_path / "runs.sqlite"
    if kind == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]

        def stop() -> None:
            server.shutdown()
            server.server_close()

    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port, stop = listener.getsockname()[1], listener.close
    try:
        address = f"127.0.0.1:{port}"
        res = CliRunner().invoke(main, ["audit", "--executor", "ray", "--ray-address", address, "--db", str(db)])
    finally:
        stop()
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and address in lines[0] and "not answer as a Ray cluster" in lines[0], res.output
    assert not db.exists()


@pytest.mark.parametrize("flag", ["1", "true"])
def test_with_ray_tls_only_the_connection_is_checked(monkeypatch, flag):
    """A TLS cluster's servers answer a TLS handshake alone, never the cleartext HTTP/2 preface: a real cluster
    was refused as 'not a Ray cluster'. An address that does not answer is still refused."""
    from mlsafety.audit._executors import _check_address
    from mlsafety.core import InputError

    monkeypatch.setenv("RAY_USE_TLS", flag)
    with socket.socket() as listener:  # accepts, never speaks cleartext HTTP/2 (as a TLS server does)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _check_address(f"127.0.0.1:{listener.getsockname()[1]}", 1.0)
    with pytest.raises(InputError, match="does not answer"):
        _check_address(f"127.0.0.1:{_closed_port()}", 1.0)
