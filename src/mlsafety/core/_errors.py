"""Exceptions raised by mlsafety.

Every error that a user can cause with bad input derives from :class:`MlsafetyError`, so the CLI can
turn it into one clear line and exit code 2 without catching programming errors.
"""

from __future__ import annotations


class MlsafetyError(Exception):
    """Base class of the errors a user can cause; the message names the problem and the fix."""


class InputError(MlsafetyError, ValueError):
    """Bad input: a file, tensor, label, name or option the library cannot use."""


class NotFittedError(MlsafetyError, AttributeError):
    """A detector or calibrator was used before ``fit`` was called."""


class UnknownNameError(InputError, KeyError):
    """A registry name (check, attack, detector, corruption, metric) that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
