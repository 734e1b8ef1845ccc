"""Hypothesis fuzz of every public entry point: a correct result or a FusionError, never another
exception, a hang or garbage. Bounded by the suite's deterministic profile (conftest.py)."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import signal
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gamfsolve as g
from gamfsolve import FusionError

METHODS = ["gamf", "weight_matching", "ot", "average"]
SECONDS = 30  # a single example taking longer is a hang


@contextlib.contextmanager
def no_hang(seconds: int = SECONDS) -> Iterator[None]:
    if os.name != "posix":
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise AssertionError(f"no answer within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _mlp(rng: np.random.Generator, widths: list[int], dtype: Any, scale: float) -> dict[str, np.ndarray]:
    out = {}
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        with np.errstate(all="ignore"):
            out[f"layers.{i}.weight"] = (rng.standard_normal((b, a)) * scale).astype(dtype)
            out[f"layers.{i}.bias"] = (rng.standard_normal(b) * scale).astype(dtype)
    return out


GOOD_OPTIONS = {
    "gamf": {"tau0": 2.0, "max_iter": 50, "universe": True, "gamma": 0.5, "balance": "sqrt", "init": "identity"},
    "weight_matching": {"max_iter": 5},
    "ot": {},
    "average": {},
}
BAD_VALUES = ["1", 2.5, -1, 0, None, float("nan"), float("inf"), True, [1], {"a": 1}, "no", 1e300]
SEEDS = st.one_of(st.none(), st.integers(0, 2**40), st.integers(-5, -1), st.sampled_from(["abc", 1.5, True]))


@st.composite
def problems(draw):
    n_models = draw(st.integers(1, 3))
    depth = draw(st.integers(2, 3))
    widths = [draw(st.integers(1, 4))] + [draw(st.integers(0, 5)) for _ in range(depth - 1)] + [draw(st.integers(1, 3))]
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    scale = 10.0 ** draw(st.integers(-45, 45))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = _mlp(rng, widths, dtype, scale)
    models: list[Any] = []
    for _ in range(n_models):
        if draw(st.booleans()):  # a permuted copy (every aligning method must recover it) ...
            perms = {f"h{i}": rng.permutation(w) for i, w in enumerate(widths[1:-1])}
            models.append(g.permute(base, g.mlp_spec(depth), perms) if all(widths[1:-1]) else dict(base))
        else:  # ... or another model
            models.append(_mlp(rng, widths, dtype, scale))
    corrupt = draw(st.sampled_from(["none", "none", "nan", "inf", "int", "list", "shape", "drop", "model"]))
    if corrupt != "none" and models:
        k = draw(st.integers(0, len(models) - 1))
        name = draw(st.sampled_from(sorted(models[k])))
        m = dict(models[k])
        if corrupt in ("nan", "inf") and m[name].size:
            x = m[name].copy()
            x.flat[0] = np.nan if corrupt == "nan" else np.inf
            m[name] = x
        elif corrupt == "int":
            with np.errstate(all="ignore"):
                m[name] = m[name].astype(np.int32)
        elif corrupt == "list":
            m[name] = m[name].tolist()
        elif corrupt == "shape":
            m[name] = m[name].reshape(-1)[:-1] if m[name].size else np.zeros(3)
        elif corrupt == "drop":
            del m[name]
        models[k] = m if corrupt != "model" else draw(st.sampled_from([None, "model", 3, [1.0]]))
    return models, g.mlp_spec(depth), corrupt


def _options(draw_method: str, data: st.DataObject) -> dict[str, Any]:
    options = dict(GOOD_OPTIONS[draw_method])
    if data.draw(st.booleans()) and options:
        key = data.draw(st.sampled_from(sorted(options)))
        options[key] = data.draw(st.sampled_from(BAD_VALUES))
    if data.draw(st.integers(0, 9)) == 0:
        options["no_such_option"] = 1
    return options


def _check_fused(models, spec, fused, method, result) -> None:
    """No garbage: finite arrays of the widest input dtype and the inputs' shapes; permuted copies recovered."""
    widest = max((x.dtype for x in models[0].values()), key=lambda d: np.finfo(d).bits)
    for name, x in fused.items():
        assert x.shape == models[0][name].shape
        assert x.dtype == max((m[name].dtype for m in models), key=lambda d: np.finfo(d).bits) or x.dtype == widest
        assert np.isfinite(x).all(), name
    same = all(all(np.array_equal(np.sort(m[n], axis=None), np.sort(models[0][n], axis=None)) for n in m)
               for m in models)
    top = max(float(np.abs(x).max()) for x in models[0].values() if x.size)
    distinct = all(len(np.unique(models[0][f"layers.{i}.weight"])) == models[0][f"layers.{i}.weight"].size
                   for i in range(len(spec.groups) + 1))
    if method in ("weight_matching", "ot") and same and distinct and top > 0 and result.converged:
        for name, x in fused.items():
            np.testing.assert_allclose(x, models[0][name], rtol=2e-2, atol=1e-3 * top)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problem=problems(), method=st.sampled_from(METHODS), seed=SEEDS, data=st.data(),
       weights=st.one_of(st.none(), st.lists(st.sampled_from([0.0, 1.0, 1e308, 5e-324, -1.0, math.nan]),
                                            min_size=1, max_size=4)))
def test_match_fuse_merge(problem, method, seed, data, weights):
    models, spec, corrupt = problem
    options = _options(method, data)
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore", g.ConvergenceWarning)
        try:
            result = g.match(models, spec, method=method, seed=seed, weights=weights, **options)
            fused = g.merge(models, spec, result, weights=weights)
        except FusionError:
            return
    assert corrupt in ("none",), f"accepted a corrupted input ({corrupt})"
    _check_fused(models, spec, fused, method, result)
    for k in range(len(models)):  # every index vector is a permutation of the universe
        for p in result.model_perms(k).values():
            assert sorted(np.asarray(p).tolist()) == list(range(len(p)))


@given(data=st.data())
def test_permute(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    widths = [3, data.draw(st.integers(1, 5)), 2]
    model, spec = _mlp(rng, widths, np.float64, 1.0), g.mlp_spec(2)
    n = widths[1]
    kind = data.draw(st.sampled_from(["perm", "universe", "dup", "neg", "float", "short", "2d", "big", "bool"]))
    p: Any = {
        "perm": rng.permutation(n), "universe": rng.permutation(n + 2), "dup": np.zeros(n, dtype=int),
        "neg": -np.arange(n) - 1, "float": np.arange(n, dtype=float), "short": np.arange(n - 1),
        "2d": np.arange(n)[None], "big": np.arange(n) + 10**12, "bool": np.ones(n, dtype=bool),
    }[kind]
    with no_hang():
        try:
            out = g.permute(model, spec, {"h0": p})
        except FusionError:
            assert kind not in ("perm", "universe") and not (kind == "dup" and n == 1)
            return
    assert kind in ("perm", "universe") or (kind == "dup" and n == 1)
    for name, x in out.items():
        assert np.isfinite(x).all()
        if kind == "perm":
            np.testing.assert_array_equal(np.sort(x, axis=None), np.sort(model[name], axis=None))


ANY = st.one_of(st.none(), st.integers(-3, 6), st.floats(allow_nan=True), st.text(max_size=4), st.booleans(),
                st.lists(st.integers(0, 3), max_size=3), st.sampled_from(["h", "out_in", "in_out", "layers"]))


@given(n=ANY, prefix=ANY, bias=ANY, layout=ANY, name=ANY, group=ANY, spatial=ANY)
def test_spec_builders(n, prefix, bias, layout, name, group, spatial):
    calls = [
        lambda: g.mlp_spec(n),
        lambda: g.mlp_spec(n, prefix=prefix, bias=bias, layout=layout),
        lambda: g.make_spec(g.dense(name, None, group, bias=bias, layout=layout)),
        lambda: g.make_spec(g.conv(name, None, group, spatial_dims=spatial, layout=layout)),
        lambda: g.make_spec(g.norm(name, group)),
        lambda: g.PermutationSpec({"w": (name, group), "v": (group,)}),
        lambda: g.PermutationSpec({n if not isinstance(n, list) else "x": (group, None)}),
        lambda: g.PermutationSpec(n),
    ]
    for call in calls:
        try:
            spec = call()
        except FusionError:
            continue
        assert isinstance(spec, g.PermutationSpec)


TORCH_INPUTS = st.sampled_from(["ok", "shape", "int", "half", "nan", "empty", "list", "none", "meta"])


@settings(max_examples=12)
@given(kind=TORCH_INPUTS, width=st.integers(0, 4), act=st.sampled_from(["same", "tanh"]), method=st.sampled_from(METHODS))
def test_torch_adapter(kind, width, act, method):
    torch = pytest.importorskip("torch")
    from gamfsolve.adapters import torch as gt
    from torch import nn

    def model(seed: int, a: type[nn.Module]) -> nn.Module:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
            return nn.Sequential(nn.Linear(3, width), a(), nn.Linear(width, 2))

    mods = [model(0, nn.ReLU), model(1, nn.Tanh if act == "tanh" else nn.ReLU)]
    x: Any = {
        "ok": torch.randn(4, 3), "shape": torch.randn(4, 7), "int": torch.ones(4, 3, dtype=torch.int64),
        "half": torch.randn(4, 3).half(), "nan": torch.full((4, 3), float("nan")), "empty": torch.randn(0, 3),
        "list": [[1.0, 2.0, 3.0]], "none": None, "meta": torch.randn(4, 3, device="meta"),
    }[kind]
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore", g.ConvergenceWarning)
        try:
            fused = gt.fuse_modules(mods, x, method=method, seed=0)
        except FusionError:
            return
    assert act == "same" and width > 0
    out = fused(torch.randn(5, 3))
    assert out.shape == (5, 2) and bool(torch.isfinite(out).all())


@settings(max_examples=10)
@given(argv=st.lists(st.sampled_from(["--seed", "-1", "x", "--option", "max_iter=0", "tau0=a", "--weights", "1e308",
                                      "-1", "nan", "--method", "ot", "--force", "-q", "--model", "m:f"]), max_size=6))
def test_cli_arguments(argv, tmp_path_factory):
    from gamfsolve.cli import main

    folder = tmp_path_factory.mktemp("cli")
    sink = io.StringIO()
    with no_hang(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        try:
            code = main(["fuse", str(folder / "a.pt2"), str(folder / "b.pt2"), "-o", str(folder / "o.pt2"), *argv])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
    assert code in (2, 3)  # a usage error, else the missing inputs
    assert not any(p.name.startswith(".") for p in folder.iterdir())


@settings(max_examples=8)
@given(kind=st.sampled_from(["ok", "one", "model", "tanh", "wide", "option", "seed", "weights", "like"]),
       method=st.sampled_from(METHODS))
def test_keras_and_convert(kind, method):
    keras = pytest.importorskip("keras")
    pytest.importorskip("torch")
    from gamfsolve.adapters import convert as cv
    from gamfsolve.adapters import keras as gk
    from torch import nn

    def model(act: str = "relu", width: int = 8) -> Any:
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(width, activation=act), keras.layers.Dense(2)])

    a = model()
    torch_twin = cv.keras_to_torch(model(), nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)))
    other: Any = {"tanh": model("tanh"), "wide": model(width=5)}.get(kind, model())
    kw: dict[str, Any] = {"option": {"tau0": "1"}, "seed": {"seed": -2}, "weights": {"weights": [1e308, -1]}}.get(kind, {})
    models: Any = {"one": [a], "model": a}.get(kind, [a, other])
    with no_hang(), warnings.catch_warnings():
        warnings.simplefilter("ignore", g.ConvergenceWarning)
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        for i, call in enumerate((lambda: gk.fuse_models(models, method=method, **{"seed": 0, **kw}),
                     lambda: cv.fuse_cross(models if kind != "ok" else [a, torch_twin], method=method,
                                           like=None if kind == "like" else a, **kw))):
            try:
                fused = call()
            except FusionError:
                continue
            assert kind in ("ok", "wide") or (kind == "like" and i == 0)
            for x in gk.to_arrays(fused).values():
                assert np.isfinite(x).all()
