"""The ``mlsafety`` command: parses arguments, calls the library, prints. Nothing else lives here.

One module per command group; each uses only the public API of the library and of
:mod:`mlsafety.audit`. What they share (consoles, one-line errors, exit codes, paths) is in
:mod:`mlsafety.cli._common`.

Exit codes: 0 ok, 1 a gate failed, 2 bad usage or bad input, 130 stopped by SIGINT (Ctrl-C),
143 stopped by SIGTERM.
"""

from __future__ import annotations

import click

from mlsafety.cli._attack_text import attack_text
from mlsafety.cli._audit import audit, audit_many
from mlsafety.cli._certify import certify
from mlsafety.cli._common import MainGroup
from mlsafety.cli._corrupt import corrupt
from mlsafety.cli._explain import explain_group
from mlsafety.cli._fmea import fmea
from mlsafety.cli._guard import guard_group
from mlsafety.cli._harden import harden
from mlsafety.cli._interp import interp_group
from mlsafety.cli._ood import ood_group
from mlsafety.cli._overopt import overopt_group
from mlsafety.cli._probe import probe
from mlsafety.cli._runs import compare, report, runs
from mlsafety.cli._serve import serve
from mlsafety.cli._trojans import trojans
from mlsafety.cli._tta import tta
from mlsafety.cli._zoo import zoo


@click.group(cls=MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlsafety")
def main() -> None:
    """Measure how safe a trained PyTorch classifier is, and guard it."""


for _command in (
    zoo,
    audit,
    audit_many,
    runs,
    report,
    compare,
    fmea,
    harden,
    trojans,
    corrupt,
    ood_group,
    certify,
    explain_group,
    tta,
    interp_group,
    overopt_group,
    probe,
    attack_text,
    guard_group,
    serve,
):
    main.add_command(_command)

__all__ = ["main"]
