"""Small reference models for tests and examples (no downloads, no pretrained weights).

Every factory takes keyword arguments only and returns a freshly initialised ``nn.Module``;
``torch.manual_seed`` before the call makes the initialisation reproducible. Widths scale with
``width`` (an integer multiplier) so that tests can use narrow versions of each architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

__all__ = ["LeNet", "MLP", "ResNet", "TinyTransformer", "VGG", "lenet", "mlp", "resnet18", "resnet20",
           "tiny_transformer", "vgg11"]


class MLP(nn.Module):
    """``Flatten -> (Linear -> ReLU) * len(hidden) -> Linear``; layers in ``self.layers``."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def mlp(*, in_features: int = 784, hidden: Sequence[int] = (512, 512), out_features: int = 10,
        width: int = 1, bias: bool = True) -> MLP:
    """An MLP with hidden sizes ``hidden * width`` (MNIST by default: 784-512-512-10)."""
    return MLP(in_features, [h * width for h in hidden], out_features, bias=bias)


class LeNet(nn.Module):
    """LeNet-5: two 5x5 conv + max-pool stages, then three dense layers."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: int = 1) -> None:
        super().__init__()
        c1, c2 = 6 * width, 16 * width
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2 if input_size == 28 else 0)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 5 * 5, 120 * width)
        self.fc2 = nn.Linear(120 * width, 84 * width)
        self.fc3 = nn.Linear(84 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def lenet(*, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: int = 1) -> LeNet:
    """LeNet-5 for 28x28 (padded first conv) or 32x32 inputs."""
    return LeNet(in_channels=in_channels, num_classes=num_classes, input_size=input_size, width=width)


class VGG(nn.Module):
    """VGG: conv stages (``"M"`` = 2x2 max-pool) then a linear classifier on the flattened map."""

    def __init__(self, cfg: Sequence[int | str], *, in_channels: int, num_classes: int, input_size: int,
                 batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, input_size
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            layers += [nn.Conv2d(c, int(item), 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(int(item))] if batch_norm else []
            layers.append(nn.ReLU())
            c = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11(*, width: int = 1, base: int = 64, batch_norm: bool = False, in_channels: int = 3,
          num_classes: int = 10, input_size: int = 32) -> VGG:
    """VGG-11 (channels ``base*width*(1, 2, 4, 4, 8, 8, 8, 8)``) for 32x32 or 28x28 inputs.

    With ``batch_norm=True`` and the defaults it is the CIFAR VGG-11-BN of REPAIR (conv, BN, ReLU;
    five 2x2 max-pools; one linear layer on the 1x1 map of 512 channels), with bias-free convs.

    For 28x28 inputs the fifth pool is dropped: the classifier reads the 1x1 map of the last
    stage (28 -> 14 -> 7 -> 3 -> 1).
    """
    m = base * width
    cfg: list[int | str] = [m, "M", 2 * m, "M", 4 * m, 4 * m, "M", 8 * m, 8 * m, "M", 8 * m, 8 * m, "M"]
    if input_size == 28:
        cfg = cfg[:-1]
    elif input_size != 32:
        raise ValueError(f"input_size must be 28 or 32, got {input_size}")
    return VGG(cfg, in_channels=in_channels, num_classes=num_classes, input_size=input_size, batch_norm=batch_norm)


def _norm(c: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 conv (+ norm) shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batch_norm)
        self.bn1 = _norm(c_out, batch_norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batch_norm)
        self.bn2 = _norm(c_out, batch_norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=not batch_norm),
                                          _norm(c_out, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, stages of basic blocks, global average pool, linear head."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], *, in_channels: int, num_classes: int,
                 batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not batch_norm)
        self.bn1 = _norm(widths[0], batch_norm)
        blocks: list[nn.Module] = []
        c = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            for j in range(d):
                blocks.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1, batch_norm))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet20(*, width: int = 1, batch_norm: bool = True, in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-20 for 32x32 inputs: widths ``(16, 32, 64) * width``, three blocks per stage.

    The CIFAR ResNet that Git Re-Basin and REPAIR fuse (x1: 272,474 parameters; x4 as their
    wide variant): a bias-free 3x3 stem with BatchNorm, basic blocks, 1x1 conv + BN shortcuts
    where the stage changes, global average pool and a linear head.
    """
    return ResNet([16 * width, 32 * width, 64 * width], [3, 3, 3], in_channels=in_channels,
                  num_classes=num_classes, batch_norm=batch_norm)


def resnet18(*, width: int = 1, base: int = 64, batch_norm: bool = True, in_channels: int = 3,
             num_classes: int = 10) -> ResNet:
    """ResNet-18 style (two blocks in each of four stages, 1x1 downsampling shortcuts)."""
    m = base * width
    return ResNet([m, 2 * m, 4 * m, 8 * m], [2, 2, 2, 2], in_channels=in_channels, num_classes=num_classes,
                  batch_norm=batch_norm)


class TinyTransformer(nn.Module):
    """One pre-norm transformer block on a sequence of feature vectors, then mean-pool and classify.

    Shows what the spec derivation handles: the residual stream, LayerNorm, the MLP's hidden
    units, the learned positional embedding, and the fused query/key/value projection split
    into attention heads (one heads order and one within-head order for the three).
    """

    def __init__(self, *, in_features: int, d_model: int, n_heads: int, seq_len: int, num_classes: int,
                 mlp_ratio: int = 2) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.embed = nn.Linear(in_features, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_ratio * d_model)
        self.fc2 = nn.Linear(mlp_ratio * d_model, d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        h = self.embed(x) + self.pos
        q, k, v = self.qkv(self.norm1(h)).reshape(n, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5), dim=-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(n, length, -1))
        h = h + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(h))))
        return self.head(h.mean(1))


def tiny_transformer(*, in_features: int = 16, d_model: int = 32, n_heads: int = 4, seq_len: int = 8,
                     num_classes: int = 10, width: int = 1) -> TinyTransformer:
    """A one-block transformer with ``d_model * width`` features."""
    return TinyTransformer(in_features=in_features, d_model=d_model * width, n_heads=n_heads, seq_len=seq_len,
                           num_classes=num_classes)
