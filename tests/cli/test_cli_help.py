"""Help defaults read from the library entry (defaults stated once): HyperParams classes and plain callables."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from mlsafety.audit import AuditConfig
from mlsafety.cli import main
from mlsafety.cli._help import EntryDefault, param_default, show_default
from mlsafety.core import HyperParams, Param
from mlsafety.robustness import adversarial_training, trades_training


class Toy(HyperParams):
    """A family entry built on the kit."""

    steps = Param(12, int, low=1, doc="iterations")
    rate = Param(0.0025, float, doc="step")
    eps = Param(doc="radius (required)")


def toy_function(x: int, steps: int = 3, norm: str = "l2") -> None:
    """A plain function entry."""


@dataclass
class ToyConfig:
    seed: int = 7


def test_param_default_reads_hyperparams_functions_and_dataclasses() -> None:
    assert param_default(Toy, "steps") == 12
    assert param_default(Toy, "rate") == 0.0025
    assert param_default(toy_function, "norm") == "l2"
    assert param_default(ToyConfig, "seed") == 7
    with pytest.raises(KeyError):
        param_default(toy_function, "x")  # no default
    with pytest.raises(KeyError):
        param_default(Toy, "nope")


def test_hyperparams_use_describe_params(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kit's description wins over the signature (which a hand-written __init__ may hide).
    monkeypatch.setattr(Toy, "describe_params", classmethod(lambda cls: [("steps", 99, "iterations")]))
    assert param_default(Toy, "steps") == 99


def test_show_default() -> None:
    assert [show_default(v) for v in (1e-3, 6.0, 7, "linf", (0.0, 0.25, 1.0), None)] == [
        "0.001",
        "6",
        "7",
        "linf",
        "0 0.25 1",
        "None",
    ]


def _help_of(command: click.Command) -> str:
    return CliRunner().invoke(command, ["--help"], terminal_width=200).output


def test_entry_default_option_shows_the_entry_default_and_stays_none() -> None:
    seen: dict[str, object] = {}

    @click.command()
    @click.option("--steps", type=int, cls=EntryDefault, default_from=f"{__name__}:Toy", help="Iterations.")
    @click.option("--how", cls=EntryDefault, default_from=f"{__name__}:toy_function", param="norm", help="Norm.")
    def cmd(steps: int | None, how: str | None) -> None:
        seen.update(steps=steps, how=how)

    text = _help_of(cmd)
    assert "Iterations.  [default: 12]" in text
    assert "Norm.  [default: l2]" in text
    assert CliRunner().invoke(cmd, []).exit_code == 0
    assert seen == {"steps": None, "how": None}  # the entry's own default applies, not a copy


@pytest.mark.parametrize(
    ("args", "entry", "options"),
    [
        (["audit"], AuditConfig, {"model": "model", "seed": "seed", "device": "device", "batch-size": "batch_size",
                                   "text-column": "text_column"}),  # --data's default depends on the model
        (["harden"], adversarial_training, {"norm": "norm", "steps": "steps", "epochs": "epochs", "lr": "lr"}),
        (["harden"], trades_training, {"beta": "beta"}),
    ],
)  # fmt: skip
def test_cli_help_defaults_match_the_library(args: list[str], entry: object, options: dict[str, str]) -> None:
    text = " ".join(CliRunner().invoke(main, [*args, "--help"], terminal_width=400).output.split())
    params = inspect.signature(entry).parameters  # type: ignore[arg-type]
    for option, name in options.items():
        line = next(chunk for chunk in text.split(" --") if chunk.startswith(f"{option} "))
        assert line.endswith(f"[default: {show_default(params[name].default)}]"), line


def test_ood_eval_default_detectors_are_the_quick_tagged_ones() -> None:
    from mlsafety.cli._ood import default_detectors
    from mlsafety.monitoring import ood

    quick = ood.DETECTORS.tagged(ood.QUICK)
    assert quick and default_detectors() == quick
    text = " ".join(CliRunner().invoke(main, ["ood", "eval", "--help"], terminal_width=400).output.split())
    assert f"Default: {', '.join(quick)}." in text


def test_explain_sanity_short_help_is_a_whole_phrase() -> None:
    """`mlsafety explain --help` listed `sanity  Sanity checks (Adebayo et al.`: click cut the docstring's first
    sentence at "al.", leaving an open parenthesis."""
    explain = main.commands["explain"]
    assert isinstance(explain, click.Group)
    short = explain.commands["sanity"].get_short_help_str(limit=45)
    assert short.count("(") == short.count(")") and not short.endswith("al."), short


def test_interp_ioi_listing_is_a_whole_phrase() -> None:
    """`mlsafety interp --help` listed `ioi  The IOI circuit report (Wang et al.`: click cuts a docstring's first
    sentence at "al.", so a command citing a paper there needs its own short_help."""
    listing = CliRunner().invoke(main, ["interp", "--help"]).output
    line = next(line for line in listing.splitlines() if line.strip().startswith("ioi "))
    assert line.count("(") == line.count(")") and not line.endswith("al."), line
