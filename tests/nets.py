"""Random NumPy networks with their specs and forward passes, for the core tests.

Each builder returns ``(params, spec, forward)``; ``forward(params, x)`` runs the network,
so that a test can check that a permutation leaves the function unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import gamfsolve as g

Params = dict[str, np.ndarray]
Net = tuple[Params, g.PermutationSpec, Callable[[Params, np.ndarray], np.ndarray]]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def mlp(widths: list[int], rng: np.random.Generator, *, bias: bool = True, layout: str = "out_in") -> Net:
    """An MLP ``widths[0] -> ... -> widths[-1]`` with ReLU, in either weight layout."""
    n = len(widths) - 1
    params: Params = {}
    for i in range(n):
        w = rng.normal(size=(widths[i + 1], widths[i])) / np.sqrt(widths[i])
        params[f"layers.{i}.weight"] = w if layout == "out_in" else w.T.copy()
        if bias:
            params[f"layers.{i}.bias"] = 0.1 * rng.normal(size=widths[i + 1])
    spec = g.mlp_spec(n, bias=bias, layout=layout)  # type: ignore[arg-type]

    def forward(p: Params, x: np.ndarray) -> np.ndarray:
        for i in range(n):
            w = p[f"layers.{i}.weight"]
            x = x @ (w.T if layout == "out_in" else w) + (p[f"layers.{i}.bias"] if bias else 0.0)
            if i < n - 1:
                x = _relu(x)
        return x

    return params, spec, forward


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'Same' 3x3 convolution, (N, C, H, W) x (O, C, 3, 3)."""
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(2, 3))  # N C H W 3 3
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def conv_chain(channels: list[int], rng: np.random.Generator, *, hw: int = 4, n_out: int = 3) -> Net:
    """3x3 convs with BatchNorm-like scale/shift vectors, flattened (C*H*W) into a dense head."""
    n = len(channels) - 1
    params: Params = {}
    parts = []
    groups: list[str | None] = [None, *(f"c{i}" for i in range(n))]
    for i in range(n):
        params[f"conv{i}.weight"] = rng.normal(size=(channels[i + 1], channels[i], 3, 3)) / np.sqrt(9 * channels[i])
        params[f"conv{i}.bias"] = 0.1 * rng.normal(size=channels[i + 1])
        params[f"norm{i}.weight"] = 1.0 + 0.1 * rng.normal(size=channels[i + 1])
        params[f"norm{i}.bias"] = 0.1 * rng.normal(size=channels[i + 1])
        parts += [g.conv(f"conv{i}", groups[i], groups[i + 1]), g.norm(f"norm{i}", groups[i + 1], keys=("weight", "bias"))]
    params["fc.weight"] = rng.normal(size=(n_out, channels[-1] * hw * hw)) / np.sqrt(channels[-1] * hw * hw)
    params["fc.bias"] = 0.1 * rng.normal(size=n_out)
    parts.append(g.dense("fc", g.Blocks(f"c{n - 1}", inner=hw * hw), None))
    spec = g.make_spec(*parts)

    def forward(p: Params, x: np.ndarray) -> np.ndarray:
        for i in range(n):
            x = _conv(x, p[f"conv{i}.weight"], p[f"conv{i}.bias"])
            x = _relu(x * p[f"norm{i}.weight"][None, :, None, None] + p[f"norm{i}.bias"][None, :, None, None])
        return x.reshape(x.shape[0], -1) @ p["fc.weight"].T + p["fc.bias"]

    return params, spec, forward


def residual(d_in: int, width: int, hidden: int, n_blocks: int, rng: np.random.Generator, *, d_out: int = 3) -> Net:
    """A residual MLP: one stream group ``res`` shared by every block's input and output."""
    params: Params = {"inp.weight": rng.normal(size=(width, d_in)) / np.sqrt(d_in), "inp.bias": 0.1 * rng.normal(size=width)}
    parts = [g.dense("inp", None, "res")]
    for i in range(n_blocks):
        params[f"b{i}.fc1.weight"] = rng.normal(size=(hidden, width)) / np.sqrt(width)
        params[f"b{i}.fc1.bias"] = 0.1 * rng.normal(size=hidden)
        params[f"b{i}.fc2.weight"] = rng.normal(size=(width, hidden)) / np.sqrt(hidden)
        params[f"b{i}.fc2.bias"] = 0.1 * rng.normal(size=width)
        parts += [g.dense(f"b{i}.fc1", "res", f"b{i}"), g.dense(f"b{i}.fc2", f"b{i}", "res")]
    params["out.weight"] = rng.normal(size=(d_out, width)) / np.sqrt(width)
    params["out.bias"] = 0.1 * rng.normal(size=d_out)
    parts.append(g.dense("out", "res", None))
    spec = g.make_spec(*parts)

    def forward(p: Params, x: np.ndarray) -> np.ndarray:
        h = x @ p["inp.weight"].T + p["inp.bias"]
        for i in range(n_blocks):
            z = _relu(h @ p[f"b{i}.fc1.weight"].T + p[f"b{i}.fc1.bias"])
            h = h + z @ p[f"b{i}.fc2.weight"].T + p[f"b{i}.fc2.bias"]
        return _relu(h) @ p["out.weight"].T + p["out.bias"]

    return params, spec, forward


def random_perms(spec: g.PermutationSpec, params: Params, rng: np.random.Generator) -> dict[str, np.ndarray]:
    sizes = spec.group_sizes({k: v.shape for k, v in params.items()})
    return {grp: rng.permutation(n) for grp, n in sizes.items()}


def noisy(params: Params, level: float, rng: np.random.Generator) -> Params:
    """Add Gaussian noise of ``level`` times each parameter's standard deviation."""
    return {k: v + level * (np.std(v) or 1.0) * rng.normal(size=v.shape) for k, v in params.items()}


def keep_units(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``n`` unit indices, sorted."""
    return np.sort(rng.choice(n, k, replace=False))


def pruned_copy(params: Params, spec: g.PermutationSpec, keep: dict[str, np.ndarray], rng: np.random.Generator) -> Params:
    """A permuted copy of ``params`` that has only the units ``keep[group]`` of each group."""
    sizes = spec.group_sizes({k: v.shape for k, v in params.items()})
    # place the model into a universe order with the kept units first, then cut the rest off
    order = {grp: np.concatenate([keep[grp], np.setdiff1d(np.arange(n), keep[grp])]) for grp, n in sizes.items()}
    moved = g.permute(params, spec, order)
    out = {}
    for name, x in moved.items():
        index = []
        for e in spec.axes[name]:  # plain group axes and channels-first Blocks (outer = 1)
            if isinstance(e, g.Blocks):
                index.append(slice(0, len(keep[e.group]) * e.inner))
            else:
                index.append(slice(0, len(keep[e])) if isinstance(e, str) else slice(None))
        out[name] = x[tuple(index)].copy()
    return g.permute(out, spec, {grp: rng.permutation(len(k)) for grp, k in keep.items()})


def attention(d_in: int, width: int, n_heads: int, d_head: int, rng: np.random.Generator, *, n_kv: int | None = None,
              d_out: int = 3) -> Net:
    """Embedding, one multi-head attention block with a residual (grouped-query when ``n_kv`` is set), readout.

    The query/key and value/output head dimensions are ``d_head`` and ``d_head + 1``.
    """
    kv = n_kv or n_heads
    dq, dv = d_head, d_head + 1
    shapes = {"inp": (width, d_in), "q": (n_heads * dq, width), "k": (kv * dq, width), "v": (kv * dv, width),
              "o": (width, n_heads * dv), "out": (d_out, width)}
    params: Params = {}
    for name, (o, i) in shapes.items():
        params[f"{name}.weight"] = rng.normal(size=(o, i)) / np.sqrt(i)
        params[f"{name}.bias"] = 0.1 * rng.normal(size=o)
    spec = g.make_spec(g.dense("inp", None, "res"), g.dense("out", "res", None),
                       g.attention(["q", "k", "v", "o"], "res", "heads", n_heads, qk="qk", vo="vo", n_kv_heads=n_kv))

    def forward(p: Params, x: np.ndarray) -> np.ndarray:
        def lin(name: str, y: np.ndarray) -> np.ndarray:
            return y @ p[f"{name}.weight"].T + p[f"{name}.bias"]

        h = lin("inp", x)  # (B, T, width)
        b, t, _ = h.shape
        heads = p["q.weight"].shape[0] // (p["q.weight"].shape[0] // n_heads)
        q = lin("q", h).reshape(b, t, heads, -1)
        k = np.repeat(lin("k", h).reshape(b, t, kv, -1), heads // kv, axis=2)
        v = np.repeat(lin("v", h).reshape(b, t, kv, -1), heads // kv, axis=2)
        s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = np.einsum("bhts,bshd->bthd", a, v).reshape(b, t, -1)
        return lin("out", _relu(h + lin("o", ctx)))

    return params, spec, forward
