"""Scale guards: estimate a solve's working memory before any long work, and refuse what will not fit.

A matching method holds, for the group being solved, a few dense ``n x n`` matrices per model
(scores, soft plans, Sinkhorn's kernel and scalings, the Hungarian step's float64 copy), besides
the models themselves. For a 20,000-unit layer one such float32 matrix is 1.6 GB and the
Hungarian step alone is ``O(n^3)``: hours. :func:`check_scale` estimates the peak of those
matrices from the group sizes alone (well under a second) and raises :class:`ScaleError` naming
the widest group, its width and the estimate when it exceeds ``max_memory``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._errors import OptionError, ScaleError

__all__ = ["DEFAULT_MAX_MEMORY", "DENSE_MATRICES", "check_scale", "parse_memory", "working_memory"]

DEFAULT_MAX_MEMORY = 4 << 30  # 4 GiB of solver working memory beyond the models themselves

# Dense n x n matrices alive at once for one group, per model that moves, by method: gamf holds the
# scores, the plan and the previous sweep's plan, Sinkhorn's kernel and one temporary; weight
# matching and ot the cost and a temporary; all add the Hungarian step's float64 copy (2 units of
# float32). Counted in units of the models' dtype.
DENSE_MATRICES = {"gamf": 5.0, "weight_matching": 2.0, "ot": 3.0, "average": 0.0}
HUNGARIAN_COPY = 8  # bytes per entry of the host float64 copy


def working_memory(sizes: Mapping[str, int], itemsize: int, n_models: int, method: str) -> tuple[int, str, int]:
    """``(bytes, widest group, its width)``: the estimated peak of a solve's dense matrices.

    ``sizes``: unit count per group; ``itemsize``: bytes per number of the models' dtype. The
    peak is set by the widest group (colour classes of narrow groups are smaller): ``DENSE_MATRICES``
    per moving model plus the Hungarian copy, ``n^2`` entries each.
    """
    if not sizes:
        return 0, "", 0
    group = max(sizes, key=lambda g: sizes[g])
    n = int(sizes[group])
    movers = max(1, n_models - 1) if method != "gamf" else max(1, n_models)
    per = DENSE_MATRICES.get(method, 3.0) * itemsize * movers + (HUNGARIAN_COPY if method != "average" else 0)
    return int(n * n * per), group, n


def parse_memory(value: int | float | str | None) -> int:
    """Bytes from an int/float or a string such as ``"512MB"``, ``"8GiB"``; None: the default."""
    if value is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(value, bool):
        raise OptionError(f"max_memory must be a number of bytes or a size such as '8GB', got {value!r}")
    if isinstance(value, (int, float)):
        if not value > 0:
            raise OptionError(f"max_memory must be positive, got {value!r}")
        return int(value)
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
                 "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
        for suffix, scale in units.items():
            if text.endswith(suffix):
                try:
                    number = float(text[: -len(suffix)])
                except ValueError:
                    break
                if number > 0:
                    return int(number * scale)
                break
    raise OptionError(f"max_memory must be a number of bytes or a size such as '8GB', got {value!r}")


def check_scale(sizes: Mapping[str, int], itemsize: int, n_models: int, method: str,
                max_memory: int | float | str | None = None) -> int:
    """Raise :class:`ScaleError` when the estimated working memory exceeds ``max_memory``.

    Returns the estimate in bytes. The message names the group, its width, the estimate and the
    option that lifts the limit.
    """
    limit = parse_memory(max_memory)
    need, group, n = working_memory(sizes, itemsize, n_models, method)
    if need > limit:
        raise ScaleError(
            f"group {group!r} has {n} units: {method} would hold about {_size(need)} of dense "
            f"{n} x {n} matrices ({n_models} models), over max_memory={_size(limit)}, and its "
            f"assignment step costs O(n^3); pass max_memory= to allow it, or fix this group (leave it "
            f"out of the spec)"
        )
    return need


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
