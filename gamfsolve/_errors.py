"""The library's exceptions and warnings."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "FusionError", "FusionTypeError", "OptionError", "ScaleError", "UnsafeFileError"]


class FusionError(ValueError):
    """Invalid input to a gamfsolve function: a value, shape or spec that cannot be fused."""


class FusionTypeError(FusionError, TypeError):
    """Input of the wrong kind: an integer array, mixed array libraries, a non-array."""


class OptionError(FusionError):
    """An unknown method option, or one with an invalid value (an unknown choice, a schedule out of range)."""


class UnsafeFileError(FusionError):
    """A model file that reading would run code from (a pickle, compiled code, code strings); it is refused."""


class ConvergenceWarning(UserWarning):
    """A solver stopped at its iteration limit before its convergence test passed."""


class ScaleError(FusionError):
    """A problem too large for the limits set (``max_memory``): refused before any long work."""
