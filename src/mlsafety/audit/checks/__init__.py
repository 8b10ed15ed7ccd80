"""The registered audit checks: one module per check; every module here is imported on load.

Adding a check means adding a file here that decorates a :class:`~mlsafety.audit.Check` subclass
with ``@register_check("name")``; the engine, store and report need no change.
"""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
