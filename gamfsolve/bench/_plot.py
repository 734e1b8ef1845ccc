"""The figure of a benchmark report: the scaling curves, from the numbers the run measured.

Panels, one per section present in the report: ``many`` (time per outer iteration against the
number of models, log-log, with the slopes of linear and quadratic growth drawn through N = 2),
``kernels`` (speed-up of the factorised kernel over the exact one against the weight scale, one
line per scalar-edge case and dtype; where it falls back, about 1) and ``gemm_floor`` (the same speed-up of a bare rank-``r``
product: what any feature map of that rank can reach). Needs matplotlib (the ``examples`` extra).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

__all__ = ["plot_report", "require_matplotlib"]


def require_matplotlib() -> None:
    """Raise ``SystemExit`` with the install line when matplotlib is missing (checked before any work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("bench --plot needs matplotlib: pip install 'gamfsolve[examples]'") from None


def _many_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        opts = r.get("options", {})
        if r["method"] == "weight_matching":
            label = "weight_matching"
        else:
            label = "gamf, feature-map templates" if opts.get("kernel") == "factorised" else "gamf, default"
        curves.setdefault(label, []).append((r["n_models"], r["solver_time_s"] / max(1, r["n_iter"])))
    for label, pts in curves.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    first = [pts[0] for pts in curves.values() if pts and pts[0][0] == 2]
    if first:
        t2 = max(t for _, t in first)
        ns = sorted({p[0] for pts in curves.values() for p in pts})
        ax.plot(ns, [t2 * n / 2 for n in ns], ":", color="gray", label="linear in N")
        ax.plot(ns, [t2 * n * (n - 1) / 2 for n in ns], "--", color="gray", label="ordered pairs, N (N - 1)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("models N")
    ax.set_ylabel("seconds per outer iteration")
    ax.set_title("N models (MLP): time per iteration")
    ax.legend(fontsize=7)


def _kernel_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    base = "numba" if any(r.get("numba") for r in rows) else "matmul"
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        ref, cell = r.get(base), r.get("factorised")
        if ref and cell and "fan-in" in r["case"]:  # scalar edges: the cases the map applies to
            key = f"{r['case'].split(',')[-1].strip()}, {r['dtype']}"
            lines.setdefault(key, []).append((r["scale"], ref["time_s"] / cell["time_s"]))
    for key, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key, markersize=4)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weight std / sqrt(sigma)")
    ax.set_ylabel(f"speed-up over exact {base}")
    ax.set_title("factorised kernel, one layer: speed-up")
    ax.legend(fontsize=6)


def _floor_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    ranks = [r["rank"] for r in rows]
    ax.plot(ranks, [r["numba_s"] / r["gemm_s"] for r in rows], "o-", label="float32 product of rank r")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("exact Numba time / product time")
    ax.set_title(f"the floor of a rank-r map ({rows[0]['n']}^3)")
    ax.legend(fontsize=7)


def plot_report(report: dict[str, Any], path: str) -> str:
    """Write the figure of ``report`` (the ``bench --json`` document) to ``path``; returns ``path``.

    One panel per section present (``many``, ``kernels``, ``gemm_floor``); the title names the
    machine. The file is written atomically (a temporary file beside it, then renamed).
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, fn) for key, fn in (("many", _many_panel), ("kernels", _kernel_panel), ("gemm_floor", _floor_panel))
              if report.get(key)]
    if not panels:
        raise ValueError("the report has no section to plot (many, kernels or gemm_floor)")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (key, fn) in zip(axes[0], panels, strict=True):
        fn(ax, report[key])
    machine = report.get("machine", {})
    fig.suptitle(f"gamfsolve bench on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
                 f"backend {report.get('backend', 'numpy')}", fontsize=9)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
