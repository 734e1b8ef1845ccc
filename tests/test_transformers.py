"""Transformers through the PyTorch adapter: heads, within-head dimensions, residual stream."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from gamfsolve import Split  # noqa: E402

from .torch_helpers import permuted_copy  # noqa: E402
from .transformer_helpers import HF, linear_share, make_hf  # noqa: E402

torch.set_num_threads(1)


def _logits(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits  # type: ignore[attr-defined]


def _max_param_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


@pytest.fixture(scope="module", params=sorted(HF))
def hf(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor, object]:
    name = request.param
    model, x = make_hf(name)
    return name, model, x, gt.spec_from_module(model, x)  # the function check runs here (1e-5)


def test_hf_linear_units_are_permuted(hf: tuple) -> None:
    name, model, _, spec = hf
    share = linear_share(model, spec, HF[name][2])
    print(f"{name}: {100 * share:.1f}% of the Linear output units permuted (logits layer left out)")
    assert share >= 0.95


def test_hf_heads_are_split_entries(hf: tuple) -> None:
    _, _, _, spec = hf
    splits = [e for entries in spec.axes.values() for e in entries if isinstance(e, Split)]
    assert splits and all(e.groups[-1] is not None or e.groups[0] is not None for e in splits)


@pytest.mark.parametrize("method", ["gamf", "weight_matching"])
def test_hf_permuted_copy_is_recovered(hf: tuple, method: str) -> None:
    _, model, x, spec = hf
    copy = permuted_copy(model, spec, seed=3)
    assert _max_param_diff(copy, model) > 1e-3  # the copy really is shuffled
    with torch.no_grad():
        assert torch.allclose(_logits(copy(x)), _logits(model(x)), atol=1e-5)
    fused = gt.fuse_modules([model, copy], x, spec=spec, method=method, seed=0)
    assert _max_param_diff(fused, model) <= 1e-5


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_hf_eager_attention(name: str) -> None:
    """The matmul / softmax form of attention (grouped-query and rotary for LLaMA)."""
    model, x = make_hf(name, eager=True)
    program = torch.export.export(model, (x,), strict=False)
    assert not any("scaled_dot_product" in str(n.target) for n in program.graph.nodes)
    spec = gt.spec_from_module(program, x)
    assert linear_share(model, spec, HF[name][2]) >= 0.95


class _SDPA(nn.Module):
    """Separate q/k/v projections, ``F.scaled_dot_product_attention``, a residual and LayerNorm."""

    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.inp, self.q, self.k, self.v, self.o = (nn.Linear(3, d), *(nn.Linear(d, d) for _ in range(4)))
        self.norm, self.out = nn.LayerNorm(d), nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        b, t, d = h.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True)
        return self.out(self.norm(h + self.o(a.transpose(1, 2).reshape(b, t, d))))


class _Torch(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.inp, self.out = kind, nn.Linear(3, 16), nn.Linear(16, 2)
        if kind == "mha":
            self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        else:
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=kind == "prenorm")
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if self.kind == "mha":
            return self.out(h + self.att(h, h, h, need_weights=False)[0])
        return self.out(self.enc(h))


@pytest.mark.parametrize("kind", ["sdpa", "mha", "encoder", "prenorm"])
def test_torch_attention_heads(kind: str) -> None:
    torch.manual_seed(0)
    model = (_SDPA() if kind == "sdpa" else _Torch(kind)).eval()
    x = torch.randn(2, 5, 3)
    spec = gt.spec_from_module(model, x, strict=True)  # no op left fixed; the function check passes
    q = "q.weight" if kind == "sdpa" else ("att.in_proj_weight" if kind == "mha" else
                                           "enc.layers.1.self_attn.in_proj_weight")
    entry = spec.axes[q][0]
    assert isinstance(entry, Split) and entry.shape[-2:] == (4, -1) and None not in entry.groups[-2:]
    fused = gt.fuse_modules([model, permuted_copy(model, spec, seed=2)], x, spec=spec, method="gamf", seed=0)
    assert _max_param_diff(fused, model) <= 1e-5


def test_decoder_cross_attention_is_fixed_and_warned() -> None:
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.out = nn.Linear(3, 16), nn.Linear(16, 2)
            self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.out(self.dec(h, h))

    with pytest.warns(UserWarning, match=r"of the layers' units .*multihead_attn"):
        spec = gt.spec_from_module(Decoder().eval(), torch.randn(2, 5, 3))
    # the self-attention's heads still move; the cross-attention (a sliced in-projection) does not
    assert isinstance(spec.axes["dec.layers.0.self_attn.in_proj_weight"][0], Split)
    assert spec.axes["dec.layers.0.multihead_attn.in_proj_weight"] == (None, None)


def test_rotary_keeps_query_key_dimensions_fixed() -> None:
    model, x = make_hf("llama")
    spec = gt.spec_from_module(model, x)
    q = spec.axes["model.layers.0.self_attn.q_proj.weight"][0]
    v = spec.axes["model.layers.0.self_attn.v_proj.weight"][0]
    o = spec.axes["model.layers.0.self_attn.o_proj.weight"][1]
    # grouped-query attention: 2 key/value heads, each with 2 query heads moving with it
    assert isinstance(q, Split) and q.shape == (2, 2, 4) and q.groups[1:] == (None, None)
    assert isinstance(v, Split) and v.groups[0] == q.groups[0] and v.groups[1] is not None
    assert o == Split((q.groups[0], None, v.groups[1]), (2, 2, -1))


def test_gpt2_tied_embeddings_stay_tied() -> None:
    model, x = make_hf("gpt2")
    spec = gt.spec_from_module(model, x)
    stream = spec.axes["transformer.wte.weight"][1]
    assert stream is not None
    assert spec.axes["transformer.wpe.weight"] == (None, stream)
    assert spec.axes["transformer.ln_f.weight"] == (stream,)
    assert spec.axes["transformer.h.0.attn.c_attn.weight"][0] == stream  # Conv1D: (in, out)


def test_different_head_widths_fuse_into_the_wider_model() -> None:
    """Four heads of 4 and of 6 dimensions: the fusion has the wider model's shapes."""
    torch.manual_seed(0)
    narrow, wide = _SDPA(d=16).eval(), _SDPA(d=24).eval()
    x = torch.randn(2, 5, 3)
    fused = gt.fuse_modules([narrow, wide], x, method="gamf", seed=0)
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in wide.state_dict().items()}
    assert torch.isfinite(fused(x)).all()
