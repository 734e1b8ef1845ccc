"""gamfsolve: fuse trained neural networks by graph matching (GAMF, Liu et al., ICML 2022).

The core works on plain arrays of any array-API library (NumPy, PyTorch, CuPy, ...) and
imports no deep-learning framework; adapters for PyTorch, Keras and Flower live in
``gamfsolve.adapters``.

The package's folders, in the order a matching uses them: ``spec`` (which permutation acts on
which axis, and applying permutations), ``affinity`` (unit features, edge kernels, affinities
and the GAMF gradient), ``solvers`` (the projectors and the matching methods); the front door
(``match``, ``merge``, ``fuse``) permutes and averages the models. ``cli`` is the ``gamfsolve``
command line, ``bench`` its benchmarks, ``datasets`` the local data of demos and examples.
"""

from ._api import METHODS, fuse, match, merge
from ._errors import ConvergenceWarning, FusionError, FusionTypeError, OptionError, ScaleError, UnsafeFileError
from ._result import MatchResult
from .solvers import _gamf, _ot, _weight_matching  # noqa: F401  (register the methods)
from .spec._builders import attention, conv, dense, make_spec, mlp_spec, norm
from .spec._permute import permute
from .spec._spec import Blocks, Concat, PermutationSpec, Split

__version__ = "0.1.0"


def _checkout_adapters() -> None:
    """In a source checkout ``adapters/`` sits beside this package (installed, it is
    ``gamfsolve/adapters``). A process whose path starts at the checkout's root imports this
    folder as ``gamfsolve`` (``python -m`` there; Ray puts the driver's working folder first on
    its workers' path, so Flower simulations started there): register the adapters so that
    ``gamfsolve.adapters`` resolves in a checkout too. Their ``__init__`` imports nothing."""
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    beside = os.path.join(os.path.dirname(here), "adapters")
    init = os.path.join(beside, "__init__.py")
    name = __name__ + ".adapters"
    if name in sys.modules or os.path.isdir(os.path.join(here, "adapters")) or not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[beside])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    globals()["adapters"] = module


_checkout_adapters()
del _checkout_adapters

__all__ = [
    "Blocks",
    "METHODS",
    "Concat",
    "MatchResult",
    "OptionError",
    "ConvergenceWarning",
    "FusionError",
    "FusionTypeError",
    "PermutationSpec",
    "ScaleError",
    "Split",
    "attention",
    "UnsafeFileError",
    "conv",
    "dense",
    "fuse",
    "make_spec",
    "match",
    "merge",
    "mlp_spec",
    "norm",
    "permute",
]
