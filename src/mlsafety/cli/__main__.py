"""``python -m mlsafety.cli``: the same command as ``mlsafety``."""

from mlsafety.cli import main

main()
