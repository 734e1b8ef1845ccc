"""The "real networks" bench section: the literature's architectures from their real definitions.

Each case builds two models of one architecture in a fresh process (PyTorch and Hugging Face
``transformers`` classes at random initialisation; nothing is downloaded), derives the spec with
the PyTorch adapter, and times :func:`gamfsolve.match` for one method on the models' arrays:

- ``pair``: two independent initialisations (seeds 0 and 1), as a user fusing two models has;
- ``planted``: model 0 and a copy with every group permuted at random and 1% noise added: the
  fraction of units put back in place is the recovery.

``python -m gamfsolve.bench._real '{"arch": "resnet18", "kind": "pair", "method": "gamf"}'`` runs one
case and prints a JSON line; :func:`bench_real` runs them all (``nox -s bench``, section ``real``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["ARCHS", "bench_real", "build", "only_groups", "run_case"]

# name -> (description, input side); full sizes, and the quick ones (--quick) in build()
ARCHS: dict[str, str] = {
    "resnet18": "HF ResNet, torchvision's ResNet-18 layout (basic blocks 2-2-2-2, 64-512), 64 px",
    "resnet50": "HF ResNet, torchvision's ResNet-50 layout (bottlenecks 3-4-6-3, 256-2048), 64 px",
    "vgg11_bn": "VGG-11 with BatchNorm (CIFAR layout, 64-512), 32 px",
    "alexnet": "AlexNet, torchvision's layers (convolutions 64-256, linear 9216-4096-4096-1000; 61 M parameters), 64 px",
    "mobilenet_v2": "HF MobileNetV2 (width 1.0), 64 px",
    "efficientnet_b0": "HF EfficientNet-B0, 64 px",
    "vit_s16_mlp": "HF ViT-S/16 (384 wide, 12 blocks, 6 heads, MLP 1536), 64 px: every group",
    "vit_s16_ffn": "HF ViT-S/16 as above, only its feed-forward groups (the 12 MLP hidden layers) permuted",
    "vit_b16": "HF ViT-B/16 (768 wide, 12 blocks, 12 heads, MLP 3072; 86 M parameters), 224 px",
}
# torchvision's own definitions (``tv_<name>``; torchvision must be importable, which it is not beside
# the pinned torch 2.13.0: ``nox -s torchvision``'s environment has torch 2.14.1 and torchvision 0.29.1);
# 1,000 classes, random init, 64 px; --quick builds them at full size (they have no width knob)
TORCHVISION = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "squeezenet1_0",
               "densenet121", "googlenet")
ARCHS.update({f"tv_{name}": f"torchvision {name} (needs torchvision), 64 px" for name in TORCHVISION})


LABELS: dict[str, Any] = {"num_labels": 1000}  # ImageNet-sized classifiers


def build(arch: str, seed: int, quick: bool = False) -> tuple[Any, Any]:
    """``(module, example input)`` of ``arch`` at random initialisation ``seed`` (eval mode)."""
    import torch

    torch.manual_seed(seed)
    w = 4 if quick else 1  # quick: every width divided by 4
    if arch.startswith("tv_") and arch[3:] in TORCHVISION:
        import torchvision

        extra = {"aux_logits": False, "init_weights": True} if arch == "tv_googlenet" else {}  # eval has no aux heads
        model = torchvision.models.get_model(arch[3:], weights=None, **extra)
        return model.eval(), torch.randn(2, 3, 64, 64)
    if arch == "vgg11_bn":
        from ..adapters import torch_zoo

        model = torch_zoo.vgg11(batch_norm=True, base=64 // w)
        x = torch.randn(2, 3, 32, 32)
    elif arch == "alexnet":
        model, x = _alexnet(w), torch.randn(2, 3, 64, 64)
    else:
        import transformers as tf

        if arch in ("resnet18", "resnet50"):
            deep = arch == "resnet50"
            sizes = [256, 512, 1024, 2048] if deep else [64, 128, 256, 512]
            cfg = tf.ResNetConfig(depths=[3, 4, 6, 3] if deep else [2, 2, 2, 2], hidden_sizes=[s // w for s in sizes],
                                  embedding_size=64 // w, layer_type="bottleneck" if deep else "basic", **LABELS)
            model = tf.ResNetForImageClassification(cfg)
        elif arch == "mobilenet_v2":
            model = tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(
                depth_multiplier=1.0 / w, image_size=64, **LABELS))
        elif arch == "efficientnet_b0":
            # B0's width and head (HF's default config is B7's: width 2.0, a 2,560-wide head);
            # HF's EfficientNet breaks at width coefficients below 1: quick mode halves the depth instead
            model = tf.EfficientNetForImageClassification(tf.EfficientNetConfig(
                width_coefficient=1.0, depth_coefficient=0.5 if quick else 1.0, hidden_dim=1280, image_size=64, **LABELS))
        elif arch in ("vit_s16_mlp", "vit_s16_ffn"):
            model = tf.ViTForImageClassification(tf.ViTConfig(
                hidden_size=384 // w, num_hidden_layers=12 // w, num_attention_heads=6 // (2 if quick else 1),
                intermediate_size=1536 // w, image_size=64, patch_size=16, **LABELS))
        elif arch == "vit_b16":
            model = tf.ViTForImageClassification(tf.ViTConfig(
                hidden_size=768 // w, num_hidden_layers=12 // w, num_attention_heads=12 // (2 if quick else 1),
                intermediate_size=3072 // w, image_size=224, patch_size=16, **LABELS))
            return model.eval(), torch.randn(1, 3, 224, 224)
        else:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
        x = torch.randn(2, 3, 64, 64)
    return model.eval(), x


def _alexnet(w: int) -> Any:
    """torchvision's AlexNet layers (every width divided by ``w``), written out in ``torch.nn``."""
    from torch import nn

    c = [64 // w, 192 // w, 384 // w, 256 // w, 256 // w]
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
        nn.Dropout(), nn.Linear(c[4] * 36, 4096 // w), nn.ReLU(),
        nn.Dropout(), nn.Linear(4096 // w, 4096 // w), nn.ReLU(), nn.Linear(4096 // w, 1000))


def only_groups(spec: Any, keep: Callable[[str], bool]) -> Any:
    """``spec`` with only the groups ``keep`` accepts permuted: the others' axes become fixed
    (parameters left with no permuted axis drop out). A group sharing a composite axis with a
    dropped one is refused (not needed for the cases here)."""
    from ..spec._spec import PermutationSpec, groups_of

    axes = {}
    for name, entries in spec.axes.items():
        new = []
        for entry in entries:
            groups = groups_of(entry)
            kept = [g for g in groups if keep(g)]
            if kept and (not isinstance(entry, str) or len(kept) != len(groups)):
                raise ValueError(f"{name!r}: composite axis {entry!r} mixes kept and dropped groups")
            new.append(entry if kept else None)
        if any(e is not None for e in new):
            axes[name] = tuple(new)
    return PermutationSpec(axes)


def _arrays(module: Any, names: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items() if k in names}


def _peak_mib() -> float:
    from ._models import _rss_mib

    return _rss_mib()


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One case ``{"arch", "kind": "pair" | "planted", "method", "options", "quick", "backend"}``; a
    JSON-able row. ``backend`` (default ``"numpy"``; see :data:`gamfsolve.bench.BACKENDS`): the
    array library the models' arrays are given to :func:`gamfsolve.match` in; on a GPU the row
    also has the device's peak memory during the solve (``device_peak_mib``)."""
    import gamfsolve as gs

    from .._xp import to_host
    from ..adapters import torch as gt
    from . import backend_tools

    backend = case.get("backend", "numpy")
    convert, sync = backend_tools(backend)
    quick = bool(case.get("quick", False))
    a, x = build(case["arch"], 0, quick)
    start = time.perf_counter()
    spec = gt.spec_from_module(a, x)
    derive_s = time.perf_counter() - start
    if case["arch"] == "vit_s16_ffn":
        spec = only_groups(spec, lambda g: g.endswith(".mlp.fc1"))
    first = _arrays(a, spec.axes)
    rng = np.random.default_rng(0)
    if case["kind"] == "planted":
        sizes = spec.group_sizes({k: v.shape for k, v in first.items()})
        planted = {g: rng.permutation(n) for g, n in sizes.items()}
        copy = gs.permute(first, spec, planted)
        second = {k: (v + 0.01 * float(np.std(v)) * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in copy.items()}
    else:
        second = _arrays(build(case["arch"], 1, quick)[0], spec.axes)
    n_units = sum(spec.group_sizes({k: v.shape for k, v in first.items()}).values())
    model_size = {"params_m": sum(v.size for v in first.values()) / 1e6,
                  "model_mib": 2 * sum(v.nbytes for v in first.values()) / 2**20}
    del a
    first, second = ({k: convert(v) for k, v in m.items()} for m in (first, second))
    device_start = _device_peak(backend, reset=True)
    before = _peak_mib()
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    result = gs.match([second, first], spec, method=case["method"], seed=0, **case.get("options", {}))
    sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    row = {**case, "backend": backend, "status": "ok", "time_s": wall, "cpu_s": cpu, "derive_s": derive_s,
           "n_iter": result.n_iter, "groups": len(spec.groups), "units": n_units, **model_size,
           "rss_before_mib": before, "peak_rss_mib": _peak_mib()}
    if device_start is not None:
        row["device_before_mib"], row["device_peak_mib"] = device_start, _device_peak(backend)
    if case["kind"] == "planted":  # match() put ``first`` (model 1) into ``second``'s order
        hits = sum(int(np.sum(to_host(result.perms[g][1]) == planted[g])) for g in spec.groups)
        row["recovered"] = hits / max(1, n_units)
    return row


def _device_peak(backend: str, reset: bool = False) -> float | None:
    """MiB of GPU memory: with ``reset``, what is held now (and the peak counter restarted);
    else the peak since (torch: allocated; CuPy: its memory pool's size, which keeps what it
    took). None on the host."""
    if backend == "torch_cuda":
        import torch

        if reset:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        return torch.cuda.max_memory_allocated() / 2**20
    if backend == "cupy":
        import cupy

        return cupy.get_default_memory_pool().total_bytes() / 2**20
    return None


CASES = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "efficientnet_b0", "vit_s16_mlp", "vit_s16_ffn", "vit_b16")
QUICK_CASES = ("resnet18",)  # --quick: one architecture at a quarter of its widths, planted copies only
METHODS: tuple[tuple[str, dict[str, Any]], ...] = (("weight_matching", {}), ("gamf", {}))
HEADER = (f"{'model':<16} {'kind':<8} {'method':<16} {'params':>7} {'time':>9} {'vs w.m.':>8} {'cpu':>9} "
          f"{'vs w.m.':>8} {'iters':>5} {'recovered':>9} {'peak MiB':>8} {'+MiB':>7} {'models MiB':>10}")


def _line(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    if r.get("status") != "ok":
        return f"{r['arch']:<16} {r['kind']:<8} {r['method']:<16} {r.get('status')}"
    ratio = f"{r['time_s'] / base['time_s']:7.1f}x" if base else "       -"
    cpu_ratio = f"{r['cpu_s'] / base['cpu_s']:7.1f}x" if base else "       -"
    rec = f"{r['recovered']:9.4f}" if "recovered" in r else f"{'-':>9}"
    return (f"{r['arch']:<16} {r['kind']:<8} {r['method']:<16} {r['params_m']:6.1f}M {r['time_s']:8.1f}s {ratio} "
            f"{r['cpu_s']:8.1f}s {cpu_ratio} {r['n_iter']:>5} {rec} {r['peak_rss_mib']:8.0f} "
            f"{r['peak_rss_mib'] - r['rss_before_mib']:7.0f} {r['model_mib']:10.1f}"
            + (f"  GPU peak {r['device_peak_mib']:.0f} MiB" if "device_peak_mib" in r else ""))


def bench_real(quick: bool, log: Callable[[str], None], timeout: float,
               run: Callable[[dict[str, Any], float, str], dict[str, Any]], backend: str = "numpy",
               archs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every architecture (or those in ``archs``, any of :data:`ARCHS`), both kinds, weight matching
    then gamf, side by side; ``run(case, timeout, module)`` runs one case in a fresh process;
    ``backend``: the array library of the models' arrays."""
    log(HEADER)
    rows = []
    for arch in archs or (QUICK_CASES if quick else CASES):
        for kind in ("planted",) if quick else ("pair", "planted"):
            base = None
            for method, options in METHODS:
                case = {"arch": arch, "kind": kind, "method": method, "options": options, "quick": quick,
                        "backend": backend}
                r = run(case, timeout, "gamfsolve.bench._real")
                if method == "weight_matching" and r.get("status") == "ok":
                    base = r
                rows.append(r)
                log(_line(r, base if method != "weight_matching" else None))
    return rows


if __name__ == "__main__":
    print(json.dumps(run_case(json.loads(sys.argv[1]))))
