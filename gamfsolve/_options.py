"""Types and ranges of every built-in method's options and of the seed, checked before any work.

One declaration per method (:data:`RULES`): option name -> a check that raises
:class:`OptionError` naming the option and what it accepts. Choices (``affinity="edge"``) are
read from the lists the methods' modules own.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import FusionError, FusionTypeError, OptionError

__all__ = ["RULES", "check_option_values", "check_seed"]

Check = Callable[[str, Any], None]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(lo: int, *, optional: bool = False) -> Check:
    """An integer (not a bool, not a float) ``>= lo``; None too where ``optional``."""

    def check(name: str, value: Any) -> None:
        if optional and value is None:
            return
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise OptionError(f"option {name} must be an integer >= {lo}, got {value!r} ({type(value).__name__})")
        if int(value) < lo:
            raise OptionError(f"option {name} must be an integer >= {lo}, got {value!r}")

    return check


def real(lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = True, hi_open: bool = True,
         optional: bool = False) -> Check:
    """A finite real number in ``(lo, hi)`` (closed ends where ``*_open`` is False); None if ``optional``."""
    lo_text, hi_text = ("(" if lo_open else "["), (")" if hi_open else "]")
    span = f"in {lo_text}{lo:g}, {hi:g}{hi_text}" if math.isfinite(hi) else f"{'>' if lo_open else '>='} {lo:g}"

    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        if not _is_real(value):
            raise OptionError(f"option {name} must be a number {span}, got {value!r} ({type(value).__name__})")
        v = float(value)
        inside = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not inside:
            raise OptionError(f"option {name} must be a finite number {span}, got {value!r}")

    return check


def choice(module: str, attr: str) -> Check:
    """One of the strings in ``gamfsolve.<module>.<attr>`` (read when checked: the method owns the list)."""

    def check(name: str, value: Any) -> None:
        choices = getattr(importlib.import_module(f"gamfsolve.{module}"), attr)
        if not isinstance(value, str) or value not in choices:
            raise OptionError(f"option {name} must be one of {tuple(choices)}, got {value!r}")

    return check


def boolean(*, optional: bool = False, also: tuple[str, ...] = ()) -> Check:
    """``True`` or ``False`` (NumPy's bool too); None if ``optional``; the strings in ``also``.
    Other text such as "no" is refused."""

    def check(name: str, value: Any) -> None:
        if (value is None and optional) or (isinstance(value, str) and value in also):
            return
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            extra = "".join(f" or {v!r}" for v in also)
            raise OptionError(f"option {name} must be True or False{' or None' if optional else ''}{extra}, got {value!r}")

    return check


def widths(name: str, value: Any) -> None:
    """``sigma``: None, a positive number, or a mapping of parameter name to positive number."""
    positive = real()
    if isinstance(value, Mapping):
        for key, v in value.items():
            if not isinstance(key, str):
                raise OptionError(f"option {name} maps parameter names (strings) to widths, got key {key!r}")
            positive(f"{name}[{key!r}]", v)
    elif value is not None:
        positive(name, value)


RULES: dict[str, dict[str, Check]] = {
    "gamf": {
        "affinity": choice("affinity._affinity", "AFFINITIES"), "kernel": choice("affinity._kernels", "KERNELS"), "sigma": widths,
        "sigma_scale": real(optional=True),
        "tau0": real(optional=True), "gamma": real(0.0, 1.0, optional=True), "tau_min": real(),
        "max_sweeps": integer(1, optional=True), "hungarian_tol": real(lo_open=False),
        "tol": real(lo_open=False), "sinkhorn_tol": real(optional=True), "sinkhorn_max_iter": integer(1),
        "max_iter": integer(1), "init": choice("solvers._gamf", "INITS"), "universe": boolean(optional=True),
        "balance": choice("affinity._affinity", "BALANCES"), "series": boolean(also=("plain",)),
    },
    "weight_matching": {"max_iter": integer(1)},
    "ot": {},
    "average": {},
}


def check_option_values(method: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`OptionError` for an option value of the wrong type or out of range."""
    rules = RULES.get(method, {})
    for name, value in options.items():
        if name in rules:
            rules[name](name, value)


def check_seed(seed: Any) -> None:
    """``seed`` must be None or a non-negative integer (NumPy's generators refuse others)."""
    if seed is None:
        return
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise FusionTypeError(f"seed must be None or a non-negative integer, got {seed!r} ({type(seed).__name__})")
    if int(seed) < 0:
        raise FusionError(f"seed must be None or a non-negative integer, got {seed!r}")
