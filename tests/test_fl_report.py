"""examples/fl/report.py: the targets table read off synthetic runs (no Flower needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

_PATH = Path(__file__).resolve().parent.parent / "examples" / "fl" / "report.py"
_SPEC = importlib.util.spec_from_file_location("fl_example_report", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)

METHODS = ["FedAvg", "OTFusion", "FedMA", "GAMF", "MOON", "GAMF + MOON"]


def _runs(final: dict[str, list[float]], *, dataset: str = "mnist", alpha: float = 0.5) -> list[dict[str, Any]]:
    """One record per (method, seed) with the given final accuracies (fractions)."""
    return [{"dataset": dataset, "clients": 5, "alpha": alpha, "seed": seed, "method": m, "accuracy": [0.1, acc]}
            for m, accs in final.items() for seed, acc in enumerate(accs)]


def _rows(results: dict[str, Any]) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in report.targets(results)[2:]]


def test_gamf_clearly_ahead_is_level_and_ahead_and_moon_ranked() -> None:
    runs = _runs({"FedAvg": [0.50, 0.52, 0.51], "OTFusion": [0.55, 0.56, 0.54], "FedMA": [0.40, 0.41, 0.42],
                  "GAMF": [0.60, 0.62, 0.61], "MOON": [0.50, 0.50, 0.50], "GAMF + MOON": [0.58, 0.60, 0.59]})
    [row] = _rows({"oneshot": {"runs": runs}})
    assert row[0] == "oneshot" and row[1] == "MNIST, 5 clients, alpha 0.5"
    assert row[2].startswith("+6.00 ± ") and row[2].endswith("vs OTFusion")  # the best baseline by mean
    assert row[3:5] == ["yes", "yes"]
    assert row[5] == "rank 2 of 6 (-2.00 to GAMF)"


def test_gamf_behind_is_not_level_and_standard_has_no_ahead_target() -> None:
    runs = _runs({"FedAvg": [0.60, 0.61, 0.62], "GAMF": [0.50, 0.52, 0.51], "GAMF + MOON": [0.70, 0.70, 0.70]})
    [row] = _rows({"standard": {"runs": runs}})
    assert row[3] == "**no**" and row[4] == "—"
    assert row[5] == "rank 1 of 3"


def test_one_seed_gives_no_verdict_and_columns_split_by_alpha_and_dataset() -> None:
    runs = (_runs({"FedAvg": [0.5], "GAMF": [0.6]}) + _runs({"FedAvg": [0.5], "GAMF": [0.4]}, alpha=0.1)
            + _runs({"FedAvg": [0.5, 0.5], "GAMF": [0.5, 0.5]}, dataset="fashion"))
    rows = _rows({"widths": {"runs": runs}})
    assert [(r[1], r[3], r[4]) for r in rows] == [
        ("MNIST, 5 clients, alpha 0.5", "—", "—"),
        ("Fashion-MNIST, 5 clients, alpha 0.5", "yes", "**no**"),  # exactly level: not ahead
        ("MNIST, 5 clients, alpha 0.1", "—", "—"),
    ]
    assert rows[2][2] == "-10.00 vs FedAvg"


def test_write_report_opens_with_the_targets(tmp_path: Path) -> None:
    runs = _runs({m: [0.5, 0.6] for m in METHODS})
    for r in runs:
        r |= {"round_s": [1.0], "seconds": 2.0}
    setting = {"rounds": 1, "epochs": 1, "first_epochs": None}
    report.write_report({"standard": {"runs": runs, "config": {"setting": setting, "command": "cmd"}}}, tmp_path,
                        METHODS)
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.index("## Targets") < text.index("## standard")
    assert (tmp_path / "accuracy-standard.png").is_file()
