"""The bench's real architectures build, derive a spec that passes the function check, and give a
planted copy back through weight matching (quick widths)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from gamfsolve.adapters import torch as gt

import gamfsolve as gs
from gamfsolve.bench import _real


def test_alexnet_is_derived_and_a_permuted_copy_is_given_back() -> None:
    a, x = _real.build("alexnet", 0, quick=True)
    spec = gt.spec_from_module(a, x)
    gt.check_spec(a, spec, x)
    first = _real._arrays(a, spec.axes)
    sizes = spec.group_sizes({k: v.shape for k, v in first.items()})
    assert sorted(sizes.values()) == [16, 48, 64, 64, 96, 1024, 1024]
    rng = np.random.default_rng(0)
    planted = {g: rng.permutation(n) for g, n in sizes.items()}
    result = gs.match([gs.permute(first, spec, planted), first], spec, method="weight_matching", seed=0)
    for g in spec.groups:
        np.testing.assert_array_equal(np.asarray(result.perms[g][1]), planted[g])


def test_an_unknown_architecture_is_named() -> None:
    with pytest.raises(ValueError, match="alexnet"):
        _real.build("lenet-1998", 0)


def test_the_feed_forward_case_permutes_only_the_vit_mlp_groups() -> None:
    pytest.importorskip("transformers")
    a, x = _real.build("vit_s16_ffn", 0, quick=True)
    full = gt.spec_from_module(a, x)
    spec = _real.only_groups(full, lambda g: g.endswith(".mlp.fc1"))
    assert spec.groups and all(g.endswith(".mlp.fc1") for g in spec.groups)
    assert len(spec.groups) < len(full.groups)
    assert all(name.split(".mlp.")[0] != name for name in spec.axes)  # the MLP weights and biases only
    first = _real._arrays(a, spec.axes)
    rng = np.random.default_rng(1)
    sizes = spec.group_sizes({k: v.shape for k, v in first.items()})
    planted = {g: rng.permutation(n) for g, n in sizes.items()}
    result = gs.match([gs.permute(first, spec, planted), first], spec, method="gamf", seed=0)
    for g in spec.groups:
        np.testing.assert_array_equal(np.asarray(result.perms[g][1]), planted[g])
    with pytest.raises(ValueError, match="mixes kept and dropped"):  # a Split axis of two groups
        _real.only_groups(full, lambda g: g.endswith(".heads"))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_real_case_runs_on_the_backend_asked_for(backend: str) -> None:
    """The real-network section gives the arrays to match() in the backend's library; a planted
    copy is put back in full either way (no device memory reported on the host)."""
    pytest.importorskip("transformers")
    row = _real.run_case({"arch": "vit_s16_ffn", "kind": "planted", "method": "gamf", "quick": True, "backend": backend})
    assert row["status"] == "ok" and row["backend"] == backend
    assert row["recovered"] == 1.0
    assert "device_peak_mib" not in row


def test_efficientnet_b0_is_b0_itself() -> None:
    """B0's width (1.0) and 1,280-wide head, not HF's default config (B7's width 2.0 and 2,560-wide
    head): 5.3 M parameters with 1,000 classes."""
    pytest.importorskip("transformers")
    a, _ = _real.build("efficientnet_b0", 0)
    assert a.config.width_coefficient == 1.0 and a.config.hidden_dim == 1280
    assert 5.2e6 < sum(p.numel() for p in a.parameters()) < 5.4e6


def test_torchvision_architectures_need_torchvision_and_are_listed() -> None:
    """``tv_<name>`` builds torchvision's own definition where torchvision imports (``nox -s
    torchvision``); every one is offered to ``--archs``."""
    assert all(f"tv_{name}" in _real.ARCHS for name in _real.TORCHVISION)
    tv = pytest.importorskip("torchvision")
    a, x = _real.build("tv_squeezenet1_0", 0)
    assert isinstance(a, tv.models.SqueezeNet) and not a.training and tuple(x.shape) == (2, 3, 64, 64)
