"""Import-only stand-in for flair (TextAttack imports it at module load; PWWS/DeepWordBug never call it)."""

from . import data, models  # noqa: F401
