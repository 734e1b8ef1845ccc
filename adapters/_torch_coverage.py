"""How much of a model the derived spec permutes, and a warning when too little.

The layers' units are the output axes of weighted layers (each opens a unit variable) whose
units do not reach the model's outputs (those always keep their order). When more than
:data:`FIXED_SHARE_WARNING` of them stay fixed, fusion is a plain average there, so
:func:`warn_coverage` raises a :class:`UserWarning` naming the share and the first ops that
fixed them.
"""

from __future__ import annotations

import warnings
from typing import Any

from gamfsolve import PermutationSpec, Split

from ._torch_graph import Chan, Engine

__all__ = ["FIXED_SHARE_WARNING", "coverage", "mark_outputs", "warn_coverage"]

FIXED_SHARE_WARNING = 0.2  # warn when more of the layers' units than this stay fixed


def mark_outputs(eng: Engine, outputs: list[Any]) -> None:
    """Remember every variable in the class of one the model outputs (before they are fixed)."""
    roots = {eng.find(v) for c in outputs if isinstance(c, Chan) for v in c.vars()}
    eng.output_vars.update(v for v in range(1, eng.class_count()) if eng.find(v) in roots)


def coverage(eng: Engine, spec: PermutationSpec) -> tuple[int, int]:
    """``(permuted, total)`` units over the layers' output axes that do not reach the model output."""
    permuted = total = 0
    for name, axis in eng.layer_outputs:
        layout = eng.param_layout(name, axis) or ()
        if any(v in eng.output_vars for s in layout for v in s.vars()):
            continue
        length = eng.param_shape(name)[axis]
        total += length
        entry = spec.axes.get(name, ())[axis] if name in spec.axes else None
        if isinstance(entry, Split):
            permuted += length if any(g is not None for g in entry.groups) else 0
        elif entry is not None:
            permuted += length - _fixed_entries(entry)
    return permuted, total


def _fixed_entries(entry: Any) -> int:
    parts = getattr(entry, "parts", ())
    return sum(p for p in parts if isinstance(p, int))


def warn_coverage(eng: Engine, spec: PermutationSpec, notes: list[str]) -> None:
    """A :class:`UserWarning` when over 20% of the layers' units stay fixed (fusion averages them)."""
    permuted, total = coverage(eng, spec)
    if total and (total - permuted) / total > FIXED_SHARE_WARNING:
        first = "; ".join(notes[:3]) if notes else "no op was named"
        warnings.warn(
            f"{100 * (total - permuted) / total:.0f}% of the layers' units ({total - permuted} of {total}) "
            f"cannot be permuted and will be plainly averaged; first causes: {first}",
            UserWarning, stacklevel=4,
        )
