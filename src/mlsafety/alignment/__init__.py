"""Alignment: probes and contrast-consistent search on hidden states arrive in a later release.

Nothing is exported yet; the package exists so the layout of DESIGN.md holds and the report can say
plainly that this pillar was not audited.
"""

__all__: list[str] = []
