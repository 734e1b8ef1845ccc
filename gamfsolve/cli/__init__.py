"""The ``gamfsolve`` command line: ``demo``, ``fuse`` and ``bench``.

Exit status: 0 success; 2 bad usage (arguments, a method option the method does not have or
a value it rejects, unknown or mixed file formats, an output that would overwrite an input, a
missing optional dependency); 3 an input file that cannot be read
or is not a model of the expected kind; 4 models that cannot be fused together (different
architectures or shapes); 5 the output cannot be written. Messages go to standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ._common import CliError

__all__ = ["build_parser", "main"]

_METHOD_CHOICES = ("gamf", "weight_matching", "ot", "average")

_EPILOG = """\
exit status:
  0  success
  2  bad usage: arguments, a bad --option, unknown or mixed formats, output over an input, missing extra
  3  an input file cannot be read, is not a model of the expected kind, or would run code (pickles)
  4  the models cannot be fused (different architectures, shapes or functions)
  5  the output cannot be written
"""


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train small models on bundled data, fuse them by every method, compare",
        description=(
            "Train a few small MLPs (different seeds, equal shares of 8,000 MNIST images; the "
            "bundled 8x8 digits when MNIST is not found), fuse them by every registered method, "
            "and print individual, prediction-ensemble and fused accuracies on 2,000 held-out "
            "images with each method's time. Writes a figure and results.json to --out."
        ),
    )
    p.add_argument("--data", metavar="DIR", help=(
        "folder with the MNIST test idx files (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); "
        "default: $GAMFSOLVE_MNIST, then ../shared/data/mnist, else scikit-learn's 8x8 digits "
        "(docs: docs/howto/cli.rst and the gamfsolve.datasets API page)"))
    p.add_argument("--seed", type=int, default=0, help="seed of split, initialisations, solvers (default 0)")
    p.add_argument("--out", metavar="DIR", default="gamfsolve-demo", help="output folder (default ./gamfsolve-demo)")
    p.add_argument("--models", type=int, default=2, metavar="N", help="number of models to train and fuse (default 2)")
    p.add_argument("--methods", metavar="M,M,...", help="comma-separated methods (default: all registered)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per model (default 10)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")


def _add_fuse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuse",
        help="fuse model files into one model file of the same format",
        description=(
            "Align and average two or more trained models of the same architecture. Inputs: "
            "Keras .keras files (loaded in safe mode), PyTorch .pt2 export programs, or "
            "PyTorch state dicts (.pt, .pth, .safetensors) together with --model naming a "
            "factory that builds the architecture. No input is unpickled beyond plain tensors. "
            "Keras and .pt2 inputs may differ in hidden widths: they fuse into the input that is "
            "widest in every group. "
            "The output is written in the inputs' format, atomically, never over an input."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="MODEL", help="two or more model files of one format")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the fused model")
    p.add_argument("--method", default="gamf", choices=_METHOD_CHOICES, help="fusion method (default gamf)")
    p.add_argument(
        "--weights", type=float, nargs="+", metavar="W", help="non-negative model weights, one per input (normalised)"
    )
    p.add_argument(
        "--model",
        metavar="PKG.MODULE:FACTORY",
        help="for state dicts: a callable returning the torch.nn.Module the weights belong to "
        "(its module importable from the environment or the working folder)",
    )
    p.add_argument(
        "--input-shape",
        metavar="D,D,...",
        help="for state dicts: shape of one example input without the batch axis, e.g. 1,28,28 "
        "(default: the factory's example_inputs attribute, if any)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for randomised solvers")
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a method option, repeatable, e.g. --option balance=sqrt --option max_iter=100; VALUE is read "
        "as JSON when it parses (numbers, true, false, null), else as text",
    )
    stats = p.add_mutually_exclusive_group()
    stats.add_argument(
        "--reset-bn", metavar="DATA",
        help="recompute the fused model's BatchNorm statistics on DATA: an .npz file (its array 'x' or 'inputs' "
        "if present, else every array) or a folder of .npy files, each (n, *input_shape), read without pickle",
    )
    stats.add_argument(
        "--repair", metavar="DATA",
        help="REPAIR on DATA (as --reset-bn): give each hidden layer the average channel statistics of the "
        "aligned inputs, BatchNorm statistics recomputed (state dicts and .keras files)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it already exists")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (every figure side by side)",
        description="Run gamfsolve's benchmarks; the remaining arguments go to gamfsolve.bench.",
        add_help=False,
    )
    p.add_argument("bench_args", nargs="*", help="e.g. --json, --quick, --help")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gamfsolve`` command."""
    parser = argparse.ArgumentParser(
        prog="gamfsolve",
        description="Fuse trained neural networks by graph matching (GAMF, Liu et al., ICML 2022).",
        epilog="Run 'gamfsolve COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"gamfsolve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_fuse(sub)
    _add_bench(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args)
    if args.command == "fuse":
        from ._fuse import run_fuse

        return run_fuse(args)
    try:
        from .. import bench
    except ImportError as exc:
        raise CliError(f"the benchmarks are not available in this install ({exc})", 2) from exc
    return int(bench.main(list(args.bench_args)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gamfsolve`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to gamfsolve.bench, --help included
        args = argparse.Namespace(command="bench", bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return _run(args)
    except CliError as exc:
        print(f"gamfsolve {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("gamfsolve: interrupted", file=sys.stderr)
        return 130

