"""gamfsolve: fuse trained neural networks by graph matching (GAMF, Liu et al., ICML 2022).

The core works on plain arrays of any array-API library (NumPy, PyTorch, CuPy, ...) and
imports no deep-learning framework; adapters for PyTorch, Keras and Flower live in
``gamfsolve.adapters``.
"""

from . import _gamf, _ot, _weight_matching  # noqa: F401  (register the methods)
from ._api import METHODS, fuse, match, merge
from ._builders import conv, dense, make_spec, mlp_spec, norm
from ._errors import ConvergenceWarning, FusionError, FusionTypeError, OptionError
from ._permute import permute
from ._result import MatchResult
from ._spec import Blocks, Concat, PermutationSpec

__version__ = "0.1.0"

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
