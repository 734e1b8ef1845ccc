"""A tiny run of the compact-ensemble protocol (examples/ensemble) on the bundled digits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ensemble"


@pytest.fixture(scope="module")
def ep():  # type: ignore[no-untyped-def]
    """The example's protocol module, imported from its folder."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import ensemble_protocol

        yield ensemble_protocol
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    from gamfsolve import datasets

    return datasets.load_digits().split(1400, 397, seed=0)


SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def records(ep, digits):  # type: ignore[no-untyped-def]
    """Both partitions, N = 2, three seeds: 64-64 MLPs, 20 epochs, one finetuning epoch."""
    torch.set_num_threads(1)  # small models: one thread is as fast and immune to oversubscription
    proto = ep.Protocol(archs=("mlp",), n_models=(2,), seeds=SEEDS, methods=("average", "gamf"), width=64, epochs=20)
    train, test = digits
    return {part: [ep.run_config(proto, train, test, "mlp", 2, part, s) for s in SEEDS] for part in ("homog", "hetero")}


@pytest.mark.parametrize("partition", ["homog", "hetero"])
def test_gamf_one_shot_beats_vanilla_averaging(records, partition: str) -> None:  # type: ignore[no-untyped-def]
    # over seeds: on these 64-wide digit MLPs some hetero pairs fuse barely above averaging
    # by any matching (weight matching too: +3.5 points on seed 0), most by 15-40 points
    gamf = [c.record["methods"]["gamf"]["one_shot"] for c in records[partition]]
    average = [c.record["methods"]["average"]["one_shot"] for c in records[partition]]
    assert sum(gamf) / len(gamf) > sum(average) / len(average) + 5, (gamf, average)


def test_record_is_complete_and_finetuning_helps(records) -> None:  # type: ignore[no-untyped-def]
    record, models = records["homog"][0].record, records["homog"][0].models
    assert len(models) == 2 and len(record["individual"]) == 2 and sum(record["share_sizes"]) == 1400
    json.dumps(record)  # JSON-ready
    for method in ("average", "gamf"):
        entry = record["methods"][method]
        assert entry["finetuned"] >= entry["one_shot"] - 1.0
        assert 0 <= entry["repaired"] <= 100
        assert entry["time"] >= 0 and entry["n_iter"] >= 0


def test_repair_undoes_variance_collapse_of_vanilla_averaging(records) -> None:  # type: ignore[no-untyped-def]
    """REPAIR restores the hidden statistics that averaging unaligned units destroys."""
    average = records["homog"][0].record["methods"]["average"]
    assert average["repaired"] > average["one_shot"] + 5, average


def test_interpolation_ends_at_the_two_models(ep, digits, records) -> None:  # type: ignore[no-untyped-def]
    from gamfsolve.adapters import _demo

    cell = records["homog"][0]
    train, test = digits
    curves = ep.interpolate(cell.models, _demo.spec_for("mlp", train.x.shape[1]), cell.results, test, steps=3)
    assert set(curves["curves"]) == {"average", "gamf"}
    acc = curves["curves"]["gamf"]
    assert len(acc) == 3 and curves["s"] == [0.0, 0.5, 1.0]
    assert acc[0] == pytest.approx(curves["model_a"]) and acc[-1] == pytest.approx(curves["model_b"])


def test_report_renders(ep, records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(EXAMPLE))
    try:
        import ensemble_report as er
    finally:
        sys.path.remove(str(EXAMPLE))
    recs = [cells[0].record for cells in records.values()]
    meta = {
        "dataset": "digits",
        "n_train": 1400,
        "n_test": 397,
        "alpha": 0.5,
        "epochs": 20,
        "finetune_epochs": 1,
        "lr": 1e-3,
        "seeds": [0],
        "threads": 2,
        "total_minutes": 0.1,
    }
    text = er.markdown(recs, meta, ["average", "gamf"])
    assert "| homog | 2 |" in text and "| hetero | 2 |" in text and "**gamf**" in text
    assert "## Where gamf stands" in text and "| mlp N = 2 homog |" in text and "one seed" in text
    er.summary_figure(tmp_path / "summary.png", recs, ["average", "gamf"])
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_standing_is_paired_over_seeds() -> None:
    """The computed standing: per-seed differences, their standard error, verdicts and claims."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import ensemble_report as er
    finally:
        sys.path.remove(str(EXAMPLE))

    def record(seed: int, gamf: float, wm: float, avg: float) -> dict:
        methods = {m: {"one_shot": v, "repaired": v, "finetuned": v} for m, v in
                   (("average", avg), ("weight_matching", wm), ("gamf", gamf))}
        return {"arch": "mlp", "n_models": 2, "partition": "homog", "seed": seed, "methods": methods}

    # gamf - wm = +1, +2, +3: mean 2, standard error 1/sqrt(3) = 0.58 -> ahead; gamf - average = 0, +4, -4 -> level
    recs = [record(0, 90.0, 89.0, 90.0), record(1, 91.0, 89.0, 87.0), record(2, 92.0, 89.0, 96.0)]
    lines = er.standing(recs, ["average", "weight_matching", "gamf"])
    text = "\n".join(lines)
    assert "| mlp N = 2 homog | +0.0 ± 2.3 level | +2.0 ± 0.6 ahead |" in text
    assert "vs weight_matching: at least as good as displayed in 1 of 1 cells; 1 ahead, 0 level, 0 behind" in text
    # gamf's mean 91.0 equals average's as displayed: not above it; and it is above weight matching
    assert "above average in every cell: no; at least as good as weight_matching in every cell: yes" in text
    assert er.standing(recs, ["average", "weight_matching"]) == []


def test_solver_seed_study(tmp_path: Path) -> None:
    """solver_seeds.py end to end on one cheap cell; a malformed --cells entry exits with 2."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import solver_seeds
    finally:
        sys.path.remove(str(EXAMPLE))
    torch.set_num_threads(1)
    assert solver_seeds.main(["--cells", "mlp:two", "--out", str(tmp_path)]) == 2
    argv = ["--cells", "mlp:2:homog", "--seeds", "1", "--solver-seeds", "2", "--out", str(tmp_path)]
    assert solver_seeds.main(argv) == 0
    data = json.loads((tmp_path / "solver_seeds.json").read_text())
    (rec,) = data["records"]
    for method in ("weight_matching", "gamf"):
        accs = rec["methods"][method]["one_shot"]
        assert len(accs) == 2 and all(0 <= a <= 100 for a in accs)
    text = (tmp_path / "SOLVER_SEEDS.md").read_text()
    assert "| mlp N=2 homog | gamf |" in text and "seed 0, weight_matching:" in text
