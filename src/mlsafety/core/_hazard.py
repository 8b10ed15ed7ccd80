"""Hazards as typed values: a named source of inputs, with one string form for the database key.

A hazard says where a batch of inputs comes from: the clean test data, a corruption at a severity,
an attack at a radius, an out-of-distribution set, a trojan trigger. The audit stores every number
under ``<check>/<hazard>/<metric>``, so a hazard needs a string; everything else passes the typed
value around, and :meth:`Hazard.parse` is the only place that reads the string back.

String forms (the database keys, unchanged since the first wave)::

    clean                                  Hazard.clean()
    corruption                             Hazard.corruption()                  (all corruptions)
    corruption/fog                         Hazard.corruption("fog")             (all severities)
    corruption/fog/3                       Hazard.corruption("fog", 3)
    adversarial                            Hazard.adversarial()                 (the check's subset)
    adversarial/pgd/0.1                    Hazard.adversarial("pgd", 0.1, norm="linf")
    adversarial/pgd/certified-radius       Hazard.adversarial("pgd", at="certified-radius")
    ood/letters                            Hazard.ood("letters")
    trojan/patch                           Hazard.trojan("patch")
    tta-attack/tent/0.1                    Hazard.tta_attack("tent", 0.1)      (DIA, malicious share 0.1)
    <kind>[/<name>]                        Hazard(kind, name)                   (any other kind)

``norm`` and ``source`` are carried with the value but are not part of its string or its
identity: two hazards with the same key are the same hazard.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from mlsafety.core._errors import InputError

_KIND = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_LEVEL = _KIND  # a symbolic radius (certified-radius) is spelled like a kind

CLEAN = "clean"
CORRUPTION = "corruption"
ADVERSARIAL = "adversarial"
OOD = "ood"
TROJAN = "trojan"
TTA_ATTACK = "tta-attack"


@dataclass(frozen=True)
class Hazard:
    """A named source of inputs (see the module docstring for the string forms).

    Attributes:
        kind: the family of the hazard (``clean``, ``corruption``, ``adversarial``, ``ood``,
            ``trojan``, or any other lower-case dashed word a check introduces).
        name: the member of the family (a corruption, an attack, an OOD set, a trigger, a
            monitor); None for the family as a whole.
        severity: a corruption's severity (an integer >= 0; the built-in corruptions use 1..5).
        eps: an attack's radius, in [0, 1] pixel units; kept to the 6 significant digits of its
            string form, so a parsed hazard attacks at exactly the radius its key names.
        at: a symbolic radius instead of ``eps`` (``certified-radius``).
        share: the malicious share of each test batch of a ``tta-attack`` hazard, in (0, 1); kept to
            the 6 significant digits of its string form.
        norm: the threat model's norm (``linf`` / ``l2``) when known; not part of the key.
        source: what makes the inputs (e.g. the producing check), when known; not part of the key.
    """

    kind: str
    name: str | None = None
    severity: int | None = None
    eps: float | None = None
    at: str | None = None
    share: float | None = None
    norm: str | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND.match(self.kind):
            raise InputError(f"hazard kind {self.kind!r} must be lower-case words joined by dashes, e.g. 'corruption'")
        if self.name is not None and (not isinstance(self.name, str) or not self.name or self.name.startswith("/")
                                      or self.name.endswith("/")):  # fmt: skip
            raise InputError(f"hazard name {self.name!r} must be a non-empty string without a leading or trailing '/'")
        levels = sum(v is not None for v in (self.severity, self.eps, self.at, self.share))
        if levels > 1:
            raise InputError("a hazard has at most one of severity, eps, at and share")
        if levels and self.name is None:
            raise InputError(f"a {self.kind} hazard with a severity or radius needs a name")
        if self.severity is not None:
            if isinstance(self.severity, bool) or int(self.severity) != self.severity or self.severity < 0:
                raise InputError(f"hazard severity must be a non-negative integer, got {self.severity!r}")
            object.__setattr__(self, "severity", int(self.severity))
        if self.eps is not None:
            eps = float(self.eps)
            if not math.isfinite(eps) or eps < 0:
                raise InputError(f"hazard eps must be a finite number >= 0, got {self.eps!r}")
            object.__setattr__(self, "eps", float(f"{eps:g}"))
        if self.share is not None:
            share = self.share
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
                raise InputError(f"hazard share must be a malicious share of a batch in (0, 1), got {share!r}")
            object.__setattr__(self, "share", float(f"{float(share):g}"))
        if self.at is not None and not _LEVEL.match(self.at):
            raise InputError(f"hazard level {self.at!r} must be lower-case words joined by dashes")
        if self.norm is not None and self.norm not in ("linf", "l2"):
            raise InputError(f"hazard norm must be 'linf' or 'l2', got {self.norm!r}")

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def clean(cls) -> Hazard:
        return cls(CLEAN)

    @classmethod
    def corruption(cls, name: str | None = None, severity: int | None = None) -> Hazard:
        return cls(CORRUPTION, name, severity=severity)

    @classmethod
    def adversarial(
        cls, attack: str | None = None, eps: float | None = None, *, norm: str | None = None, at: str | None = None,
        source: str | None = None,
    ) -> Hazard:  # fmt: skip
        return cls(ADVERSARIAL, attack, eps=eps, at=at, norm=norm, source=source)

    @classmethod
    def ood(cls, dataset: str) -> Hazard:
        return cls(OOD, dataset)

    @classmethod
    def trojan(cls, trigger: str) -> Hazard:
        return cls(TROJAN, trigger)

    @classmethod
    def tta_attack(cls, method: str, share: float) -> Hazard:
        """The Distribution Invading Attack on test-time adaptation ``method`` with malicious ``share``."""
        return cls(TTA_ATTACK, method, share=share)

    # -- the one string form -------------------------------------------------------------------
    def __str__(self) -> str:
        parts = [self.kind]
        if self.name is not None:
            parts.append(self.name)
        if self.severity is not None:
            parts.append(str(self.severity))
        elif self.eps is not None:
            parts.append(f"{self.eps:g}")
        elif self.at is not None:
            parts.append(self.at)
        elif self.share is not None:
            parts.append(f"{self.share:g}")
        return "/".join(parts)

    @property
    def key(self) -> str:
        """The string form (the database key); ``str(hazard)``."""
        return str(self)

    @classmethod
    def parse(cls, text: str | Hazard) -> Hazard:
        """The hazard whose string form is ``text`` (a :class:`Hazard` is returned as it is).

        Raises:
            InputError: ``text`` is not a hazard's string form (the message shows the forms).
        """
        if isinstance(text, Hazard):
            return text
        if not isinstance(text, str) or not text or text.startswith("/") or text.endswith("/") or "//" in text:
            raise InputError(f"bad hazard {text!r}; use e.g. clean, corruption/fog/3, adversarial/pgd/0.1, ood/letters")
        kind, _, rest = text.partition("/")
        if not rest:
            return cls(kind)
        if kind == CORRUPTION:
            name, _, level = rest.partition("/")
            if not level:
                return cls(kind, name)
            if not level.isdigit():
                raise InputError(f"bad hazard {text!r}: a corruption's severity is an integer, e.g. corruption/fog/3")
            return cls(kind, name, severity=int(level))
        if kind == ADVERSARIAL:
            name, _, level = rest.rpartition("/")
            if not name:
                return cls(kind, level)
            try:
                eps = float(level)
            except ValueError:
                if not _LEVEL.match(level):
                    raise InputError(
                        f"bad hazard {text!r}: use adversarial/<attack>/<eps> with eps a number in pixel units"
                    ) from None
                return cls(kind, name, at=level)
            return cls(kind, name, eps=eps)  # a non-finite or negative eps is refused here
        if kind == TTA_ATTACK:
            name, _, level = rest.rpartition("/")
            if not name:
                return cls(kind, level)  # the family of one method
            try:
                share = float(level)
            except ValueError:
                share = math.nan
            if not 0 < share < 1:
                raise InputError(f"bad hazard {text!r}: use tta-attack/<method>/<share> with a share in (0, 1)")
            return cls(kind, name, share=share)
        return cls(kind, rest)

    # -- helpers -------------------------------------------------------------------------------
    def with_(self, **changes: object) -> Hazard:
        """A copy with some fields changed (``hazard.with_(norm="l2")``)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def family(self) -> Hazard:
        """The hazard one level up: ``corruption/fog/3`` -> ``corruption/fog`` -> ``corruption``."""
        if any(v is not None for v in (self.severity, self.eps, self.at, self.share)):
            return Hazard(self.kind, self.name, norm=self.norm, source=self.source)
        if self.name is not None:
            return Hazard(self.kind, norm=self.norm, source=self.source)
        return self

    def within(self, other: Hazard | str) -> bool:
        """Whether this hazard is ``other`` or one of its members (``corruption/fog/3`` is within
        ``corruption/fog`` and ``corruption``)."""
        other = Hazard.parse(other)
        h: Hazard = self
        while True:
            if h == other:
                return True
            up = h.family()
            if up == h:
                return False
            h = up

    def __lt__(self, other: Hazard) -> bool:
        return str(self) < str(other)
