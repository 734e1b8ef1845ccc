"""Planted recovery: a random MLP, its hidden units permuted, relative Gaussian noise added.

``pytest -m slow -s tests/test_planted.py`` prints the table recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from nets import mlp, noisy, random_perms

import gamfsolve as g


def recovered(widths: list[int], level: float, method: str, seed: int = 0) -> float:
    """Fraction of hidden units matched to their planted partner."""
    rng = np.random.default_rng(seed)
    base, spec, _ = mlp(widths, rng)
    planted = random_perms(spec, base, rng)
    other = noisy(g.permute(base, spec, planted), level, rng)
    result = g.match([other, base], spec, method=method, seed=seed)  # base into other's order
    hits = [np.mean(result.perms[grp][1] == planted[grp]) for grp in spec.groups]
    return float(np.mean(hits))


def test_small_planted_recovery():
    assert recovered([64, 32, 32, 5], 0.1, "gamf") == 1.0
    assert recovered([64, 32, 32, 5], 0.3, "gamf") >= recovered([64, 32, 32, 5], 0.3, "weight_matching")


@pytest.mark.slow
def test_planted_recovery_table():
    widths = [784, 512, 512, 512, 10]
    table = {}
    for level in (0.0, 0.1, 0.3, 0.5):
        table[level] = {m: recovered(widths, level, m) for m in ("gamf", "weight_matching", "ot", "average")}
    print("\nplanted recovery, 784-512-512-512-10 (fraction of hidden units recovered)")
    print("| noise | " + " | ".join(table[0.0]) + " |")
    for level, row in table.items():
        print(f"| {level:.0%} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")
    assert table[0.1]["gamf"] >= 0.99
    assert table[0.3]["gamf"] >= table[0.3]["weight_matching"]
