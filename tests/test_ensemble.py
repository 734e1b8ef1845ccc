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


needs_fashion = pytest.mark.skipif(
    __import__("gamfsolve.datasets", fromlist=["fashion_mnist_dir"]).fashion_mnist_dir() is None,
    reason="Fashion-MNIST is absent: apt-get install -y dataset-fashion-mnist (or set GAMFSOLVE_FASHION_MNIST)",
)


def _example(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(EXAMPLE))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLE))


def test_images_pooled_and_laid_out(ep) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    proto = ep.Protocol(archs=("mlp", "resnet20"), pooled=("resnet20",))
    x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
    assert ep.images(proto, "mlp", x).shape == (2, 28, 28)
    pooled = ep.images(proto, "resnet20", x)
    assert pooled.shape == (2, 1, 14, 14)
    assert pooled[0, 0, 0, 0] == pytest.approx(x[0, :2, :2].mean())


def test_targets_name_each_miss() -> None:
    er = _example("ensemble_report")

    def record(seed: int, gamf: float, wm: float, ot: float) -> dict:
        methods = {m: {"one_shot": v, "repaired": v + 1, "finetuned": v} for m, v in
                   (("average", 10.0), ("ot", ot), ("weight_matching", wm), ("gamf", gamf))}
        return {"arch": "vgg11", "n_models": 2, "partition": "homog", "seed": seed, "methods": methods}

    # gamf - wm = -3, -4, -5: behind by 4.0 ± 0.6; ot's mean 61.0 above gamf's 60.0
    recs = [record(0, 60.0, 63.0, 61.0), record(1, 59.0, 63.0, 61.0), record(2, 61.0, 66.0, 61.0)]
    text = "\n".join(er.targets(recs, ["average", "ot", "weight_matching", "gamf"]))
    assert "- one-shot: above average: yes (1 cells); above ot: no, not in 1 of 1 (vgg11 N = 2 homog by 1.0)" in text
    assert "level with or ahead of weight_matching: no, behind in 1 of 1 (vgg11 N = 2 homog by 4.0 ± 0.6)" in text
    assert "- one-shot + REPAIR:" in text


@needs_fashion
def test_fashion_bn_cell(ep) -> None:  # type: ignore[no-untyped-def]
    """One ResNet-20 cell on Fashion-MNIST: BatchNorm statistics are fused and then reset."""
    torch.set_num_threads(1)
    proto = ep.Protocol(dataset="fashion-mnist", archs=("resnet20",), pooled=("resnet20",), n_train=192, n_test=100,
                        epochs=1, repair_images=96, methods=("average", "weight_matching"))
    train, test = ep.load_data(proto)
    assert train.x.shape == (192, 28, 28) and len(test.y) == 100 and train.name == "fashion-mnist-train"
    cell = ep.run_config(proto, train, test, "resnet20", 2, "homog", 0)
    spec = _example("ensemble_models").spec_for("resnet20", 14)
    assert "bn1.running_mean" in spec.axes  # the running statistics are permuted and averaged with the weights
    for entry in cell.record["methods"].values():
        assert all(0 <= entry[k] <= 100 for k in ("one_shot", "repaired", "finetuned"))
    assert cell.record["share_sizes"] == [96, 96]


@needs_fashion
def test_fashion_protocol_run_and_report(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """run.py on a tiny Fashion-MNIST protocol next to an MNIST results file: both in RESULTS.md; --resume is idle."""
    torch.set_num_threads(1)
    run = _example("run")
    tiny = run.ep.Protocol(dataset="fashion-mnist", archs=("mlp",), n_models=(2,), partitions=("hetero",), seeds=(0, 1),
                           n_train=256, n_test=100, epochs=1, repair_images=64, width=32)
    monkeypatch.setattr(run, "QUICK_FASHION", tiny)
    (tmp_path / "results.json").write_text((EXAMPLE / "results.json").read_text())
    assert run.main(["--dataset", "fashion-mnist", "--quick", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "results-fashion-mnist-quick.json").read_text())
    assert len(saved["records"]) == 2 and saved["meta"]["cells"] == 2 and saved["meta"]["part"] == "quick"
    assert set(saved["records"][0]["methods"]) == {"average", "ot", "weight_matching", "gamf"}
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## MNIST" in text and "## Fashion-MNIST" in text and "| quick | mlp | 256 | 100 | 1 (64) | 2 |" in text
    assert "## Where gamf stands on Fashion-MNIST" in text and "| mlp N = 2 hetero |" in text and "Targets" in text
    assert (tmp_path / "summary-fashion-mnist.png").is_file()
    assert run.main(["--dataset", "fashion-mnist", "--quick", "--resume", "--out", str(tmp_path)]) == 0
    assert len(json.loads((tmp_path / "results-fashion-mnist-quick.json").read_text())["records"]) == 2
