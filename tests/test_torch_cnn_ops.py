"""CNN ops that leave channel units in place (stochastic depth, spatial pad, layer scales) and
concatenations fed into layers whose outputs are concatenated again (SqueezeNet's Fire modules)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import fx, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from gamfsolve import Concat, FusionError  # noqa: E402

from .cnn_helpers import conv_share, recovers_permuted_copy  # noqa: E402

METHODS = ["weight_matching", "gamf"]


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth: ``x * noise`` in training mode, the identity in eval."""
    if not training or p == 0.0:
        return x
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    return x * noise.div_(1.0 - p)


fx.wrap("stochastic_depth")  # as torchvision does: a leaf call in fx graphs


class StochasticDepth(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, "row", self.training)


class Fire(nn.Module):
    """SqueezeNet's Fire module: squeeze 1x1 conv, then 1x1 and 3x3 expand convs concatenated."""

    def __init__(self, c_in: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class FireNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.fire1 = Fire(8, 4, 6, 5)
        self.fire2 = Fire(11, 4, 5, 6)
        self.fire3 = Fire(11, 3, 4, 4)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fire3(self.fire2(self.fire1(F.relu(self.stem(x)))))
        return F.adaptive_avg_pool2d(self.head(x), 1).flatten(1)


class Residual(nn.Module):
    """Residual stream ``x + scale(conv(relu(conv(x))))`` with a choice of per-channel scale and an optional op."""

    def __init__(self, c: int, scale: str, op: str = "none") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.conv2 = nn.Conv2d(2 * c, c, 1)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.scale, self.op = scale, op
        self.drop = StochasticDepth(0.2)
        self.head = nn.Linear(c, 4)

    def _scaled(self, y: torch.Tensor) -> torch.Tensor:
        if self.scale == "reshape":  # timm ConvNeXt
            return y.mul(self.gamma.reshape(1, -1, 1, 1))
        if self.scale == "index":  # channels-first LayerNorm affine of HF/timm
            return self.gamma[:, None, None] * y
        if self.scale == "unsqueeze":
            return y * self.gamma.unsqueeze(-1).unsqueeze(-1).to(y.dtype)
        if self.scale == "flip":  # not a view: the parameter's order is reversed
            return y * self.gamma.flip(0).reshape(1, -1, 1, 1)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = self._scaled(self.conv2(F.relu(self.conv1(h))))
        if self.op == "stochastic_depth":
            y = self.drop(y)
        elif self.op == "pad":
            y = F.pad(y, (1, 1, 1, 1))[:, :, 1:-1, 1:-1]
        h = h + y
        return self.head(h.mean((2, 3)))


def _model(model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    for p in model.parameters():
        if p.ndim > 1:
            nn.init.normal_(p, 0, 0.5)
    return model.eval(), torch.randn(2, 3, 12, 12)


@pytest.mark.parametrize("method", METHODS)
def test_fire_modules_in_a_row_fuse_with_a_permuted_copy(method: str) -> None:
    model, x = _model(FireNet())
    spec = gt.spec_from_module(model, x)
    assert spec.axes["fire2.squeeze.weight"][1] == Concat("fire1.expand1x1", "fire1.expand3x3")
    assert spec.axes["fire3.squeeze.weight"][1] == Concat("fire2.expand1x1", "fire2.expand3x3")
    assert conv_share(model, spec) == (54 - 5, 54)  # all but the head, whose outputs are the model's
    assert recovers_permuted_copy(model, x, spec, method)


@pytest.mark.parametrize("front", ["fx", "export"])
@pytest.mark.parametrize("scale", ["reshape", "index", "unsqueeze"])
def test_layer_scale_parameter_joins_the_stream(scale: str, front: str) -> None:
    model, x = _model(Residual(6, scale))
    source = torch.export.export(model, (x,)) if front == "export" else model
    spec = gt.spec_from_module(source, x)
    stream = spec.axes["stem.weight"][0]
    assert stream is not None and spec.axes["gamma"] == (stream,)
    assert spec.axes["conv2.weight"][0] == stream
    assert recovers_permuted_copy(model, x, spec, "weight_matching")


def test_reordered_parameter_is_not_a_view_and_stays_fixed() -> None:
    model, x = _model(Residual(6, "flip"))
    with pytest.warns(UserWarning, match="cannot be permuted"):  # most units stay fixed: said so
        spec = gt.spec_from_module(model, x)
    assert spec.axes["gamma"] == (None,)
    assert spec.axes["stem.weight"][0] is None
    with pytest.raises(FusionError, match="mul"):
        gt.spec_from_module(model, x, strict=True)


@pytest.mark.parametrize("front", ["fx", "export"])
def test_stochastic_depth_passes_the_stream(front: str) -> None:
    model, x = _model(Residual(6, "reshape", "stochastic_depth"))
    source = torch.export.export(model, (x,)) if front == "export" else model
    spec = gt.spec_from_module(source, x, strict=True)
    assert spec.axes["stem.weight"][0] is not None
    assert conv_share(model, spec) == (6 + 12 + 6, 6 + 12 + 6)
    for method in METHODS:
        assert recovers_permuted_copy(model, x, spec, method)


def test_stochastic_depth_in_training_mode_export_passes_the_stream() -> None:
    model, x = _model(Residual(6, "reshape", "stochastic_depth"))
    program = torch.export.export(model.train(), (x,))
    assert any("bernoulli" in str(n.target) for n in program.graph.nodes)  # the noise is in the graph
    spec = gt.spec_from_module(program, x, check=False, strict=True)
    assert spec.axes["gamma"] == (spec.axes["stem.weight"][0],) != (None,)


@pytest.mark.parametrize("front", ["fx", "export"])
def test_spatial_pad_passes_the_stream(front: str) -> None:
    model, x = _model(Residual(6, "none", "pad"))
    source = torch.export.export(model, (x,)) if front == "export" else model
    spec = gt.spec_from_module(source, x, strict=True)
    assert conv_share(model, spec) == (24, 24)


class ChannelPad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.pad(self.conv1(x), (0, 0, 0, 0, 1, 1))).mean((2, 3))


def test_pad_on_the_channel_axis_stays_fixed_and_is_named() -> None:
    model, x = _model(ChannelPad())
    with pytest.warns(UserWarning, match="cannot be permuted"):  # most units stay fixed: said so
        spec = gt.spec_from_module(model, x)
    assert spec.axes["conv1.weight"][0] is None
    with pytest.raises(FusionError, match=r"pad.*pads the axis that carries the units"):
        gt.spec_from_module(model, x, strict=True)


class ViewUsedTwice(nn.Module):
    """A reshaped parameter that also reaches an op the adapter cannot read: it must stay fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gamma.reshape(1, -1, 1, 1)
        y = self.head(self.conv(x) * g)
        return y.mean((2, 3)) + torch.cumsum(g, 1).sum()


def test_view_reaching_an_unknown_op_fixes_its_parameter() -> None:
    model, x = _model(ViewUsedTwice())
    with pytest.warns(UserWarning, match="cannot be permuted"):  # most units stay fixed: said so
        spec = gt.spec_from_module(model, x)
    assert spec.axes["gamma"] == (None,)
    assert spec.axes["conv.weight"][0] is None


class IntegerBufferView(nn.Module):
    """A view of a buffer that is not a floating array (not among the fused arrays) is no parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("steps", torch.arange(4))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.steps.reshape(1, -1, 1, 1).to(x.dtype).contiguous()
        return self.head(self.conv(x) + offset + self.steps[:, None, None]).mean((2, 3))


def test_integer_buffer_added_to_a_feature_map_keeps_its_units_fixed() -> None:
    model, x = _model(IntegerBufferView())
    with pytest.warns(UserWarning, match="cannot be permuted"):  # most units stay fixed: said so
        spec = gt.spec_from_module(model, x)
    assert spec.axes["conv.weight"][0] is None
