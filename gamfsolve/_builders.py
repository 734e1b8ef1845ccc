"""Small builders so that a hand-written spec reads like the network.

Each builder returns a plain ``dict`` of spec entries; :func:`make_spec` joins them.
``layout="out_in"`` is PyTorch's (``Linear``: ``(out, in)``, ``Conv``: ``(out, in, *k)``);
``layout="in_out"`` is Keras' (``Dense``: ``(in, out)``, ``Conv``: ``(*k, in, out)``).
A group of ``None`` marks a fixed axis (model input or output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from ._errors import FusionError
from ._spec import AxisEntry, PermutationSpec

__all__ = ["conv", "dense", "make_spec", "mlp_spec", "norm"]

Layout = Literal["out_in", "in_out"]
Entries = dict[str, tuple[AxisEntry, ...]]


def _check_layout(layout: str) -> None:
    if layout not in ("out_in", "in_out"):
        raise FusionError(f"layout must be 'out_in' or 'in_out', got {layout!r}")


def dense(
    name: str,
    in_group: AxisEntry,
    out_group: str | None,
    *,
    bias: bool = True,
    layout: Layout = "out_in",
    weight: str = "weight",
    bias_name: str = "bias",
) -> Entries:
    """A fully connected layer ``name`` mapping ``in_group`` units to ``out_group`` units."""
    _check_layout(layout)
    axes = (out_group, in_group) if layout == "out_in" else (in_group, out_group)
    out: Entries = {f"{name}.{weight}": axes}
    if bias:
        out[f"{name}.{bias_name}"] = (out_group,)
    return out


def conv(
    name: str,
    in_group: str | None,
    out_group: str | None,
    *,
    bias: bool = True,
    layout: Layout = "out_in",
    spatial_dims: int = 2,
    weight: str = "weight",
    bias_name: str = "bias",
) -> Entries:
    """A convolution with ``spatial_dims`` kernel axes (fixed) between two groups."""
    _check_layout(layout)
    spatial = (None,) * spatial_dims
    axes = (out_group, in_group, *spatial) if layout == "out_in" else (*spatial, in_group, out_group)
    out: Entries = {f"{name}.{weight}": axes}
    if bias:
        out[f"{name}.{bias_name}"] = (out_group,)
    return out


def norm(name: str, group: str, *, keys: Sequence[str] = ("weight", "bias", "running_mean", "running_var")) -> Entries:
    """A normalisation layer whose per-channel vectors all follow ``group``."""
    return {f"{name}.{key}": (group,) for key in keys}


def make_spec(*parts: Mapping[str, tuple[AxisEntry, ...]]) -> PermutationSpec:
    """Join builder outputs into one :class:`PermutationSpec`; a name given twice is an error."""
    axes: Entries = {}
    for part in parts:
        for key, value in part.items():
            if key in axes:
                raise FusionError(f"parameter {key!r} is described twice")
            axes[key] = value
    return PermutationSpec(axes)


def mlp_spec(
    n_layers: int, *, prefix: str = "layers", bias: bool = True, layout: Layout = "out_in"
) -> PermutationSpec:
    """Spec of an MLP with layers ``{prefix}.0`` to ``{prefix}.{n_layers-1}``; hidden groups ``h0, h1, ...``."""
    if n_layers < 2:
        raise FusionError(f"n_layers must be at least 2 (one hidden layer), got {n_layers}")
    groups: list[str | None] = [None, *(f"h{i}" for i in range(n_layers - 1)), None]
    return make_spec(
        *(dense(f"{prefix}.{i}", groups[i], groups[i + 1], bias=bias, layout=layout) for i in range(n_layers))
    )
