"""The working precision and scale of a matching, so that no input range overflows or underflows.

Matching is done in the widest floating dtype among the models, at least float32 (bfloat16 and
float16 are matched in float32; a float32 model with a float64 model in float64). Every method's
result is unchanged when all arrays are multiplied by one power of two (kernel widths and scores
scale with them, exactly in binary floating point), so arrays whose largest magnitude is far from
1 (1e19, 1e-25) are brought near 1 before matching instead of overflowing or underflowing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import OptionError

__all__ = ["compute_dtype", "output_dtype", "power_of_two_scale", "scale_widths", "scaled", "to_dtype"]

Array = Any
Model = Mapping[str, Array]
_LIMIT = 16  # rescale when the largest magnitude is outside [2**-16, 2**16]


def _bits(xp: Any, dtype: Any) -> int:
    return int(xp.finfo(dtype).bits)


def output_dtype(models: Sequence[Model], xp: Any) -> Any:
    """The widest floating dtype among the models' arrays (the merged result's dtype)."""
    best = None
    for model in models:
        for x in model.values():
            if best is None or _bits(xp, x.dtype) > _bits(xp, best):
                best = x.dtype
    return best


def compute_dtype(models: Sequence[Model], xp: Any) -> Any:
    """:func:`output_dtype`, at least float32."""
    out = output_dtype(models, xp)
    return xp.float32 if out is None or _bits(xp, out) < 32 else out


def to_dtype(models: Sequence[Model], xp: Any, dtype: Any) -> list[dict[str, Array]]:
    """The models with every array in ``dtype`` (arrays already in it are not copied)."""
    return [{n: x if x.dtype == dtype else xp.astype(x, dtype) for n, x in m.items()} for m in models]


def power_of_two_scale(models: Sequence[Model], xp: Any) -> int:
    """``e`` such that ``2**e * max|x|`` lies in [0.5, 1); 0 when ``max|x|`` is in [2**-16, 2**16] or 0."""
    top = 0.0
    for model in models:
        for x in model.values():
            if math.prod(x.shape):
                top = max(top, float(xp.max(xp.abs(x))))
    if top == 0.0 or 2.0**-_LIMIT <= top <= 2.0**_LIMIT:
        return 0
    return -math.frexp(top)[1]


def scaled(models: Sequence[Model], exponent: int) -> list[dict[str, Array]]:
    """Every array times ``2**exponent``, in two exact steps so that no factor overflows."""
    if exponent == 0:
        return [dict(m) for m in models]
    half = exponent // 2
    a, b = math.ldexp(1.0, half), math.ldexp(1.0, exponent - half)
    return [{n: (x * a) * b for n, x in m.items()} for m in models]


def scale_widths(sigma: Any, exponent: int) -> Any:
    """A kernel width option (squared-distance units) for arrays scaled by ``2**exponent``."""
    if sigma is None or exponent == 0:
        return sigma
    try:
        if isinstance(sigma, Mapping):
            return {k: math.ldexp(float(v), 2 * exponent) for k, v in sigma.items()}
        return math.ldexp(float(sigma), 2 * exponent)
    except OverflowError:
        raise OptionError(f"option sigma={sigma!r} is out of range for arrays of this magnitude") from None
