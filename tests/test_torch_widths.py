"""PyTorch modules of different widths: fused into the widest, aligned at the universe's widths."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gamfsolve.adapters import torch as gt  # noqa: E402
from gamfsolve.adapters import torch_zoo as zoo  # noqa: E402

from gamfsolve import FusionError  # noqa: E402

from .nets import keep_units, pruned_copy  # noqa: E402
from .torch_helpers import make, outputs_close  # noqa: E402


def _narrow_copy(wide, narrow, x, seed: int = 0):
    """``narrow`` (a module of smaller widths) holding a pruned, permuted copy of ``wide``."""
    rng = np.random.default_rng(seed)
    spec = gt.spec_from_module(wide, x)
    arrays = {k: v.numpy() for k, v in gt.to_arrays(wide).items()}
    small = {k: tuple(v.shape) for k, v in gt.to_arrays(narrow).items()}
    own = spec.group_sizes(small)
    keep = {g: keep_units(n, own[g], rng) for g, n in spec.group_sizes({k: v.shape for k, v in arrays.items()}).items()}
    return gt.from_arrays(narrow, {k: torch.from_numpy(v) for k, v in pruned_copy(arrays, spec, keep, rng).items()})


@pytest.mark.parametrize("name", ["mlp", "vgg11", "resnet20"])
@pytest.mark.parametrize("method", ["gamf", "ot"])
def test_fusing_a_narrower_copy_gives_the_wide_module(name, method):
    wide, x = make(name, width=2)
    narrow = _narrow_copy(wide, make(name, width=1, seed=1)[0], x)
    fused = gt.fuse_modules([narrow, wide], x, method=method, seed=0)
    assert all(a.shape == b.shape for a, b in zip(fused.state_dict().values(), wide.state_dict().values(), strict=True))
    assert outputs_close(fused, wide, x)


def test_align_modules_keeps_each_function_at_the_universe_widths():
    wide, x = make("mlp", width=2)
    narrow = make("mlp", width=1, seed=1)[0]
    aligned = gt.align_modules([narrow, wide], x, method="weight_matching", seed=0)
    for before, after in zip([narrow, wide], aligned, strict=True):
        assert after.layers[0].weight.shape == wide.layers[0].weight.shape
        assert outputs_close(after, before, x)


def test_no_widest_input_needs_a_template():
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(0)
    a = zoo.MLP(784, (16, 8), 10)
    b = zoo.MLP(784, (8, 16), 10)
    with pytest.raises(FusionError, match="template="):
        gt.fuse_modules([a, b], x, method="average")
    fused = gt.fuse_modules([a, b], x, method="average", template=zoo.MLP(784, (16, 16), 10))
    assert fused.layers[1].weight.shape == (16, 16)
