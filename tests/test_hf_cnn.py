"""Hugging Face ``transformers`` CNN classes from small configs (random init, nothing downloaded):
the spec is derived and passes the check, a model fused with a permuted copy of itself comes
back, and almost every convolution output channel is permuted."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import nn  # noqa: E402

from .cnn_helpers import conv_share, recovers_permuted_copy  # noqa: E402


def _resnet(layer_type: str, head: bool) -> nn.Module:
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16] if layer_type == "basic" else [16, 32],
                                       depths=[2, 1], layer_type=layer_type, num_labels=5)
    return (transformers.ResNetForImageClassification if head else transformers.ResNetModel)(config)


def _convnext() -> nn.Module:
    config = transformers.ConvNextConfig(patch_size=2, hidden_sizes=[8, 16], depths=[2, 1], num_stages=2,
                                         num_labels=5, layer_scale_init_value=0.5, drop_path_rate=0.1)
    return transformers.ConvNextForImageClassification(config)


def _mobilenet_v2() -> nn.Module:
    config = transformers.MobileNetV2Config(depth_multiplier=0.1, min_depth=4, finegrained_output=False,
                                            image_size=32, num_labels=5)
    return transformers.MobileNetV2ForImageClassification(config)


MODELS = {
    "resnet-basic": lambda: _resnet("basic", head=True),
    "resnet-bottleneck": lambda: _resnet("bottleneck", head=True),
    "resnet-basic-nohead": lambda: _resnet("basic", head=False),
    "convnext": _convnext,
    "mobilenet_v2": _mobilenet_v2,
}
# share of convolution output channels permuted; a model without head keeps its last stage fixed
MIN_SHARE = {"resnet-basic-nohead": 0.5}


def _make(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    with torch.no_grad():  # non-trivial norm statistics and affine vectors
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model, torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def derived() -> dict:
    return {}


def _spec(name: str, cache: dict) -> tuple[nn.Module, torch.Tensor, object]:
    if name not in cache:
        model, x = _make(name)
        cache[name] = (model, x, gt.spec_from_module(model, x))  # checked by random permutation
    return cache[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_spec_passes_check_and_permutes_the_channels(name: str, derived: dict) -> None:
    model, _, spec = _spec(name, derived)
    permuted, total = conv_share(model, spec)
    assert permuted >= MIN_SHARE.get(name, 0.95) * total, f"{permuted} of {total} channels permuted"


# gamf on MobileNetV2's 52 convolutions takes 11 s on 2 shared cores
SLOW = {("mobilenet_v2", "gamf")}
FUSE_CASES = [pytest.param(n, m, marks=[pytest.mark.slow] if (n, m) in SLOW else [], id=f"{n}-{m}")
              for n in MODELS for m in ("weight_matching", "gamf")]


@pytest.mark.parametrize(("name", "method"), FUSE_CASES)
def test_fuse_with_permuted_copy_gives_the_model_back(name: str, method: str, derived: dict) -> None:
    model, x, spec = _spec(name, derived)
    assert recovers_permuted_copy(model, x, spec, method)


def test_convnext_layer_scale_joins_the_residual_stream(derived: dict) -> None:
    _, _, spec = _spec("convnext", derived)
    layer = "convnext.encoder.stages.0.layers.1"
    stream = spec.axes[f"{layer}.pwconv2.weight"][0]
    assert stream is not None
    assert spec.axes[f"{layer}.layer_scale_parameter"] == (stream,)
    assert spec.axes["convnext.embeddings.patch_embeddings.weight"][0] == stream
