"""torchvision CNNs (random init, 64 px input): spec derived and checked, a permuted copy given
back, and the share of units permuted printed. Needs torchvision (``nox -s torchvision``, which
installs torch 2.14.1 and torchvision 0.29.1); skipped without it. Run with ``-s`` to see the
figures; ``-k weight_matching`` leaves out gamf, which is slow on the larger nets."""

from __future__ import annotations

import logging
import time

import pytest

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import nn  # noqa: E402

from .cnn_helpers import conv_share, recovers_permuted_copy  # noqa: E402

MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_0", "efficientnet_b0", "convnext_tiny"]
_SPECS: dict[str, tuple] = {}


def _derive(name: str) -> tuple[nn.Module, torch.Tensor, object, float, list[str]]:
    if name not in _SPECS:
        torch.manual_seed(0)
        model = tv.models.get_model(name, weights=None, num_classes=10).eval()
        x = torch.randn(2, 3, 64, 64)
        notes: list[str] = []
        logger = logging.getLogger("gamfsolve.adapters.torch")
        handler = logging.Handler()
        handler.emit = lambda record: notes.append(record.getMessage())  # type: ignore[method-assign]
        logger.addHandler(handler)
        level = logger.level
        logger.setLevel(logging.INFO)
        try:
            start = time.perf_counter()
            spec = gt.spec_from_module(model, x)  # checked by random permutation
            seconds = time.perf_counter() - start
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        _SPECS[name] = (model, x, spec, seconds, list(dict.fromkeys(notes)))
    return _SPECS[name]


@pytest.mark.parametrize("name", MODELS)
def test_spec_derived_and_checked(name: str) -> None:
    model, _, spec, seconds, notes = _derive(name)
    conv, conv_total = conv_share(model, spec)
    units, units_total = conv_share(model, spec, linear=True)
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters; conv channels permuted "
          f"{conv:,} of {conv_total:,} ({100 * conv / conv_total:.1f}%); conv+linear units {units:,} of "
          f"{units_total:,} ({100 * units / units_total:.1f}%); derive+check {seconds:.1f} s")
    for note in notes:
        print(f"  fixed: {note}")
    assert conv >= 0.95 * conv_total


# weight matching stops at a local optimum on these two (torch 2.14.1, seed 0): the copy is permuted
# with the same spec, so the exact answer lies in its search space (and gamf finds squeezenet1_0's)
WM_MISSES = {"squeezenet1_0", "convnext_tiny"}
CASES = [pytest.param(n, m, id=f"{n}-{m}", marks=[pytest.mark.xfail(
    strict=True, reason="weight matching stops at a local optimum")] if m == "weight_matching" and n in WM_MISSES else [])
    for n in MODELS for m in ("weight_matching", "gamf")]


@pytest.mark.parametrize(("name", "method"), CASES)
def test_permuted_copy_given_back(name: str, method: str) -> None:
    model, x, spec, _, _ = _derive(name)
    start = time.perf_counter()
    ok = recovers_permuted_copy(model, x, spec, method)
    print(f"\n{name} {method}: permuted copy given back {ok} in {time.perf_counter() - start:.1f} s")
    assert ok
