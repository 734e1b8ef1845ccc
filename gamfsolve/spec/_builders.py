"""Small builders so that a hand-written spec reads like the network.

Each builder returns a plain ``dict`` of spec entries; :func:`make_spec` joins them.
``layout="out_in"`` is PyTorch's (``Linear``: ``(out, in)``, ``Conv``: ``(out, in, *k)``);
``layout="in_out"`` is Keras' (``Dense``: ``(in, out)``, ``Conv``: ``(*k, in, out)``).
A group of ``None`` marks a fixed axis (model input or output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from .._errors import FusionError, FusionTypeError
from ._spec import AxisEntry, PermutationSpec, Split

__all__ = ["attention", "conv", "dense", "make_spec", "mlp_spec", "norm"]

Layout = Literal["out_in", "in_out"]
Entries = dict[str, tuple[AxisEntry, ...]]


def _check_layout(layout: str) -> None:
    if not isinstance(layout, str) or layout not in ("out_in", "in_out"):
        raise FusionError(f"layout must be 'out_in' or 'in_out', got {layout!r}")


def _check_kinds(**values: object) -> None:
    """Names must be non-empty strings, ``bias`` a bool, ``spatial_dims`` an int >= 0."""
    for key, value in values.items():
        if key == "bias" and not isinstance(value, bool):
            raise FusionTypeError(f"bias must be True or False, got {value!r}")
        if key == "spatial_dims" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise FusionError(f"spatial_dims must be an int >= 0, got {value!r}")
        if key not in ("bias", "spatial_dims") and (not isinstance(value, str) or not value):
            raise FusionTypeError(f"{key} must be a non-empty str, got {value!r}")


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
    _check_kinds(name=name, bias=bias, weight=weight, bias_name=bias_name)
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
    _check_kinds(name=name, bias=bias, spatial_dims=spatial_dims, weight=weight, bias_name=bias_name)
    spatial = (None,) * spatial_dims
    axes = (out_group, in_group, *spatial) if layout == "out_in" else (*spatial, in_group, out_group)
    out: Entries = {f"{name}.{weight}": axes}
    if bias:
        out[f"{name}.{bias_name}"] = (out_group,)
    return out


def norm(name: str, group: str, *, keys: Sequence[str] = ("weight", "bias", "running_mean", "running_var")) -> Entries:
    """A normalisation layer whose per-channel vectors all follow ``group``."""
    _check_kinds(name=name, **{f"keys[{i}]": k for i, k in enumerate(keys)})
    return {f"{name}.{key}": (group,) for key in keys}


def attention(
    names: Sequence[str],
    model: str | None,
    heads: str,
    n_heads: int,
    *,
    qk: str | None = None,
    vo: str | None = None,
    n_kv_heads: int | None = None,
    bias: bool = True,
    out_bias: bool | None = None,
    layout: Layout = "out_in",
) -> Entries:
    """Multi-head attention with separate query, key, value and output projections.

    Parameters
    ----------
    names : four str
        The query, key, value and output projection layers.
    model : str or None
        The residual stream's group (the projections' input and the output's output axis).
    heads : str
        Group of the (key/value) heads: ``n_heads`` units, each a block of ``d`` dimensions.
    n_heads : int
        Query heads ``H``; the projections have ``H * d`` outputs.
    qk, vo : str or None
        Within-head groups (``d`` units, the same order in every head): ``qk`` shared by the
        query and key dimensions (their dot product is unchanged), ``vo`` by the value
        dimensions and the output projection's input; ``None`` keeps that order fixed (needed
        for ``qk`` under rotary position embeddings, which rotate fixed pairs of dimensions).
    n_kv_heads : int, optional
        Grouped-query attention: ``n_kv_heads`` key/value heads, each shared by
        ``H / n_kv_heads`` consecutive query heads; ``heads`` then permutes key/value heads and
        their query heads move with them.
    bias, out_bias : bool
        Whether the q/k/v projections (and the output projection; default ``bias``) have biases.
    layout : {"out_in", "in_out"}
        Weight layout, as for :func:`dense`.

    Returns
    -------
    dict
        Spec entries for the four layers.
    """
    if len(names) != 4:
        raise FusionError(f"attention needs four layer names (query, key, value, output), got {names!r}")
    kv = n_heads if n_kv_heads is None else n_kv_heads
    if kv < 1 or n_heads % kv:
        raise FusionError(f"n_heads ({n_heads}) must be a positive multiple of n_kv_heads ({kv})")
    rep = n_heads // kv

    def axis(inner: str | None, query: bool) -> Split:
        if query and rep > 1:
            return Split((heads, None, inner), (kv, rep, -1))
        return Split((heads, inner), (kv, -1))

    q, k, v, o = names
    out_bias = bias if out_bias is None else out_bias
    return {
        **_split_dense(q, model, axis(qk, True), bias, layout),
        **_split_dense(k, model, axis(qk, False), bias, layout),
        **_split_dense(v, model, axis(vo, False), bias, layout),
        **dense(o, axis(vo, True), model, bias=out_bias, layout=layout),
    }


def _split_dense(name: str, in_group: str | None, out: Split, bias: bool, layout: Layout) -> Entries:
    _check_layout(layout)
    entries: Entries = {f"{name}.weight": (out, in_group) if layout == "out_in" else (in_group, out)}
    if bias:
        entries[f"{name}.bias"] = (out,)
    return entries


def make_spec(*parts: Mapping[str, tuple[AxisEntry, ...]]) -> PermutationSpec:
    """Join builder outputs into one :class:`PermutationSpec`; a name given twice is an error."""
    axes: Entries = {}
    for part in parts:
        if not isinstance(part, Mapping):
            raise FusionTypeError(f"make_spec takes builder outputs (mappings), got {type(part).__name__}")
        for key, value in part.items():
            if key in axes:
                raise FusionError(f"parameter {key!r} is described twice")
            axes[key] = value
    return PermutationSpec(axes)


def mlp_spec(
    n_layers: int, *, prefix: str = "layers", bias: bool = True, layout: Layout = "out_in"
) -> PermutationSpec:
    """Spec of an MLP with layers ``{prefix}.0`` to ``{prefix}.{n_layers-1}``; hidden groups ``h0, h1, ...``."""
    _check_kinds(prefix=prefix)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 2:
        raise FusionError(f"n_layers must be at least 2 (one hidden layer), got {n_layers}")
    groups: list[str | None] = [None, *(f"h{i}" for i in range(n_layers - 1)), None]
    return make_spec(
        *(dense(f"{prefix}.{i}", groups[i], groups[i + 1], bias=bias, layout=layout) for i in range(n_layers))
    )
