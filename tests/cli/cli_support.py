"""Assertions shared by the command-line tests."""


def one_error_line(result, *needles):
    """The one ``error:`` line of a CLI result that exited 2, checked to contain every needle."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
