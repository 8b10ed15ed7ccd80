"""`mlsafety zoo train NAME` finds every embedded model's recipe, whichever layer registers it."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import mlsafety.zoo as zoo
from click.testing import CliRunner
from mlsafety.cli import main
from mlsafety.core import training_recipe
from mlsafety.zoo._models import model_info

found = []
def resolve_only(name, out=None, seed=0, progress=None):  # look the recipe up; do not train
    info = model_info(name)
    found.append(training_recipe(info.recipe, home=info.trained_by))
    return "unused"

zoo.train_model = resolve_only
names = [n for n in zoo.model_names() if model_info(n).recipe]
for n in names:
    res = CliRunner().invoke(main, ["zoo", "train", n])
    assert res.exit_code == 0, (n, res.output)
assert len(found) == len(names) >= 4, names
"""


def test_the_cli_finds_every_zoo_recipe_in_a_fresh_interpreter() -> None:
    # A fresh interpreter, so no other test has imported the pillars that register recipes.
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
