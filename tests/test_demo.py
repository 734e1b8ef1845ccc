"""``gamfsolve demo`` end to end (tiny settings) and its argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gamfsolve.cli import main

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def test_demo_prints_the_table_and_writes_the_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--epochs", "1", "--methods", "average,weight_matching", "--threads", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for row in (
        "model 0 (1x size)",
        "model 1 (1x size)",
        "prediction ensemble (2x size)",
        "fused: average",
        "fused: weight_matching",
    ):
        assert row in text
    record = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in record["fused"]] == ["average", "weight_matching"]
    assert all(r["first_call"] >= 0 and r["time"] >= 0 for r in record["fused"])
    assert record["n_models"] == 2 and 0 <= record["prediction_ensemble"] <= 100
    assert (out / "demo.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [(["--models", "1"], "--models"), (["--methods", "average,nope"], "nope"), (["--data", "/no/such/dir"], "MNIST")],
)
def test_demo_argument_errors(
    tmp_path: Path, argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_demo_table_names_slow_first_calls() -> None:
    from gamfsolve.cli._demo import MethodRow, _table

    rows = [MethodRow("ot", 90.0, 0.01, 1, True, 0.02), MethodRow("gamf", 91.0, 0.25, 23, True, 2.3)]
    text = _table([89.0, 88.0], 92.0, rows, 2)
    last = text.splitlines()[-1]
    assert "first also compiles" in last and "gamf 2.30 s" in last and "ot" not in last
    assert "250.0 ms" in text  # the table shows the warm call
