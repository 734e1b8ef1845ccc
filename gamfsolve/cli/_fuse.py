"""``gamfsolve fuse``: fuse model files into one file of the same format."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._api import check_options
from .._errors import FusionError, OptionError
from .._result import MatchResult
from ..spec._validate import check_weights
from ._bn import bn_hint, fix_statistics, read_inputs
from ._common import EXIT_MISMATCH, CliError, check_writable, write_atomic
from ._formats import kind_of, load

__all__ = ["run_fuse"]


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise CliError(f"--input-shape must be positive integers separated by commas, e.g. 1,28,28; got {text!r}")
    return shape


def _check_args(inputs: Sequence[Path], output: Path, args: argparse.Namespace) -> None:
    if len(inputs) < 2:
        raise CliError(f"fuse needs at least two input models, got {len(inputs)}")
    if args.weights is not None and len(args.weights) != len(inputs):
        raise CliError(f"--weights has {len(args.weights)} values for {len(inputs)} input models")
    for path in inputs:
        if _same_file(path, output):
            raise CliError(f"the output {output} is one of the inputs; choose another path")
    if kind_of(output) != kind_of(inputs[0]) or output.suffix.lower() != inputs[0].suffix.lower():
        raise CliError(f"the output must have the inputs' format ({inputs[0].suffix}), got {output.name!r}")
    if output.exists() and not args.force:
        raise CliError(f"{output} exists; pass --force to replace it")
    if args.weights is not None:
        try:
            check_weights(args.weights, len(inputs))
        except FusionError as exc:
            raise CliError(f"--weights: {exc}") from exc


def _method_options(pairs: Sequence[str] | None, method: str, seed: int | None = None) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs as keyword options of ``method``, names checked before any file is read."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--option takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    try:
        check_options(method, out)
    except FusionError as exc:
        raise CliError(f"--option: {exc}") from exc
    try:
        check_options(method, {}, seed)
    except FusionError as exc:
        raise CliError(f"--seed: {exc}") from exc
    return out


def _report(description: str, result: MatchResult, sizes: dict[str, int], output: Path) -> None:
    n = result.n_models
    print(f"fused {n} {description} models with {result.method} -> {output}")
    stop = "converged" if result.converged else "stopped at the iteration limit"
    print(f"  {len(sizes)} permuted groups, {sum(sizes.values())} units; {result.n_iter} iterations, {stop}")
    print(f"  matching time {result.time * 1e3:.1f} ms" + (f"; {result.message}" if result.message else ""))
    if not sizes:
        return
    width = max(len(g) for g in sizes)
    print(f"  {'group':<{width}}  {'units':>5}  units matched differently from model 0 (models 1..{n - 1})")
    for group, size in sizes.items():
        moved = []
        for k in range(1, n):
            perm = [int(i) for i in result.perms[group][k]]
            base = [int(i) for i in result.perms[group][0]]
            moved.append(str(sum(p != b for p, b in zip(perm, base, strict=True))))
        print(f"  {group:<{width}}  {size:>5}  {', '.join(moved)}")


def run_fuse(args: argparse.Namespace) -> int:
    """Read the inputs, match and merge them, write the fused model atomically, report."""
    import gamfsolve

    inputs = [Path(p) for p in args.inputs]
    output = Path(args.output)
    _check_args(inputs, output, args)
    options = _method_options(args.option, args.method, args.seed)
    input_shape = _input_shape(args.input_shape)
    check_writable(output)  # before any model is read or fused
    stats_data = getattr(args, "repair", None) or getattr(args, "reset_bn", None)
    option_name = "--repair" if getattr(args, "repair", None) else "--reset-bn"
    batches = read_inputs(stats_data, option_name) if stats_data else None
    loaded = load(inputs, factory=args.model, input_shape=input_shape)
    if batches is not None and loaded.build is None:
        raise CliError(f"{option_name} is not available for {loaded.description} files (their BatchNorm is compiled "
                       "into the program); fuse state dicts (with --model) or .keras files instead")
    try:
        result = gamfsolve.match(
            loaded.arrays, loaded.spec, method=args.method, weights=args.weights, seed=args.seed,
            progress=False if args.quiet else None, **options  # a bar when standard error is a terminal
        )
        sizes = {g: int(p[0].shape[0]) for g, p in result.perms.items()}  # the universe's (widest) counts
        fused = gamfsolve.merge(loaded.arrays, loaded.spec, result, weights=args.weights)
    except OptionError as exc:  # a value only the method can judge (an unknown choice, a range)
        raise CliError(f"--option: {exc}") from exc
    except FusionError as exc:
        raise CliError(f"cannot fuse {', '.join(map(str, inputs))}: {exc}", EXIT_MISMATCH) from exc
    aligned = None
    if batches is not None:
        if getattr(args, "repair", None):
            aligned = [gamfsolve.permute(a, loaded.spec, result.model_perms(k)) for k, a in enumerate(loaded.arrays)]
        fused = fix_statistics(loaded, fused, aligned, batches, args.weights)
    write_atomic(output, lambda tmp: loaded.write(fused, tmp))
    if not args.quiet:
        _report(loaded.description, result, dict(sizes), output)
        if batches is not None:
            what = "REPAIR (channel statistics of the aligned inputs)" if aligned is not None else "BatchNorm reset"
            print(f"  {what} on {sum(len(b) for b in batches)} inputs from {stats_data}")
        elif (hint := bn_hint(list(fused))) is not None:
            print(f"  {hint}")
    return 0
