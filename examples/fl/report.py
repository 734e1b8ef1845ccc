"""RESULTS.md and accuracy-<setting>.png from the federated-learning example's results files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DESCRIPTION = {
    "standard": "every client starts each round from the global model",
    "oneshot": "round 1: every client trains from its own random initialisation, the server aggregates once; "
               "then ordinary rounds",
    "longlocal": "few rounds of long local training",
    "widths": "clients of hidden widths 1x / 0.75x / 0.5x (by partition id, in turn) aggregated into the widest; "
              "FedAvg and MOON rows average each entry over the clients that have it (HeteroFL's slice averaging)",
}
NAMES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}

Run = dict[str, Any]
METHOD_ORDER = ("FedAvg", "OTFusion", "FedMA", "GAMF", "MOON", "GAMF + MOON")


def _cols(runs: list[Run]) -> list[tuple[str, int]]:
    return sorted({(r["dataset"], r["clients"]) for r in runs}, key=lambda c: (c[0] != "mnist", c[1]))


def _acc(runs: list[Run], method: str, col: tuple[str, int], at: int) -> dict[int, float]:
    """seed -> accuracy (%) after round ``at`` (-1: the last) of one table cell."""
    return {r["seed"]: 100 * r["accuracy"][at] for r in runs
            if r["method"] == method and (r["dataset"], r["clients"]) == col and r["accuracy"]}


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    v = np.array(values)
    return f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "") + f" (n={len(v)})"


def table(runs: list[Run], methods: list[str], at: int) -> list[str]:
    """The paper's Table 1 layout: methods as rows, (dataset, client count) as columns."""
    cols = _cols(runs)
    lines = ["| method | " + " | ".join(f"{NAMES[d]}, {c} clients" for d, c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in methods:
        cells = []
        for col in cols:
            na = any(r.get("not_applicable") for r in runs if r["method"] == m and (r["dataset"], r["clients"]) == col)
            cells.append("n/a" if na else _cell(list(_acc(runs, m, col, at).values())))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def paired(runs: list[Run], methods: list[str], at: int) -> list[str]:
    """Per-seed differences against FedAvg (same split and initial model): mean, and ± 2 standard errors when n > 1."""
    cols = _cols(runs)
    lines = ["| minus FedAvg (points) | " + " | ".join(f"{NAMES[d]}, {c}" for d, c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for m in methods:
        if m == "FedAvg":
            continue
        cells = []
        for col in cols:
            a, b = _acc(runs, m, col, at), _acc(runs, "FedAvg", col, at)
            d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))])
            if d.size == 0:
                cells.append("—")
            elif d.size == 1:
                cells.append(f"{d[0]:+.2f} (one seed)")
            else:
                cells.append(f"{d.mean():+.2f} ± {2 * d.std(ddof=1) / np.sqrt(d.size):.2f} (n={d.size})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


BASELINES = ("FedAvg", "OTFusion", "FedMA")
AHEAD_IN = ("oneshot", "longlocal", "widths")  # where GAMF is meant to lead, not only keep level


def _diff(runs: list[Run], a: str, b: str, col: tuple[str, int]) -> np.ndarray:
    """Per-seed final-accuracy differences ``a - b`` (points) in one cell, seeds both have."""
    x, y = _acc(runs, a, col, -1), _acc(runs, b, col, -1)
    return np.array([x[s] - y[s] for s in sorted(set(x) & set(y))])


def _band(d: np.ndarray) -> tuple[float, float]:
    """Mean and two standard errors (nan with fewer than two seeds)."""
    return float(d.mean()), (2 * float(d.std(ddof=1)) / np.sqrt(d.size) if d.size > 1 else float("nan"))


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """The comparison's targets, checked per setting and column on the final accuracy.

    GAMF against the best (by mean) of FedAvg / OTFusion / FedMA, paired by seed: level means
    the difference's mean + 2 SE >= 0, ahead means its mean - 2 SE > 0 (wanted in the one-shot,
    long-local and widths settings); and the rank of GAMF + MOON's mean among the six rows.
    """
    lines = ["| setting | column | GAMF minus the best baseline (points, ± 2 SE) | level | ahead | GAMF + MOON |",
             "|---|---|---|---|---|---|"]
    for name, res in results.items():
        runs = res["runs"]
        for alpha in sorted({r["alpha"] for r in runs}, reverse=True):
            sub = [r for r in runs if r["alpha"] == alpha]
            for col in _cols(sub):
                means = {m: float(np.mean(list(v.values()))) for m in METHOD_ORDER
                         if (v := _acc(sub, m, col, -1))}
                base = [m for m in BASELINES if m in means]
                if "GAMF" not in means or not base:
                    continue
                best = max(base, key=means.__getitem__)
                mean, se2 = _band(_diff(sub, "GAMF", best, col))
                level = "—" if np.isnan(se2) else ("yes" if mean + se2 >= 0 else "**no**")
                ahead = "—" if np.isnan(se2) or name not in AHEAD_IN else ("yes" if mean - se2 > 0 else "**no**")
                moon = "—"
                if "GAMF + MOON" in means:  # ties share the better rank
                    top = max(means, key=means.__getitem__)
                    gap = means["GAMF + MOON"] - means[top]
                    moon = f"rank {1 + sum(v > means['GAMF + MOON'] for v in means.values())} of {len(means)}" + (
                        "" if gap >= 0 else f" ({gap:+.2f} to {top})")
                band = f"{mean:+.2f}" + ("" if np.isnan(se2) else f" ± {se2:.2f}")
                lines.append(f"| {name} | {NAMES[col[0]]}, {col[1]} clients, alpha {alpha} | {band} vs {best} "
                             f"| {level} | {ahead} | {moon} |")
    return lines


def matching(runs: list[Run], methods: list[str]) -> list[str]:
    """What the matching did: aggregations, and in how many client-rounds it moved a client from the
    reference's unit order (the first client's, or with clients of several widths the first widest's)."""
    lines = []
    for m in methods:
        logs = [e for r in runs if r["method"] == m and r.get("match") for e in r["match"]]
        if not logs:
            continue
        moved = sum(e.get("permuted", 0) for e in logs)
        total = sum(e["clients"] - 1 for e in logs)
        secs = np.array([e["seconds"] for e in logs])
        lines.append(f"- {m}: {len(logs)} matched aggregations; the matching permuted {moved} of {total} client-rounds "
                     f"(clients other than the reference) away from the reference's unit order; "
                     f"{secs.mean():.2f} s per matching on average (max {secs.max():.2f} s)")
    return lines


def figure(runs: list[Run], methods: list[str], title: str, path: Path) -> None:
    """Accuracy versus round, mean over seeds, one panel per (dataset, clients, alpha)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dataset"], r["clients"], r["alpha"]) for r in runs}, key=lambda p: (p[0] != "mnist", p[1], -p[2]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (d, c, a) in zip(axes[0], panels, strict=True):
        for m in methods:
            curves = np.array([r["accuracy"] for r in runs if r["method"] == m and r["accuracy"]
                               and (r["dataset"], r["clients"], r["alpha"]) == (d, c, a)]) * 100
            if curves.size:
                ax.plot(np.arange(curves.shape[1]), curves.mean(axis=0), marker=".", label=f"{m} (n={len(curves)})")
        ax.set(title=f"{title}: {NAMES[d]}, {c} clients, alpha {a}", xlabel="round", ylabel="held-out accuracy (%)")
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def timing(runs: list[Run], methods: list[str]) -> str:
    parts = []
    for m in methods:
        secs = [s for r in runs if r["method"] == m for s in r.get("round_s", [])]
        if secs:
            parts.append(f"{m} {np.mean(secs):.1f}")
    return "seconds per round (mean over all cells): " + ", ".join(parts)


def section(name: str, res: dict[str, Any], methods: list[str], out: Path) -> list[str]:
    """One setting's tables, differences, matching summary, figure and run details."""
    runs, cfg = res["runs"], res["config"]
    st = cfg["setting"]
    names = [m for m in methods if any(r["method"] == m for r in runs)]
    figure(runs, names, name, out / f"accuracy-{name}.png")
    epochs = f"{st['epochs']} local epoch(s)" + (f" ({st['first_epochs']} in round 1)" if st.get("first_epochs") else "")
    lines = [f"## {name}: {DESCRIPTION[name]}", "",
             f"{st['rounds']} rounds, {epochs}; command(s): `{cfg['command']}`; "
             f"{sum(r.get('seconds', 0) for r in runs) / 60:.1f} min of runs.", ""]
    for alpha in sorted({r["alpha"] for r in runs}, reverse=True):
        sub = [r for r in runs if r["alpha"] == alpha]
        points = [("final accuracy", -1)] + ([("after the one-shot aggregation (round 1)", 1)] if name == "oneshot" else [])
        for label, at in points:
            lines += [f"Dirichlet alpha = {alpha}, {label} (%, mean ± std over seeds):", "", *table(sub, names, at), "",
                      "Paired differences against FedAvg (same seed: same split and initial model):", "",
                      *paired(sub, names, at), ""]
    lines += ["What the matching did (the reference: the first client, or with clients of several widths the first "
              "of the widest; a narrower client counts as permuted when one of its own units leaves slice "
              "averaging's placement):", "", *matching(runs, names), "", f"![{name}](accuracy-{name}.png)", "",
              timing(runs, names), ""]
    return lines


def write_report(results: dict[str, dict[str, Any]], out: Path, methods: list[str], note: str = "") -> None:
    """RESULTS.md over every setting that has results, and one accuracy-<setting>.png per setting."""
    lines = ["# Federated learning on Flower: the six rows of Table 1 in four settings", ""]
    if note:
        lines += [note, ""]
    if results:
        lines += ["## Targets", "",
                  "Final accuracy, paired by seed. *level*: GAMF's difference to the best of FedAvg / OTFusion / "
                  "FedMA has mean + 2 SE >= 0; *ahead*: mean - 2 SE > 0 (the target in the one-shot, long-local and "
                  "widths settings); the last column ranks GAMF + MOON's mean among the six rows (the target: first). "
                  "— where one seed gives no standard error or the check does not apply.", "",
                  *targets(results), ""]
    for name, res in results.items():
        lines += section(name, res, methods, out)
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
