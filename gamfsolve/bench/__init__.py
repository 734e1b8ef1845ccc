"""Benchmarks: every figure measured side by side in one run, with ratios.

``python -m gamfsolve bench [--quick] [--json] [--sections kernels,e2e,many] [--backend NAME] [--plot FILE]``
(or ``python -m gamfsolve.bench``). Fixed seeds, synthetic planted models, no data. Times are the minimum over
repeats (the machines are shared); errors are ``max |R - R_exact| / max |R_exact|`` with
``R_exact`` the exact kernel in float64 on the same (rounded) inputs.

Sections: ``kernels`` (each edge-affinity kernel on a layer 512 wide, fan-in 512 and 4608,
conv 3x3 as 512 edges of 9 numbers; float32/float64; weights of std 0.01..3 ``sqrt(sigma)``;
the factorised rank ``r``; then the float32 matrix-product floor of a rank-``r`` map against
exact Numba);
``e2e`` (two planted models, MLP / VGG11 / ResNet-20x4, every method, one fresh process per
case for its peak memory); ``many`` (N = 2..16 MLPs 784-256-256-256-10, GAMF in the universe,
time per outer iteration); ``real`` (the literature's architectures from their real
definitions, weight matching and gamf side by side, one process per case: :mod:`._real`).
``--quick`` divides the widths by 4 (kernels) or 8 (models) and runs fewer cases (kernels in
float32 only, one timing each; e2e without the node affinity; many at N = 2, 4, 8 with the
default kernel; real: ResNet-18's planted copy only).

``--backend`` runs every case on another array library: ``numpy`` (default), ``torch`` (CPU),
``torch_cuda`` or ``cupy`` (GPU; timings synchronise the device). Off NumPy there is no Numba
kernel and the ratios are taken against the exact ``matmul`` kernel instead; the real networks'
arrays are given to :func:`gamfsolve.match` in that library (on a GPU each row also has the
device's peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib import import_module
from typing import Any

import numpy as np

__all__ = ["main"]

SCALES = (0.01, 0.1, 0.3, 1.0, 3.0)
KERNEL_NAMES = ("reference", "numba", "cuda", "matmul", "factorised", "auto")
E2E_METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("average", {}),
    ("weight_matching", {}),
    ("gamf", {"affinity": "node"}),
    ("gamf", {"affinity": "edge"}),
)


BACKENDS = ("numpy", "torch", "torch_cuda", "cupy")


def backend_tools(name: str) -> tuple[Callable[[np.ndarray], Any], Callable[[], None]]:
    """``(convert, sync)`` for a backend: NumPy array -> that library's array (on its device), and
    a call that waits for the device's queued work (a no-op on the host)."""
    if name not in BACKENDS:
        raise SystemExit(f"gamfsolve bench: unknown backend {name!r}; choose one of {list(BACKENDS)}")
    if name == "numpy":
        return (lambda a: a), (lambda: None)
    try:
        import_module("torch" if name.startswith("torch") else "cupy")
    except ImportError as exc:
        raise SystemExit(f"gamfsolve bench: --backend {name} needs {exc.name or 'its library'}, which is not installed") from exc
    if name in ("torch", "torch_cuda"):
        import torch

        if name == "torch":
            return torch.from_numpy, (lambda: None)
        if not torch.cuda.is_available():
            raise SystemExit("gamfsolve bench: --backend torch_cuda needs a CUDA device, and torch sees none")
        return (lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()), torch.cuda.synchronize
    if name == "cupy":
        import cupy

        if not cupy.is_available():
            raise SystemExit("gamfsolve bench: --backend cupy needs a CUDA device, and CuPy sees none")
        return cupy.asarray, cupy.cuda.Device().synchronize
    raise AssertionError(name)


def _best(func: Callable[[], Any], repeat: int, sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        out = func()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def _machine() -> dict[str, Any]:
    import numpy

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    return info


def _device_info(backend: str) -> dict[str, Any]:
    """The accelerator a GPU backend runs on (name, library versions)."""
    if backend == "torch_cuda":
        import torch

        return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    if backend == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {"device": name, "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    if backend == "torch":
        import torch

        return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    return {}


def _kernel_cases(quick: bool) -> list[tuple[str, tuple[int, int, int]]]:
    n = 128 if quick else 512
    return [
        (f"dense {n}x{n}, fan-in {n}", (n, n, 1)),
        (f"conv3x3 {n}x{n}, {n} edges of D=9", (n, n, 9)),
        (f"conv3x3 {n}x{n}, fan-in {9 * n} scalar", (n, 9 * n, 1)),
    ]


def bench_kernels(quick: bool, log: Callable[[str], None], backend: str = "numpy") -> list[dict[str, Any]]:
    """Section (i): time and error of every kernel, per shape, dtype and weight scale."""
    from .._xp import to_host
    from ..affinity._kernels import _cuda, _dispatch, factorised_rank
    from ..affinity._kernels._numba import available, edge_affinity_numba

    convert, sync = backend_tools(backend)
    numba_ok = available() and backend == "numpy"

    rows = []
    repeat = 1 if quick else 3  # after a warm-up call
    scales = (0.01, 0.3, 3.0) if quick else SCALES
    for label, (n, e, d) in _kernel_cases(quick):
        for dtype in (np.float32,) if quick else (np.float32, np.float64):
            for scale in scales:
                rng = np.random.default_rng(0)
                base = scale * rng.standard_normal((n, e, d))
                x = base.astype(dtype)
                y = (base[rng.permutation(n)] + 0.3 * scale * rng.standard_normal((n, e, d))).astype(dtype)
                x64, y64 = x.astype(np.float64), y.astype(np.float64)
                exact = (
                    edge_affinity_numba(x64, y64, 1.0) if available() else _dispatch(x64, y64, 1.0, "matmul", 1e-12)[0]
                )
                peak = float(np.max(np.abs(exact)))
                row: dict[str, Any] = {"case": label, "dtype": np.dtype(dtype).name, "scale": scale,
                                       "rank": factorised_rank(x, y, 1.0, rtol=1e-6), "backend": backend}
                xb, yb = convert(x), convert(y)
                for name in KERNEL_NAMES:
                    if name == "reference" and 64 * n * e * d * 8 > 2**28:
                        row[name] = None  # its (64, n, E, D) float64 temporaries exceed 256 MiB
                        continue
                    if (name == "numba" and not numba_ok) or (name == "cuda" and not _cuda.supports(xb)):
                        row[name] = None
                        continue
                    _dispatch(xb, yb, 1.0, name, 1e-6)  # warm up: compile, build bases
                    run: Callable[[], Any] = partial(_dispatch, xb, yb, 1.0, name, 1e-6)
                    t, (r, used) = _best(run, repeat, sync)
                    err = float(np.max(np.abs(to_host(r).astype(np.float64) - exact))) / peak
                    row[name] = {"time_s": t, "rel_err": err, "used": used}
                rows.append(row)
                log(_kernel_line(row))
    return rows


def bench_gemm_floor(quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """What any rank-``r`` feature map costs at least: one float32 ``(n, E r) @ (E r, m)`` product.

    Against exact Numba on the same ``n x m x E`` float32 case (weights of std 0.71, the solver's
    default width); ``ratio`` = Numba time / product time, the best speed-up a rank-``r`` map can reach.
    """
    from ..affinity._kernels._numba import available, edge_affinity_numba

    if not available():
        return []
    n = 128 if quick else 512
    rng = np.random.default_rng(1)
    x = (0.71 * rng.standard_normal((n, n, 1))).astype(np.float32)
    y = x[rng.permutation(n)]
    edge_affinity_numba(x, y, 1.0)
    rows = []
    for r in (1, 2, 3, 4, 6, 8, 12, 20):
        px = rng.standard_normal((n, n * r)).astype(np.float32)
        py = rng.standard_normal((n, n * r)).astype(np.float32)
        t_numba, _ = _best(partial(edge_affinity_numba, x, y, 1.0), 3)  # interleaved with the products
        t_gemm, _ = _best(partial(np.matmul, px, py.T), 5)
        rows.append({"n": n, "rank": r, "numba_s": t_numba, "gemm_s": t_gemm})
        log(f"{n}x{n}x{n} float32  r={r:>2}  product {t_gemm * 1e3:8.2f}ms  exact numba {t_numba * 1e3:8.2f}ms  "
            f"ratio {t_numba / t_gemm:6.1f}x  ({2 * n**3 * r / t_gemm / 1e9:5.0f} GFLOP/s)")
    return rows


def _kernel_line(row: dict[str, Any]) -> str:
    rank = row.get("rank")
    cells = [f"{row['case']:<36} {row['dtype']:<7} {row['scale']:>5} {'-' if rank is None else rank:>3}"]
    base = (row.get("numba") or row.get("matmul") or {}).get("time_s")  # off NumPy: vs the exact matmul
    for name in KERNEL_NAMES:
        c = row.get(name)
        if c is None:
            cells.append(f"{'n/a':>28}")
            continue
        ratio = f"{base / c['time_s']:5.1f}x" if base else "   - "
        tag = "" if c["used"] == name or name == "auto" else "*"
        if name == "auto":
            tag = {"factorised": "f", "numba": "n", "cuda": "c", "matmul": "m", "reference": "r"}[c["used"]]
        cells.append(f"{c['time_s'] * 1e3:9.2f}ms {ratio} {c['rel_err']:7.1e}{tag:1}")
    return " ".join(cells)


def _kernel_header(backend: str = "numpy") -> str:
    head = f"{'case':<36} {'dtype':<7} {'scale':>5} {'r':>3}"
    base = "numba" if backend == "numpy" else "matmul"
    return head + "".join(f" {name + f' (ms, vs {base}, err)':>28}" for name in KERNEL_NAMES)


THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_THREADS: list[int | None] = [None]  # set by --threads for every case process


def _subprocess_case(case: dict[str, Any], timeout: float, module: str = "gamfsolve.bench._models") -> dict[str, Any]:
    """Run one case in a fresh process (its start logged on stderr); its JSON row, or a status on failure."""
    _progress(case)
    cmd = [sys.executable, "-m", module, json.dumps(case)]
    env = dict(os.environ)
    if _THREADS[0] is not None:
        env.update({v: str(_THREADS[0]) for v in THREAD_VARS})
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {**case, "status": f"timeout > {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {**case, "status": f"error: {tail[:120]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _case_line(r: dict[str, Any], base: float | None, base_cpu: float | None = None) -> str:
    opts = ",".join(f"{k}={v}" for k, v in r.get("options", {}).items())
    name = f"{r['method']}({opts})" if opts else r["method"]
    if r.get("status") != "ok":
        return f"{r['arch']:<11} {r.get('n_models', 2):>2} {name:<22} {r.get('status')}"
    ratio = f"{r['time_s'] / base:8.1f}x" if base else "        -"
    cpu_ratio = f"{r['cpu_s'] / base_cpu:8.1f}x" if base_cpu else "        -"
    per_it = r["solver_time_s"] / max(1, r["n_iter"])
    return (
        f"{r['arch']:<11} {r.get('n_models', 2):>2} {name:<22} {r['time_s']:9.2f}s {ratio} {r['cpu_s']:9.2f}s "
        f"{cpu_ratio} {r['n_iter']:>5} {per_it:9.3f}s {r['align_err']:9.4f} {r['peak_rss_mib']:8.0f} "
        f"{r['peak_rss_mib'] - r['rss_before_mib']:8.0f} {r['model_mib']:8.1f}"
    )


CASE_HEADER = (
    f"{'model':<11} {'N':>2} {'method':<22} {'time':>10} {'vs w.m.':>9} {'cpu':>10} {'vs w.m.':>9} {'iters':>5} "
    f"{'s/iter':>10} {'align err':>9} {'peak MiB':>8} {'+MiB':>8} {'models MiB':>8}"
)


def _progress(case: dict[str, Any]) -> None:
    """One line on standard error as each case starts (a case can run for minutes; the table stays on stdout)."""
    options = ",".join(f"{k}={v}" for k, v in case["options"].items())
    what = f"N = {case['n_models']}" if "n_models" in case else case.get("kind", "")
    print(f"  ... {time.strftime('%H:%M:%S')} running {case['arch']} {what} {case['method']}"
          + (f"({options})" if options else ""), file=sys.stderr, flush=True)


def bench_e2e(quick: bool, log: Callable[[str], None], timeout: float, backend: str = "numpy") -> list[dict[str, Any]]:
    """Sections (ii) and (iv): two planted models per architecture, every method, own process."""
    rows = []
    methods = [m for m in E2E_METHODS if not (quick and m[1].get("affinity") == "node")]
    for arch in ("mlp", "vgg11", "resnet20x4"):
        base = base_cpu = None
        for method, options in methods:
            case = {"arch": arch, "n_models": 2, "scale": 8 if quick else 1, "method": method, "options": options,
                    "seed": 0, "backend": backend}
            r = _subprocess_case(case, timeout)
            if method == "weight_matching" and r.get("status") == "ok":
                base, base_cpu = r["time_s"], r["cpu_s"]
            rows.append(r)
            log(_case_line(r, base if method != "average" else None, base_cpu if method != "average" else None))
    return rows


def bench_many(quick: bool, log: Callable[[str], None], timeout: float, backend: str = "numpy") -> list[dict[str, Any]]:
    """Section (iii): N models of the MLP, GAMF in the universe, time per outer iteration."""
    rows = []
    methods: list[tuple[str, dict[str, Any]]] = [
        ("weight_matching", {}),
        ("gamf", {"affinity": "edge", "universe": True, "max_sweeps": 1}),  # the figure is per iteration
    ]
    if not quick:  # feature-map templates at every N (auto takes pairwise exact Numba below 17 models, 12 wide)
        methods.append(("gamf", {"affinity": "edge", "universe": True, "max_sweeps": 1, "kernel": "factorised"}))
    for n_models in (2, 4, 8) if quick else (2, 4, 8, 16):
        for method, options in methods:
            case = {"arch": "mlp", "n_models": n_models, "scale": 8 if quick else 4, "method": method,
                    "options": options, "seed": 0, "backend": backend}
            r = _subprocess_case(case, timeout)
            rows.append(r)
            log(_case_line(r, None))
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gamfsolve bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=(
        "widths / 4 (kernels) or / 8 (models), fewer cases (kernels in float32; e2e without the node affinity; "
        "many at N = 2, 4, 8; real: ResNet-18's planted copy): 2.8 minutes measured on 2 CPU cores shared at load "
        "average 8 (84 CPU-seconds); each case's start is logged on stderr, each section's time on stdout"))
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--sections", default="kernels,e2e,many,real",
                   help="comma-separated: kernels, e2e, many, real (the real networks need torch and transformers)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per end-to-end case")
    from ._real import ARCHS  # names only: torch and transformers are imported when a case is built

    p.add_argument("--archs", default=None, help=(
        "comma-separated architectures of the real section (default: all but alexnet and tv_*; --quick: "
        f"resnet18); any of {', '.join(ARCHS)} (tv_*: torchvision's definitions, where torchvision imports)"))
    p.add_argument("--backend", default="numpy", choices=BACKENDS,
                   help="array library of every case: numpy (default), torch (CPU), torch_cuda, cupy (GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/OpenMP/Numba threads of every e2e/many case process (default: the library defaults)")
    p.add_argument("--plot", metavar="FILE", default=None,
                   help="also draw the scaling curves of this run (sections many and kernels) to FILE (.png, .svg)")
    return p


def _run_sections(args: argparse.Namespace, sections: list[str], log: Callable[[str], None],
                  report: dict[str, Any]) -> None:
    """Each section asked for, in order, into ``report``; its wall time logged as it ends."""
    times: dict[str, float] = report.setdefault("section_s", {})
    start = time.perf_counter()

    def done(name: str) -> None:
        nonlocal start
        times[name] = time.perf_counter() - start
        log(f"    [section {name}: {times[name]:.0f} s]")
        start = time.perf_counter()

    if "kernels" in sections:
        base = "exact Numba" if args.backend == "numpy" else "exact matmul"
        log(f"\n(i) edge affinity, one layer: time, speed-up vs {base}, max rel. error vs exact")
        log("    (* = fell back to an exact kernel; auto: f/n/c/m = factorised/numba/cuda/matmul chosen)")
        log(_kernel_header(args.backend))
        report["kernels"] = bench_kernels(args.quick, log, args.backend)
        if args.backend == "numpy":
            log("\n(i') the floor of a rank-r feature map: one float32 (n, E r) @ (E r, m) product vs exact Numba")
            report["gemm_floor"] = bench_gemm_floor(args.quick, log)
        done("kernels")
    if "e2e" in sections:
        log("\n(ii)+(iv) two planted models (permuted copy + 1% noise): match time, peak memory")
        log("    align err = ||align(B) - A|| / ||A||: ~0.01 when the planted permutation is found")
        log(CASE_HEADER)
        report["e2e"] = bench_e2e(args.quick, log, args.timeout, args.backend)
        done("e2e")
    if "many" in sections:
        log("\n(iii) N planted MLPs: time per outer iteration (solver time / iterations)")
        log(CASE_HEADER)
        report["many"] = bench_many(args.quick, log, args.timeout, args.backend)
        done("many")
    if "real" in sections:
        from ._real import bench_real

        log("\n(v) real networks (HF transformers / zoo definitions, random init): two initialisations ('pair')")
        log("    and a permuted copy + 1% noise ('planted', recovered = fraction of units put back); own process each")
        report["real"] = bench_real(args.quick, log, args.timeout, _subprocess_case, args.backend, args.archs)
        done("real")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; tables on stdout (or ``--json``). Returns the exit status."""
    args = _parser().parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in ("kernels", "e2e", "many", "real")]
    if unknown:
        _parser().error(f"unknown section(s) {unknown}")

    def log(line: str) -> None:  # with --json the tables go to stderr, the document to stdout
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    archs = [a.strip() for a in args.archs.split(",") if a.strip()] if args.archs else None
    if archs:
        from ._real import ARCHS

        wrong = [a for a in archs if a not in ARCHS]
        if wrong:
            _parser().error(f"unknown architecture(s) {wrong}; choose from {list(ARCHS)}")
    args.archs = archs
    _THREADS[0] = args.threads
    backend_tools(args.backend)  # refuse a GPU backend without a device before any work
    if args.plot:
        from ._plot import require_matplotlib

        require_matplotlib()
    report: dict[str, Any] = {"machine": {**_machine(), **_device_info(args.backend)}, "backend": args.backend,
                              "quick": args.quick, "threads": args.threads, "argv": list(argv or [])}
    log(f"machine: {report['machine']}")
    log(f"backend: {args.backend}")
    _run_sections(args, sections, log, report)
    report["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    log(f"load average at the end: {report['load_avg_end']}")
    if args.plot:
        from ._plot import plot_report

        log(f"figure: {plot_report(report, args.plot)}")
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    return 0
