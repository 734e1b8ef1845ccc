"""GPU end to end: the solver on CuPy and torch-CUDA arrays, the PyTorch adapter on CUDA modules.

Every test skips without a CUDA device (here: always). The kernel-level GPU tests live in
test_kernels.py (``cupy`` / ``torch_cuda`` backends); these check whole solves stay on the device
and give the host's answer.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import converter, to_numpy

import gamfsolve as g
from gamfsolve.bench._models import alignment_error, planted

pytestmark = pytest.mark.gpu
GPU = ("cupy", "torch_cuda")


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize(
    ("arch", "n_models", "options"),
    [
        ("mlp", 2, {"affinity": "edge"}),
        ("mlp", 2, {"affinity": "node"}),
        ("vgg11", 2, {"affinity": "edge"}),
        ("resnet20x4", 2, {"affinity": "edge"}),
        ("mlp", 4, {"affinity": "edge", "universe": True, "kernel": "factorised"}),
    ],
)
def test_planted_models_recovered_on_the_device(backend: str, arch: str, n_models: int, options: dict) -> None:
    """Planted copies (1% noise) are aligned on the GPU as on the host; arrays stay on the device."""
    convert = converter(backend)
    models, spec = planted(arch, n_models, scale=8, seed=0)
    inputs = [{k: convert(v) for k, v in m.items()} for m in models]
    result = g.match(inputs, spec, method="gamf", seed=0, **options)
    assert alignment_error(models, spec, result) < 0.02
    fused = g.fuse(inputs, spec, method="gamf", seed=0, **options)
    for k, v in fused.items():
        assert type(v) is type(inputs[0][k])
        assert v.device == inputs[0][k].device
        assert v.dtype == inputs[0][k].dtype
    if n_models > 2:
        return  # a universe is defined up to a relabelling of its slots: the alignment above is the check
    host = g.match(models, spec, method="gamf", seed=0, **options)
    for grp in spec.groups:
        for p_dev, p_host in zip(result.perms[grp], host.perms[grp], strict=True):
            np.testing.assert_array_equal(to_numpy(p_dev), to_numpy(p_host))


def test_torch_adapter_on_cuda_modules() -> None:
    """fuse_modules / align_modules on CUDA modules: results on CUDA, the function kept by alignment."""
    torch = pytest.importorskip("torch")
    converter("torch_cuda")  # skips without a device
    from gamfsolve.adapters import torch as gt
    from torch_helpers import make, permuted_copy

    model, x = make("vgg11")
    spec = gt.spec_from_module(model, x)
    other = permuted_copy(model, spec)
    model, other, x = model.cuda(), other.cuda(), x.cuda()
    for method in ("gamf", "weight_matching", "average"):
        fused = gt.fuse_modules([model, other], x, method=method, seed=0, spec=spec)
        assert all(t.device.type == "cuda" for t in fused.state_dict().values())
    fused = gt.fuse_modules([model, other], x, method="gamf", seed=0, spec=spec)
    aligned = gt.align_modules([model, other], x, method="gamf", seed=0, spec=spec)
    with torch.no_grad():
        torch.testing.assert_close(aligned[1](x), other(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)  # a model fused with its permuted self
