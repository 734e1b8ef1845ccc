"""Spec derivation on hand-made graphs: what is permuted, what is fixed, what is refused."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from gamfsolve import Blocks, Concat, FusionError, FusionTypeError, PermutationSpec  # noqa: E402

from .torch_helpers import make, outputs_close, permuted_copy  # noqa: E402


class ConcatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(9 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x)), x], dim=1)[:, :9]
        return self.fc(F.adaptive_avg_pool2d(y, 4).flatten(1))


class ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1))


class NormNet(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.gn = nn.GroupNorm(groups, 8)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.dw(F.relu(self.gn(self.conv(x)))))).mean((2, 3))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.mid(self.emb(idx))) + self.emb(idx))


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = torch.cumsum(self.fc2(h), dim=1)  # order-dependent: must be fixed
        return self.fc3(h)


class ShapeBranch(nn.Module):
    """fx cannot trace a branch on a shape; torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        if h.shape[1] > 4:
            h = h * 2
        return self.fc2(h)


class DataBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_concat_and_slice() -> None:
    model = ConcatNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"100% of the layers' units .* selects part of the axis"):
        spec = gt.spec_from_module(model, x)
    # the slice keeps only part of the concatenated axis: everything before it stays fixed
    assert spec.groups == ()
    assert spec.axes["fc.weight"] == (None, None)


def test_concat_without_slice_gives_concat_axis() -> None:
    class Net(ConcatNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
            return self.fc(F.adaptive_avg_pool2d(y, 4).flatten(1))

    model = Net().eval()
    spec = gt.spec_from_module(model, torch.randn(2, 3, 8, 8))
    assert spec.axes["fc.weight"][1] == Concat(Blocks("a", inner=16), Blocks("b", inner=16))


def test_channels_last_flatten() -> None:
    spec = gt.spec_from_module(ChannelsLast().eval(), torch.randn(2, 2, 4, 4))
    assert spec.axes["fc.weight"][1] == Blocks("conv", outer=16)


@pytest.mark.parametrize(("groups", "permuted"), [(1, True), (8, True), (2, False)])
def test_group_norm(groups: int, permuted: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = gt.spec_from_module(NormNet(groups).eval(), torch.randn(2, 3, 8, 8))
    assert (spec.axes["gn.weight"][0] is not None) is permuted
    assert any("groups of channels" in str(w.message) for w in caught) is not permuted
    # the depthwise conv follows its input's group
    assert spec.axes["dw.weight"][0] == spec.axes["conv.weight"][0]


def test_tied_weights_share_their_group() -> None:
    model = Tied().eval()
    idx = torch.randint(0, 10, (3, 5))
    spec = gt.spec_from_module(model, idx)
    assert spec.axes["emb.weight"] == (None, "emb")
    assert spec.axes["out.weight"] == (None, "emb")
    other = permuted_copy(model, spec)
    assert outputs_close(other, model, idx)


def test_unknown_function_fixes_its_groups() -> None:
    model = Unknown().eval()
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="cumsum"):
        spec = gt.spec_from_module(model, x)
    assert spec.axes["fc2.weight"] == (None, "fc1")
    assert spec.axes["fc3.weight"] == (None, None)
    with pytest.raises(FusionError, match="cumsum"):
        gt.spec_from_module(model, x, strict=True)


def test_export_fallback_when_fx_fails() -> None:
    model = ShapeBranch().eval()
    spec = gt.spec_from_module(model, torch.randn(3, 4))
    assert spec.axes["fc2.weight"] == (None, "fc1")


def test_untraceable_module_is_refused() -> None:
    with pytest.raises(FusionError, match=r"DataBranch.*by hand"):
        gt.spec_from_module(DataBranch(), torch.randn(3, 4))


def test_check_spec_names_the_wrong_group() -> None:
    model, x = make("mlp", batch_norm=False)
    good = gt.spec_from_module(model, x)
    axes = dict(good.axes)
    axes["layers.2.weight"] = (None, None)  # the consumer of group layers.1 forgets it
    axes["layers.1.bias"] = ("layers.1",)
    with pytest.raises(FusionError, match=r"\['layers.1'\]"):
        gt.check_spec(model, PermutationSpec(axes), x)


def test_module_is_not_modified() -> None:
    model, x = make("resnet20")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gt.spec_from_module(model, x)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_example_inputs() -> None:
    model, _ = make("mlp")
    with pytest.raises(FusionTypeError, match="example_inputs"):
        gt.spec_from_module(model, None)
    with pytest.raises(FusionTypeError, match=r"torch.nn.Module"):
        gt.spec_from_module("not a module", torch.randn(1, 784))


def test_module_and_inputs_on_different_devices() -> None:
    model = nn.Linear(3, 2, device="meta")
    with pytest.raises(FusionError, match=r"meta.*cpu"):
        gt.spec_from_module(model, torch.randn(2, 3))
