"""The report is self-contained, escapes user strings, and loads in headless Chromium without errors."""

import re
import shutil
import subprocess

import pytest

from mlsafety.audit import AuditConfig, Store, run_audit
from mlsafety.audit._report import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def test_no_network_fetches(quick_audit):
    folder, _ = quick_audit
    html = (folder / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html
    assert html.index('id="scorecard"') < html.index('id="robustness"')


def test_user_strings_are_escaped(tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng(0)
    evil = tmp_path / "<script>alert(1)<"
    evil.mkdir()
    np.savez(evil / "d.npz", x=rng.random((12, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 12))
    result = run_audit(
        AuditConfig(data=str(evil / "d.npz"), checks=["clean"], ood=["noise"]), db=tmp_path / "r.sqlite", report=""
    )
    with Store(tmp_path / "r.sqlite") as store:
        html = render_report(store, result.run_id)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs Debian's chromium)")
def test_report_loads_in_chromium(quick_audit, tmp_path):
    folder, _ = quick_audit
    url = (folder / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert 'id="scorecard"' in dom.stdout and 'class="card' in dom.stdout
    pic = subprocess.run(
        [*base, "--window-size=1280,1600", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert pic.returncode == 0 and shot.stat().st_size > 10_000
