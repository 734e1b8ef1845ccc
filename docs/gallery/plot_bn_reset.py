"""
BatchNorm reset and REPAIR after fusion
=======================================

A fused BatchNorm network carries the averaged running statistics of its inputs, which no
longer fit its weights. :func:`gamfsolve.adapters.torch.reset_bn_stats` recomputes them from a
few batches of training inputs; :func:`gamfsolve.adapters.torch.repair` also restores the
hidden channels' statistics of un-normalised layers.
"""

import numpy as np
import torch
from gamfsolve.adapters import torch as gt
from torch import nn

from gamfsolve.datasets import load_images

torch.set_num_threads(2)
data = load_images()
train, test = data.split(min(3000, len(data.y) - 500), 500 if len(data.y) < 10_000 else 1000, seed=1)
pool = 2 if train.x.shape[1] >= 28 else 1  # MNIST at 14 x 14 keeps this example fast
x_train = nn.functional.avg_pool2d(torch.as_tensor(train.x[:, None]), pool)
x_test = nn.functional.avg_pool2d(torch.as_tensor(test.x[:, None]), pool)
y_train, y_test = torch.as_tensor(train.y).long(), torch.as_tensor(test.y).long()
side = x_train.shape[-1]


def make(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * (side // 4) ** 2, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def train_model(seed: int, index: np.ndarray, epochs: int = 2) -> nn.Module:
    model = make(seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(index), generator=gen).split(64):
            rows = torch.as_tensor(index)[batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[rows]), y_train[rows]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module) -> float:
    with torch.no_grad():
        return float((model.eval()(x_test).argmax(1) == y_test).float().mean()) * 100


halves = np.array_split(np.random.default_rng(1).permutation(len(train.y)), 2)
models = [train_model(seed, half) for seed, half in enumerate(halves)]
for k, m in enumerate(models):
    print(f"model {k}: {accuracy(m):5.1f}%")

# %%
# Fuse with gamf, then correct the statistics on 1,000 training inputs (no labels used).
example = x_test[:2]
fused = gt.fuse_modules(models, example, method="gamf", seed=0)
inputs = x_train[:1000].split(250)
reset = gt.reset_bn_stats(fused, inputs)
aligned = gt.align_modules(models, example, method="gamf", seed=0)
repaired = gt.repair(fused, aligned, inputs)
print(f"fused, averaged BN statistics {accuracy(fused):5.1f}%")
print(f"fused, BN reset               {accuracy(reset):5.1f}%")
print(f"fused, REPAIR                 {accuracy(repaired):5.1f}%")
