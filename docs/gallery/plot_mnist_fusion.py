"""
Fusing two MLPs trained on different halves of MNIST
====================================================

Two MLPs are trained from different initialisations on disjoint halves of 6,000 images, then
fused into one model of the same size by each method. Vanilla averaging mixes unrelated units;
matching first puts them in one order.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from gamfsolve.adapters import torch as gt
from torch import nn

from gamfsolve.datasets import load_images

torch.set_num_threads(2)
data = load_images()  # MNIST when found, else the 8x8 digits
train, test = data.split(min(6000, len(data.y) - 500), 500 if len(data.y) < 10_000 else 1000, seed=0)
x_train, y_train = torch.as_tensor(train.x.reshape(len(train.y), -1)), torch.as_tensor(train.y).long()
x_test, y_test = torch.as_tensor(test.x.reshape(len(test.y), -1)), torch.as_tensor(test.y).long()
print(f"{data.name}: {len(train.y)} training, {len(test.y)} held-out images of {x_train.shape[1]} pixels")


def make(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(x_train.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train_model(seed: int, index: np.ndarray, epochs: int = 3) -> nn.Module:
    model = make(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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
        return float((model(x_test).argmax(1) == y_test).float().mean()) * 100


halves = np.array_split(np.random.default_rng(0).permutation(len(train.y)), 2)
models = [train_model(seed, half) for seed, half in enumerate(halves)]
scores = {f"model {k}": accuracy(m) for k, m in enumerate(models)}

# %%
# Fuse with each method; the spec is derived from the module's traced graph.
for method in ("average", "ot", "weight_matching", "gamf"):
    fused = gt.fuse_modules(models, x_test[:2], method=method, seed=0)
    scores[method] = accuracy(fused)
for name, acc in scores.items():
    print(f"{name:16s} {acc:5.1f}%")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(list(scores), list(scores.values()), color=["0.6", "0.6", "C3", "C1", "C2", "C0"])
ax.set_ylabel("held-out accuracy (%)")
ax.set_ylim(0, 100)
fig.tight_layout()
