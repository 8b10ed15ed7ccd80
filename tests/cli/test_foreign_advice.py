"""FOREIGN_ADVICE rewrites advice by text match: if the library rewords a phrase, the rewrite silently stops.

These tests tie every phrase to the library's source, so a rewording fails here instead of reaching a command
that lacks the option it names."""

from __future__ import annotations

from pathlib import Path

import mlsafety
from mlsafety.cli._common import FOREIGN_ADVICE, own_advice

SOURCE = Path(mlsafety.__file__).parent


def _library_text() -> str:
    return "\n".join(
        p.read_text(encoding="utf-8") for p in sorted(SOURCE.rglob("*.py")) if p.relative_to(SOURCE).parts[0] != "cli"
    )


def test_every_phrase_is_in_a_library_message_or_made_by_an_earlier_rewrite() -> None:
    text = _library_text()
    for option, phrase, ours in FOREIGN_ADVICE:  # applied in order, as own_advice applies them to a message
        assert phrase in text, (
            f"FOREIGN_ADVICE phrase {phrase!r} ({option}) appears in no library message: the message was reworded; "
            "update the table in cli/_common.py"
        )
        text = text.replace(phrase, ours)


def test_rewrites_remove_every_option_the_command_lacks() -> None:
    message = "fit data missing, or pass --val (see --image-size, --channels); give --classes with one name per output"
    bare = own_advice(message, set())
    for option, _, _ in FOREIGN_ADVICE:
        assert option not in bare
    assert own_advice(message, {o for o, _, _ in FOREIGN_ADVICE}) == message
