"""The import contract (tools/check_layers.py): holds on the package, and fails on each kind of break."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "check_layers.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


layers = _load()


def _run(src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(src)], capture_output=True, text=True, cwd=src.parent)


def _package(root: Path, files: dict[str, str]) -> Path:
    """A fake ``mlsafety`` under ``root/src`` with the given files (every folder gets an ``__init__``)."""
    src = root / "src"
    for rel, text in {"__init__.py": "", **files}.items():
        path = src / "mlsafety" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(src / "mlsafety").parents:
            (src / "mlsafety" / parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(text))
    return src


@pytest.fixture(autouse=True)
def _no_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake packages below are judged by the rules alone, not by today's allow-list."""
    monkeypatch.setattr(layers, "ALLOW", {})


def _problems(src: Path) -> list[str]:
    problems, _ = layers.check(src, cwd=src.parent)
    return problems


def test_the_package_keeps_the_contract() -> None:
    done = _run(REPO / "src")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_real_violation_fails_with_file_line_module_and_rule(tmp_path: Path) -> None:
    # The package's own sources with one deliberate break: the bottom floor importing the audit.
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "mlsafety", src / "mlsafety", ignore=shutil.ignore_patterns("*.safetensors"))
    errors = src / "mlsafety" / "core" / "_errors.py"
    lines = errors.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(("import ", "from "))) + 1
    lines.insert(at - 1, "import mlsafety.audit")
    errors.write_text("\n".join(lines) + "\n")
    done = _run(src)
    assert done.returncode == 1
    expected = f"src/mlsafety/core/_errors.py:{at}: imports mlsafety.audit: core imports only core [layer]"
    assert expected in done.stdout.splitlines(), done.stdout
    assert "break the layering contract" in done.stderr


def test_each_floor_rule(tmp_path: Path) -> None:
    src = _package(
        tmp_path,
        {
            "core/_a.py": "from mlsafety.metrics import auroc\n",
            "metrics/__init__.py": "from mlsafety import zoo\n",
            "zoo/_models.py": "def train():\n    from mlsafety.robustness import _denoise\n",
            "robustness/_denoise.py": "from ..monitoring import ood\n",  # relative import resolved
            "monitoring/ood.py": "from mlsafety.core import _a\nfrom mlsafety.zoo import _data\n",
            "zoo/_data.py": "",
            "audit/_engine.py": "import mlsafety.cli\n",
            "cli/__init__.py": "import mlsafety.serve\nfrom mlsafety.audit import _store\nfrom mlsafety import audit\n",
            "cli/_common.py": "from mlsafety.cli import _zoo\n",  # its own private modules: fine
            "cli/_zoo.py": "",
            "audit/_store.py": "",
            "serve.py": "",
            "extra.py": "",
            "alignment/probe.py": "import mlsafety.extra\n",
        },
    )
    problems = _problems(src)
    assert problems == [
        "src/mlsafety/alignment/probe.py:1: imports mlsafety.extra: pillar alignment imports only core, metrics, "
        "zoo and itself (pillars never import each other) [layer]",
        "src/mlsafety/audit/_engine.py:1: imports mlsafety.cli: audit imports only the library (never cli or serve) "
        "[layer]",
        "src/mlsafety/cli/__init__.py:1: imports mlsafety.serve: cli imports the library and audit, never another "
        "edge [layer]",
        "src/mlsafety/cli/__init__.py:2: imports mlsafety.audit._store: cli uses only public API (a package's "
        "__init__, no _private module) [private]",
        "src/mlsafety/core/_a.py:1: imports mlsafety.metrics: core imports only core [layer]",
        "src/mlsafety/metrics/__init__.py:1: imports mlsafety.zoo: metrics imports only core and metrics [layer]",
        "src/mlsafety/robustness/_denoise.py:1: imports mlsafety.monitoring.ood: pillar robustness imports only "
        "core, metrics, zoo and itself (pillars never import each other) [layer]",
        "src/mlsafety/zoo/_models.py:2: imports mlsafety.robustness._denoise (in a function): zoo imports only "
        "core, metrics and zoo (no pillar, nothing above) [layer]",
    ]


def test_a_new_top_level_module_must_be_placed(tmp_path: Path) -> None:
    src = _package(tmp_path, {"_types.py": "from mlsafety.core import _model\n", "core/_model.py": ""})
    assert _problems(src) == [
        "src/mlsafety/_types.py:1: imports mlsafety.core._model: mlsafety._types has no floor: "
        "place it in tools/check_layers.py [layer]"
    ]


def test_the_facade_is_imported_only_from_above(tmp_path: Path) -> None:
    src = _package(
        tmp_path,
        {
            "__init__.py": "from mlsafety import zoo\n",
            "zoo/__init__.py": "",
            "monitoring/x.py": "import mlsafety\n",
            "audit/x.py": "import mlsafety\nfrom mlsafety import zoo\n",
        },
    )
    assert _problems(src) == [
        "src/mlsafety/monitoring/x.py:1: imports mlsafety: pillar monitoring imports only core, metrics, zoo and "
        "itself (pillars never import each other) [layer]"
    ]


def test_cycles_count_deferred_imports_but_not_type_checking_ones(tmp_path: Path) -> None:
    src = _package(
        tmp_path,
        {
            "core/_a.py": "from mlsafety.core import _b\n",
            "core/_b.py": "def f():\n    import mlsafety.core._a\n",
            "core/_c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mlsafety.core._d import D\n",
            "core/_d.py": "from mlsafety.core._c import C\n",
            # A package whose __init__ imports its submodules, which import each other by full path:
            # not a cycle (parent packages are not counted as imported).
            "core/fam/__init__.py": "from mlsafety.core.fam.base import Base\nfrom mlsafety.core.fam.knn import K\n",
            "core/fam/base.py": "",
            "core/fam/knn.py": "from mlsafety.core.fam.base import Base\n",
        },
    )
    loop = "mlsafety.core._a -> mlsafety.core._b -> mlsafety.core._a"
    assert _problems(src) == [
        f"src/mlsafety/core/_a.py:1: imports mlsafety.core._b: no import cycles ({loop}) [cycle]",
        f"src/mlsafety/core/_b.py:2: imports mlsafety.core._a (in a function): no import cycles ({loop}) [cycle]",
    ]


def test_a_type_checking_import_still_counts_for_the_floors(tmp_path: Path) -> None:
    src = _package(tmp_path, {"core/_a.py": "import typing\nif typing.TYPE_CHECKING:\n    import mlsafety.audit\n"})
    assert _problems(src) == [
        "src/mlsafety/core/_a.py:3: imports mlsafety.audit (under TYPE_CHECKING): core imports only core [layer]"
    ]


def test_allow_list_entries_pass_and_stale_ones_are_noted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _package(tmp_path, {"zoo/_models.py": "def f():\n    import mlsafety.monitoring.x\n", "monitoring/x.py": ""})
    monkeypatch.setattr(
        layers,
        "ALLOW",
        {("mlsafety.zoo._models", "mlsafety.monitoring.x"): "being moved", ("mlsafety.a", "mlsafety.b"): "gone"},
    )
    problems, notes = layers.check(src, cwd=src.parent)
    assert problems == []
    assert notes[0].startswith("allowed for now (being moved): src/mlsafety/zoo/_models.py:2:")
    assert notes[1] == "stale allow-list entry (no such violation any more; delete it): mlsafety.a -> mlsafety.b"


def test_no_package_is_a_usage_error(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 2
    assert "no mlsafety package under" in done.stderr
