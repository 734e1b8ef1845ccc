"""
Recovering a planted permutation
================================

A network and a copy of it whose hidden units are shuffled and whose weights carry 5% noise
compute nearly the same function in different unit orders. Matching must find the shuffle.
This runs on plain NumPy arrays with a spec written by :func:`gamfsolve.mlp_spec`.
"""

import matplotlib.pyplot as plt
import numpy as np

import gamfsolve as gs

rng = np.random.default_rng(0)
sizes = [(64, 32), (64, 64), (10, 64)]  # (out, in) per layer: 32 -> 64 -> 64 -> 10
model = {}
for i, (n_out, n_in) in enumerate(sizes):
    model[f"layers.{i}.weight"] = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    model[f"layers.{i}.bias"] = 0.1 * rng.standard_normal(n_out)
spec = gs.mlp_spec(3)
print("groups:", spec.groups)

# %%
# Plant a permutation of every hidden group, then add noise.
planted = {g: rng.permutation(64) for g in spec.groups}
copy = gs.permute(model, spec, planted)
copy = {k: v + 0.05 * np.std(v) * rng.standard_normal(v.shape) for k, v in copy.items()}

# %%
# Match by every method. ``result.perms[g][1]`` puts the copy's units in the model's order:
# it undoes the shuffle when the planted permutation is found.
for method in ("average", "weight_matching", "gamf"):
    result = gs.match([model, copy], spec, method=method, seed=0)
    found = {g: np.asarray(result.perms[g][1]) for g in spec.groups}
    recovered = np.mean([np.mean(planted[g][found[g]] == np.arange(64)) for g in spec.groups])
    print(f"{method:16s} units recovered {recovered:6.1%}  iterations {result.n_iter:3d}  {result.time:.2f} s")

# %%
# gamf's matching of the first hidden group: a unit of the copy (row) against the model's
# unit it is matched to (column) lies on the diagonal once the shuffle is undone.
result = gs.match([model, copy], spec, method="gamf", seed=0)
p = np.asarray(result.perms[spec.groups[0]][1])
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
axes[0].imshow(np.eye(64)[planted[spec.groups[0]]], cmap="Greys")
axes[0].set_title("planted shuffle")
axes[1].imshow(np.eye(64)[planted[spec.groups[0]][p]], cmap="Greys")
axes[1].set_title("after gamf's matching")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
