"""Running a PyTorch module on data: eval mode, input batches, output tensors, device checks.

Shared by the adapter's spec checks (:mod:`gamfsolve.adapters.torch`) and the activation-statistics
repairs (BatchNorm reset and REPAIR).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gamfsolve import FusionError, FusionTypeError

__all__ = ["EvalMode", "device_check", "input_batches", "output_tensors"]


def device_check(module: nn.Module, inputs: tuple, what: str = "module") -> None:
    """Raise :class:`FusionError` unless ``module`` and ``inputs`` are on one real (non-meta) device."""
    devices = {t.device for t in module.state_dict().values() if isinstance(t, torch.Tensor)}
    if any(d.type == "meta" for d in devices) or any(isinstance(t, torch.Tensor) and t.is_meta for t in inputs):
        raise FusionError(
            f"{what} ({type(module).__name__}) or its example inputs are on the meta device (shapes without "
            "values); materialise the weights first, e.g. module.to_empty(device='cpu') and load_state_dict"
        )
    if len(devices) > 1:
        raise FusionError(f"{what} has tensors on several devices: {sorted(map(str, devices))}")
    for t in inputs:
        if isinstance(t, torch.Tensor) and devices and t.device not in devices:
            raise FusionError(
                f"{what} ({type(module).__name__}) is on {next(iter(devices))} but an example input is on "
                f"{t.device}; move them to one device"
            )


class EvalMode:
    """Run with every submodule in eval mode; restore each flag afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.flags = [(m, m.training) for m in module.modules()]

    def __enter__(self) -> None:
        for m, _ in self.flags:
            m.training = False

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


def output_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a module's output (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in output_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in output_tensors(v)]
    return []


def input_batches(data: Any) -> Iterable[tuple]:
    """``data`` (a tensor, or an iterable of tensors or ``(inputs, targets)`` pairs) as input tuples."""
    if isinstance(data, torch.Tensor):
        yield (data,)
        return
    for batch in data:
        if isinstance(batch, torch.Tensor):
            yield (batch,)
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            yield (batch[0],)
        else:
            raise FusionTypeError(f"data must yield tensors or (inputs, targets) pairs, got {type(batch).__name__}")
