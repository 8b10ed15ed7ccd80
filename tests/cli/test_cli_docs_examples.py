"""The README's and docs' example command lines, run as a user copies them: what each one printed or did
wrong when they were checked (tiny inputs made in the test)."""

from __future__ import annotations

from click.testing import CliRunner

from mlsafety.cli import main


def test_zoo_list_keeps_source_and_description_at_80_columns() -> None:
    # README: "mlsafety zoo list  # embedded models and datasets: modality, size, source". In a pipe or an
    # 80-column terminal the four fixed columns filled the width and Rich dropped both wrapping columns.
    result = CliRunner().invoke(main, ["zoo", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split()
    assert header == ["kind", "name", "modality", "size", "source", "description"]
    assert "vaderSentiment==3.3.2" in result.output and "trained here" in result.output
