"""Synthetic planted models for the benchmarks: specs from the builders, weights from NumPy.

A "planted pair" is a random model and a copy with every hidden group permuted at random and
a little Gaussian noise added, so a perfect alignment is known. ``python -m
gamfsolve.bench._models CASE_JSON`` runs one end-to-end case in a fresh process and prints
one JSON line (time, iterations, alignment quality, peak memory), so that peak memory is the
case's own.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import METHODS, conv, dense, make_spec, match, norm, permute
from .._xp import to_host
from ..spec._spec import PermutationSpec

__all__ = ["ARCHS", "planted", "run_case"]

Shapes = dict[str, tuple[int, ...]]


def _mlp(scale: int) -> tuple[PermutationSpec, Shapes]:
    widths = [784, 1024 // scale, 1024 // scale, 1024 // scale, 10]
    groups: list[str | None] = [None, "h0", "h1", "h2", None]
    parts: list = []
    shapes: Shapes = {}
    for i in range(4):
        parts.append(dense(f"fc{i}", groups[i], groups[i + 1]))
        shapes[f"fc{i}.weight"] = (widths[i + 1], widths[i])
        shapes[f"fc{i}.bias"] = (widths[i + 1],)
    return make_spec(*parts), shapes


def _vgg11(scale: int) -> tuple[PermutationSpec, Shapes]:
    widths = [3] + [w // scale for w in (64, 128, 256, 256, 512, 512, 512, 512)]
    groups: list[str | None] = [None] + [f"c{i}" for i in range(8)]
    parts: list = []
    shapes: Shapes = {}
    for i in range(8):
        parts.append(conv(f"features.{i}", groups[i], groups[i + 1]))
        shapes[f"features.{i}.weight"] = (widths[i + 1], widths[i], 3, 3)
        shapes[f"features.{i}.bias"] = (widths[i + 1],)
    parts.append(dense("classifier", groups[-1], None))
    shapes["classifier.weight"], shapes["classifier.bias"] = (10, widths[-1]), (10,)
    return make_spec(*parts), shapes


def _conv_bn(parts: list, shapes: Shapes, name: str, cin: int, cout: int, gin: str | None, gout: str, k: int) -> None:
    parts += [conv(name, gin, gout, bias=False), norm(f"{name}.bn", gout)]
    shapes[f"{name}.weight"] = (cout, cin, k, k)
    for key in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.bn.{key}"] = (cout,)


def _resnet20(scale: int) -> tuple[PermutationSpec, Shapes]:
    """ResNet-20 at width x4 (16, 32, 64 -> 64, 128, 256); one group per residual stream."""
    widths = [64 // scale, 128 // scale, 256 // scale]
    parts: list = []
    shapes: Shapes = {}
    _conv_bn(parts, shapes, "stem", 3, widths[0], None, "res0", 3)
    cin = widths[0]
    for s, w in enumerate(widths):
        for b in range(3):
            pre = f"layer{s}.{b}"
            gin = f"res{s - 1}" if (b == 0 and s > 0) else f"res{s}"
            _conv_bn(parts, shapes, f"{pre}.conv1", cin, w, gin, f"{pre}.mid", 3)
            _conv_bn(parts, shapes, f"{pre}.conv2", w, w, f"{pre}.mid", f"res{s}", 3)
            if cin != w:
                _conv_bn(parts, shapes, f"{pre}.short", cin, w, gin, f"res{s}", 1)
            cin = w
    parts.append(dense("fc", "res2", None))
    shapes["fc.weight"], shapes["fc.bias"] = (10, widths[-1]), (10,)
    return make_spec(*parts), shapes


ARCHS: dict[str, Callable[[int], tuple[PermutationSpec, Shapes]]] = {
    "mlp": _mlp,
    "vgg11": _vgg11,
    "resnet20x4": _resnet20,
}


def _random_model(shapes: Shapes, rng: np.random.Generator, dtype: Any) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in shapes.items():
        if name.endswith("running_var"):
            out[name] = (1.0 + 0.1 * rng.random(shape)).astype(dtype)
        elif len(shape) == 1:
            out[name] = (0.1 * rng.standard_normal(shape)).astype(dtype)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
    return out


def planted(
    arch: str, n_models: int = 2, *, scale: int = 1, noise: float = 0.01, seed: int = 0, dtype: Any = np.float32
) -> tuple[list[dict[str, np.ndarray]], PermutationSpec]:
    """Model 0 at random, models 1.. its permuted copies plus ``noise`` x (each weight's std)."""
    spec, shapes = ARCHS[arch](scale)
    rng = np.random.default_rng(seed)
    base = _random_model(shapes, rng, dtype)
    sizes = spec.group_sizes(shapes)
    models = [base]
    for _ in range(1, n_models):
        perms = {g: rng.permutation(n) for g, n in sizes.items()}
        copy = permute(base, spec, perms)
        models.append(
            {k: (v + noise * float(np.std(v)) * rng.standard_normal(v.shape)).astype(dtype) for k, v in copy.items()}
        )
    return models, spec


def alignment_error(models: list[dict[str, np.ndarray]], spec: PermutationSpec, result: Any) -> float:
    """``max_k ||align(model_k) - align(model_0)|| / ||model_0||``; about ``noise`` when recovered."""

    def perms(k: int) -> dict[str, np.ndarray]:
        return {g: to_host(p) for g, p in result.model_perms(k).items()}

    ref = permute(models[0], spec, perms(0))
    norm0 = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in ref.values()))
    worst = 0.0
    for k in range(1, len(models)):
        al = permute(models[k], spec, perms(k))
        d = np.sqrt(sum(float(np.sum((al[n].astype(np.float64) - ref[n]) ** 2)) for n in ref))
        worst = max(worst, d / norm0)
    return worst


def _rss_mib() -> float:
    """This process's peak resident size in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, which starts afresh at ``exec``; ``ru_maxrss`` does
    not (it kept the bench parent's 2.3 GiB after a kernels section, measured), so it is only the
    fallback elsewhere.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One end-to-end match: ``{"arch", "n_models", "scale", "method", "options", "seed"[, "noise", "backend"]}``
    (``noise``: the copies' noise, 0.01 by default).

    With a ``backend`` other than NumPy the models are moved to it (and its device) before the
    clock starts; the alignment error is read on the host.
    """
    from . import backend_tools

    if case["method"] not in METHODS:
        return {**case, "status": "n/a"}
    models, spec = planted(case["arch"], case.get("n_models", 2), scale=case.get("scale", 1),
                           noise=case.get("noise", 0.01), seed=case["seed"])
    convert, sync = backend_tools(case.get("backend", "numpy"))
    inputs = [{k: convert(v) for k, v in m.items()} for m in models]
    sync()
    before = _rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    result = match(inputs, spec, method=case["method"], seed=case["seed"], **case.get("options", {}))
    sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        **case,
        "status": "ok",
        "time_s": wall,
        "cpu_s": cpu,  # CPU time of all the process's threads: on a shared machine, the steadier figure
        "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "model_mib": sum(v.nbytes for m in models for v in m.values()) / 2**20,
        "solver_time_s": result.time,
        "n_iter": result.n_iter,
        "converged": bool(result.converged),
        "align_err": alignment_error(models, spec, result),
        "rss_before_mib": before,
        "peak_rss_mib": _rss_mib(),
    }


if __name__ == "__main__":
    print(json.dumps(run_case(json.loads(sys.argv[1]))))
