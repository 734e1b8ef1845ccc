"""RESULTS.md and accuracy.png from the federated-learning example's results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PAIRS = (("GAMF", "FedAvg"), ("GAMF + MOON", "MOON"))


def _curves(runs: list[dict[str, Any]], method: str, clients: int) -> tuple[np.ndarray, list[int]]:
    """Accuracy curves (%) of one table cell, rows in seed order, and those seeds."""
    cell = sorted((r for r in runs if r["method"] == method and r["clients"] == clients), key=lambda r: r["seed"])
    return np.array([r["accuracy"] for r in cell]) * 100, [r["seed"] for r in cell]


def _cell(final: np.ndarray) -> str:
    return "—" if final.size == 0 else f"{final.mean():.2f} ± {final.std():.2f}"


def _paired(runs: list[dict[str, Any]], a: str, b: str, clients: int) -> np.ndarray:
    """Per-seed differences a - b of the final accuracy (points), seeds both have."""
    ca, sa = _curves(runs, a, clients)
    cb, sb = _curves(runs, b, clients)
    common = sorted(set(sa) & set(sb))
    return np.array([ca[sa.index(s), -1] - cb[sb.index(s), -1] for s in common])


def table(runs: list[dict[str, Any]], methods: list[str], clients: list[int]) -> list[str]:
    """The paper's Table 1 layout: methods as rows, client counts as columns."""
    lines = [
        "| method | " + " | ".join(f"MNIST, {c} clients" for c in clients) + " |",
        "|---|" + "---|" * len(clients),
    ]
    for name in methods:
        lines.append(f"| {name} | " + " | ".join(_cell(_curves(runs, name, c)[0][:, -1:].ravel()) for c in clients) + " |")
    return lines


def verdict(runs: list[dict[str, Any]], clients: list[int]) -> list[str]:
    """Paired differences (same seed, data split and initial model) with a plain reading of them."""
    lines = [
        "| difference (points, paired by seed) | " + " | ".join(f"{c} clients" for c in clients) + " |",
        "|---|" + "---|" * len(clients),
    ]
    for a, b in PAIRS:
        cells = []
        for c in clients:
            d = _paired(runs, a, b, c)
            cells.append("—" if d.size == 0 else f"{d.mean():+.2f} (per seed: {', '.join(f'{x:+.2f}' for x in d)})")
        lines.append(f"| {a} minus {b} | " + " | ".join(cells) + " |")
    return lines


def matching_summary(runs: list[dict[str, Any]], clients: list[int]) -> list[str]:
    """How often GAMF's alignment moved a client away from the first client's unit order, and its cost."""
    lines = []
    for c in clients:
        logs = [m for r in runs if r["clients"] == c and r.get("match") for m in r["match"]]
        if not logs:
            continue
        moved = sum(1 for m in logs if m.get("permuted", 0) > 0)
        secs = np.array([m["seconds"] for m in logs])
        conv = sum(1 for m in logs if m["converged"])
        lines.append(
            f"- {c} clients: {len(logs)} GAMF aggregations, {moved} of them permuted at least one client relative to "
            f"the first ({sum(m.get('permuted', 0) for m in logs)} client-rounds in all); {conv} converged; matching "
            f"{secs.mean():.1f} s on average (max {secs.max():.1f} s)"
        )
    total = [m for r in runs if r.get("match") for m in r["match"]]
    if total and all(m.get("permuted", 0) == 0 for m in total):
        lines.append(
            "- in every round the matching put all clients in one and the same unit order, so each GAMF aggregate "
            "is FedAvg's up to one relabelling of all units (the same function: logits agree to about 1e-7): the "
            "clients start every round from the same global model and a few local epochs leave them in its basin, "
            "where the identity is the best alignment. The GAMF and FedAvg curves still part, because the next "
            "round trains the relabelled model, whose sums run in another order: rounding differences of 1e-7 grow "
            "through the later rounds of training like a change of seed. A GAMF minus FedAvg difference here is therefore "
            "run-to-run noise, not an effect of the alignment"
        )
    return lines


def timing(runs: list[dict[str, Any]], methods: list[str], clients: list[int]) -> list[str]:
    """Mean wall seconds per round (local training, Ray messaging, aggregation, server evaluation)."""
    head = "| seconds per round (mean) | " + " | ".join(f"{c} clients" for c in clients) + " |"
    lines = [head, "|---|" + "---|" * len(clients)]
    for name in methods:
        cells = []
        for c in clients:
            secs = [s for r in runs if r["method"] == name and r["clients"] == c for s in r.get("round_s", [])]
            cells.append(f"{np.mean(secs):.2f}" if secs else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def figure(runs: list[dict[str, Any]], methods: list[str], clients: list[int], alpha: float, path: Path) -> None:
    """Accuracy versus round, mean over seeds with the min-max band; bottom row: the last half, zoomed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(clients), figsize=(5 * len(clients), 7), squeeze=False)
    for j, c in enumerate(clients):
        for name in methods:
            curves, _ = _curves(runs, name, c)
            if curves.size == 0:
                continue
            x = np.arange(curves.shape[1])
            for i, lo in enumerate((0, curves.shape[1] // 2)):
                ax = axes[i, j]
                ax.plot(x[lo:], curves.mean(axis=0)[lo:], label=f"{name} (n={len(curves)})")
                ax.fill_between(x[lo:], curves.min(axis=0)[lo:], curves.max(axis=0)[lo:], alpha=0.15)
        axes[0, j].set(title=f"{c} clients, Dirichlet alpha={alpha}", ylabel="held-out accuracy (%)")
        axes[1, j].set(title="last half of the rounds", xlabel="round", ylabel="held-out accuracy (%)")
        axes[0, j].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path, methods: list[str]) -> None:
    """RESULTS.md (final accuracy table, paired differences, setting, timing) and accuracy.png."""
    runs, cfg = results["runs"], results["config"]
    clients = sorted({r["clients"] for r in runs})
    names = [m for m in methods if any(r["method"] == m for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    figure(runs, names, clients, cfg["alpha"], out / "accuracy.png")
    opts = cfg["match_options"]
    lines = [
        "# Federated learning with FedGAMF on Flower (MNIST, small CNN)",
        "",
        f"Final held-out accuracy (%) of the global model after round {cfg['rounds']}, mean ± std over seeds "
        f"{seeds} (Flower simulation runtime on Ray; Dirichlet alpha = {cfg['alpha']}; all clients every round):",
        "",
        *table(runs, names, clients),
        "",
        "Paired differences of the final accuracy (same seed: same data split, same initial model):",
        "",
        *verdict(runs, clients),
        "",
        "What the matching did:",
        "",
        *matching_summary(runs, clients),
        "",
        "![accuracy vs round](accuracy.png)",
        "",
        "## Setting",
        "",
        f"- data: {cfg['dataset']}, {cfg['per_client']} training images per client on average, Dirichlet alpha = "
        f"{cfg['alpha']} label skew per seed, {cfg['n_test']} held-out test images (disjoint from training)",
        "- model: `SmallCNN` (conv 6 - conv 16 - fc 64 - projection 32 - fc 10, 21k parameters) from `fl_common.py`",
        f"- {cfg['rounds']} rounds, all clients every round, {cfg['epochs']} local epoch(s), Adam lr {cfg['lr']}, batch "
        f"{cfg['batch_size']}; MOON mu = {cfg['mu']}, temperature 0.5",
        f"- GAMF rows: `FedGAMF(spec, method={cfg['fuse_method']!r}, match_options={opts!r})` "
        f"(affinity {opts.get('affinity', 'edge')!r}"
        + ("; the released code's neuron-vector affinity: the paper's edge affinity cost 3-5x more per aggregation, "
           "too slow for this run on the shared 2-core machine" if opts.get("affinity") == "node" else "")
        + "), weighted by example count; FedAvg and MOON rows: Flower's own `FedAvg`",
        "- one simulation (one Ray start, 2 client actors) per (client count, seed) runs the four methods in turn from "
        "the same initial model",
        "",
        "## Run",
        "",
        "- command: `" + cfg["command"] + "` (what `nox -s fl` runs after the tests)",
        f"- machine: {results.get('machine', '?')}, shared: 1-minute load average "
        f"{results.get('load_at_start', float('nan')):.1f} at the start and {results.get('load_at_end', float('nan')):.1f} "
        "at the end (2 means both cores busy)",
        f"- wall time: {results['wall_s'] / 60:.1f} min"
        + (f" ({results['reused_runs']} run(s) reused from an earlier results.json)" if results.get("reused_runs") else ""),
        "",
        *timing(runs, names, clients),
    ]
    if results.get("note"):
        lines[2:2] = [results["note"], ""]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
