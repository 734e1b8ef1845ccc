"""Scale guards, progress reporting, the first-call notice, and PyTorch CPU tensors at NumPy speed."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from nets import mlp, noisy

import gamfsolve as g
from gamfsolve._guard import DEFAULT_MAX_MEMORY, parse_memory, working_memory


def _wide_pair(width: int) -> tuple[list[dict[str, np.ndarray]], g.PermutationSpec]:
    rng = np.random.default_rng(0)
    spec = g.mlp_spec(2)
    model = {"layers.0.weight": rng.standard_normal((width, 8), dtype=np.float32),
             "layers.0.bias": rng.standard_normal(width, dtype=np.float32),
             "layers.1.weight": rng.standard_normal((10, width), dtype=np.float32),
             "layers.1.bias": rng.standard_normal(10, dtype=np.float32)}
    return [model, {k: v + 0.01 for k, v in model.items()}], spec


@pytest.mark.parametrize("method", ["gamf", "weight_matching", "ot"])
def test_a_20000_unit_layer_is_refused_at_once(method: str) -> None:
    models, spec = _wide_pair(20_000)
    start = time.perf_counter()
    with pytest.raises(g.ScaleError, match=r"group 'h0' has 20000 units.*GiB.*max_memory"):
        g.match(models, spec, method=method)
    assert time.perf_counter() - start < 1.0


def test_max_memory_lifts_or_tightens_the_limit() -> None:
    models, spec = _wide_pair(64)
    with pytest.raises(g.ScaleError, match=r"max_memory=1\.0 KiB"):
        g.match(models, spec, method="weight_matching", max_memory="1KiB")
    assert g.match(models, spec, method="weight_matching", max_memory="1GB").n_iter >= 1


@pytest.mark.parametrize("value", [0, -5, "lots", "12 parsecs", True, [1]])
def test_bad_max_memory_is_an_option_error(value: object) -> None:
    with pytest.raises(g.OptionError, match="max_memory"):
        parse_memory(value)  # type: ignore[arg-type]


def test_memory_units() -> None:
    assert parse_memory(None) == DEFAULT_MAX_MEMORY
    assert parse_memory("512MB") == 512 * 10**6
    assert parse_memory("2 GiB") == 2 << 30
    need, group, n = working_memory({"a": 10, "b": 300}, 4, 2, "gamf")
    assert (group, n) == ("b", 300) and need >= 300 * 300 * 4 * 2


def test_progress_reports_stages(caplog, monkeypatch) -> None:
    import gamfsolve._progress as progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)  # the log-line fallback
    rng = np.random.default_rng(3)
    base, spec, _ = mlp([10, 12, 6], rng)
    with caplog.at_level(logging.WARNING, logger="gamfsolve"):
        g.match([noisy(base, 0.1, rng), base], spec, method="gamf", seed=0, progress=True)
    text = caplog.text
    assert "sinkhorn tau=" in text and "hungarian objective=" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gamfsolve"):
        g.match([noisy(base, 0.1, rng), base], spec, method="gamf", seed=0, progress=False)
    assert "iteration" not in caplog.text


def test_progress_option_is_checked() -> None:
    rng = np.random.default_rng(3)
    base, spec, _ = mlp([10, 12, 6], rng)
    with pytest.raises(g.OptionError, match="progress"):
        g.match([base, base], spec, method="gamf", progress="yes")


def test_first_compile_is_announced(caplog, monkeypatch) -> None:
    from gamfsolve.affinity._kernels import _numba

    class Fresh:
        signatures = ()

        class _cache:  # Numba's attribute names
            class _cache_file:
                _index_path = "/nonexistent/gamfsolve-index.nbi"

    monkeypatch.setattr(_numba, "_ANNOUNCED", set())
    kernel = Fresh()
    with caplog.at_level(logging.WARNING, logger="gamfsolve"):
        _numba.announce_compile(kernel, "test")
        _numba.announce_compile(kernel, "test")
    assert caplog.text.count("compiling the Numba test kernel") == 1


def test_torch_cpu_tensors_take_the_numpy_path() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    base, spec, _ = mlp([6, 16, 12, 4], rng)
    other = noisy(base, 0.2, rng)
    as_torch = [{k: torch.from_numpy(v.astype(np.float32)) for k, v in m.items()} for m in (other, base)]
    before = {k: v.clone() for k, v in as_torch[0].items()}
    ref = g.match([{k: v.astype(np.float32) for k, v in m.items()} for m in (other, base)], spec, method="gamf", seed=0)
    start = time.perf_counter()
    res = g.match(as_torch, spec, method="gamf", seed=0)
    elapsed = time.perf_counter() - start
    for grp in spec.groups:
        assert isinstance(res.perms[grp][1], torch.Tensor)
        np.testing.assert_array_equal(res.perms[grp][1].numpy(), ref.perms[grp][1])
    assert all(torch.equal(before[k], as_torch[0][k]) for k in before)  # not modified
    assert elapsed < 5.0  # the PyTorch array-API path took 6 s on this pair; the NumPy path well under 1 s
    fused = g.fuse(as_torch, spec, method="gamf", seed=0)
    assert all(isinstance(v, torch.Tensor) for v in fused.values())
