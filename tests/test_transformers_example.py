"""examples/transformers end to end at the smallest size, and its LayerNorm statistics correction."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from gamfsolve import datasets  # noqa: E402

FOLDER = Path(__file__).resolve().parent.parent / "examples" / "transformers"
sys.path.insert(0, str(FOLDER))

import correction  # noqa: E402
import run  # noqa: E402
import tasks  # noqa: E402

# The example's modules have generic names (run, report, tasks, ...) that other examples' tests
# import from their own folders: this module keeps its references, the process forgets the names.
while str(FOLDER) in sys.path:
    sys.path.remove(str(FOLDER))
for _name in ("correction", "report", "run", "study", "tasks"):
    if Path(getattr(sys.modules.get(_name), "__file__", "") or "").resolve().parent == FOLDER:
        del sys.modules[_name]

needs_mnist = pytest.mark.skipif(datasets.mnist_dir() is None, reason="MNIST is absent")


@needs_mnist
def test_quick_run_writes_results(tmp_path: Path) -> None:
    names = ["mnist", "stdlib"]
    assert run.main(["--quick", "--out", str(tmp_path), "--methods", "average", "gamf", "--tasks", *names]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["task"] for r in saved["records"]) == sorted(names)
    for r in saved["records"]:
        assert r["coverage"] >= 0.95 and not r["adapter_warnings"]
        for row in r["methods"].values():
            assert {"one_shot", "corrected", "finetuned"} <= set(row)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "GPT-2 on Python stdlib bytes" in text and "| one-shot |" in text
    assert (tmp_path / "transformers.png").stat().st_size > 1000
    # a finished run resumes to the same records without running a cell again
    assert run.main(["--quick", "--out", str(tmp_path), "--resume", "--methods", "average", "gamf",
                     "--tasks", *names]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["records"] == saved["records"]


@pytest.mark.skipif(datasets.fashion_mnist_dir() is None, reason="Fashion-MNIST is absent")
def test_fashion_task_loads() -> None:
    task = run.load_task("fashion-mnist", run.QUICK["fashion-mnist"][0])
    assert task is not None and task.train_x.shape == (256, 28, 28) and task.test_y is not None
    assert len(set(task.test_y.tolist())) > 5


def test_fashion_absent_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "fashion_mnist_dir", lambda path=None: None)
    assert run.load_task("fashion-mnist", run.QUICK["fashion-mnist"][0]) is None


@pytest.mark.parametrize("kind", ["vit", "gpt"])
def test_correction_matches_the_sources_statistics(kind: str) -> None:
    """After the correction every LayerNorm output channel has the sources' average mean and std."""
    torch.manual_seed(0)
    if kind == "vit":
        x = torch.rand(4, 28, 28).numpy()
    else:
        x = torch.randint(0, 256, (4, 17), dtype=torch.uint8).numpy()
    task = tasks.Task("t", kind, x, None, x, None, hidden=8, layers=1, heads=2)
    a, b = tasks.build(task, 0), tasks.build(task, 1)
    fused = tasks.build(task, 2)
    batches = [tasks.example_inputs(task)]
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    out = correction.correct(fused, [a, b], batches)
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())  # input not mutated
    names = correction.corrected_layers(out)
    assert names
    for name in names:
        mean, std = correction._moments(out, name, batches)
        targets = [correction._moments(m, name, batches) for m in (a, b)]
        assert torch.allclose(mean, (targets[0][0] + targets[1][0]) / 2, atol=1e-4)
        assert torch.allclose(std, (targets[0][1] + targets[1][1]) / 2, atol=1e-4)
