"""The install leaves no broken package behind, and pins everything it installs.

Every peer library of the ``bench`` extra imports in a fresh interpreter, and torchvision, which
torchattacks declares but never imports, is not installed: a torchvision wheel built against another
torch fails at import (``operator torchvision::nms does not exist``) and takes ``import torchmetrics``
down with it, since torchmetrics imports torchvision whenever it is installed. ``make install``
installs the peers with ``--no-deps`` and their other dependencies from ``constraints.txt``.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

IMPORT_NAMES = {"adversarial-robustness-toolbox": "art"}
"""Import name of each peer whose import name is not its distribution name."""


def bench_peers() -> list[str]:
    """Distribution names of the ``bench`` extra, read from the installed mlsafety's metadata."""
    reqs = [Requirement(r) for r in importlib.metadata.requires("mlsafety") or []]
    return sorted(r.name for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "bench"}))


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def import_in_subprocess(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=600)


def test_the_bench_extra_lists_the_peer_libraries() -> None:
    assert {"torchattacks", "adversarial-robustness-toolbox", "captum", "torchmetrics", "imagecorruptions"} <= set(
        bench_peers()
    )


@pytest.mark.parametrize("dist", bench_peers())
def test_every_bench_peer_imports(dist: str) -> None:
    if not any(installed(d) for d in bench_peers()):
        pytest.skip("the `bench` extra is not installed (`make install` installs it)")
    assert installed(dist), f"{dist} is missing while other peers of the `bench` extra are installed"
    module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
    done = import_in_subprocess(module)
    assert done.returncode == 0, f"`import {module}` failed:\n{done.stderr[-2000:]}"


def test_torchvision_is_not_installed_or_imports() -> None:
    if not installed("torchvision"):
        return
    done = import_in_subprocess("torchvision")
    assert done.returncode == 0, f"torchvision is installed and does not import:\n{done.stderr[-2000:]}"


def constraints() -> dict[str, str]:
    """``constraints.txt`` as {canonical name: version}."""
    from pathlib import Path

    from packaging.utils import canonicalize_name

    text = (Path(__file__).parents[1] / "constraints.txt").read_text(encoding="utf-8")
    pins = [line.split("==") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def test_every_installed_dependency_is_pinned_at_its_installed_version() -> None:
    """pyproject's runtime and dev dependencies and theirs, recursively, are pinned at the installed versions."""
    from pathlib import Path

    from packaging.utils import canonicalize_name
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    assert {"transformers", "tokenizers", "gguf", "accelerate", "datasets"} <= {r.name for r in todo}
    pins = constraints()
    seen: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop().name)
        if name in seen:
            continue
        seen.add(name)
        assert name in pins, f"{name} is installed as a dependency but not pinned in constraints.txt"
        installed_version = Version(importlib.metadata.version(name)).public  # 2.13.0+cpu pins as 2.13.0
        assert installed_version == pins[name], f"{name} {installed_version} installed, {pins[name]} pinned"
        for req in importlib.metadata.requires(name) or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r)
    assert "torchvision" not in seen
