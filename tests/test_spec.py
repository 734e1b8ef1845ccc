"""PermutationSpec: what it expresses and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import gamfsolve as g
from gamfsolve import Blocks, Concat, FusionError, FusionTypeError, PermutationSpec


def test_groups_in_order_and_users():
    spec = g.mlp_spec(3)
    assert spec.groups == ("h0", "h1")
    assert spec.users("h0") == (("layers.0.weight", 0), ("layers.0.bias", 0), ("layers.1.weight", 1))
    assert set(spec.neighbours("h0")) == {"h1"}


def test_layouts_give_mirrored_specs():
    torch_like = g.mlp_spec(2, layout="out_in")
    keras_like = g.mlp_spec(2, layout="in_out")
    assert torch_like.axes["layers.0.weight"] == ("h0", None)
    assert keras_like.axes["layers.0.weight"] == (None, "h0")


def test_blocks_and_concat_sizes():
    spec = PermutationSpec({
        "a.weight": ("c", None, None, None), "a.bias": ("c",),
        "b.weight": ("d", None), "b.bias": ("d",),
        "fc.weight": (None, Concat(Blocks("c", inner=4), "d", 2)),
        "chl.weight": (None, Blocks("c", outer=4)),
    })
    sizes = spec.group_sizes({
        "a.weight": (3, 1, 3, 3), "a.bias": (3,), "b.weight": (5, 7), "b.bias": (5,),
        "fc.weight": (2, 3 * 4 + 5 + 2), "chl.weight": (2, 12),
    })
    assert sizes == {"c": 3, "d": 5}


@pytest.mark.parametrize(
    ("axes", "shapes", "match"),
    [
        ({"x": ("h", None), "y": (None, "h")}, {"x": (3, 2), "y": (2, 3), "z": (1,)}, "does not cover"),
        ({"x": ("h", None), "y": (None, "h")}, {"x": (3, 2)}, "does not have"),
        ({"x": ("h", None), "y": (None, "h")}, {"x": (3, 2), "y": (2, 3, 1)}, "has 2 axes"),
        ({"x": ("h", None), "y": (None, "h")}, {"x": (3, 2), "y": (2, 4)}, "3 units"),
        ({"x": (Blocks("h", inner=4), None), "y": (None, "h")}, {"x": (6, 2), "y": (2, 3)}, "multiple"),
        ({"x": ("h",), "y": ("h",), "z": (Concat("h", 2),)}, {"x": (3,), "y": (3,), "z": (4,)}, "add up"),
    ],
)
def test_group_sizes_refuses(axes, shapes, match):
    with pytest.raises(FusionError, match=match):
        PermutationSpec(axes).group_sizes(shapes)


def test_group_that_nothing_produces_or_consumes():
    with pytest.raises(FusionError, match=r"appears only on axis 1 of 'fc2\.weight'"):
        PermutationSpec({"fc1.weight": ("h1", None), "fc1.bias": ("h1",), "fc2.weight": (None, "h_1")})


@pytest.mark.parametrize("bad", [3, "", ["h"], {"h": 1}])
def test_bad_entries_are_type_errors(bad):
    with pytest.raises(FusionTypeError):
        PermutationSpec({"x": (bad,), "y": ("h",)})


def test_spec_is_read_only_and_comparable():
    spec = g.mlp_spec(2)
    with pytest.raises(TypeError):
        spec.axes["new"] = (None,)  # type: ignore[index]
    assert spec == g.mlp_spec(2) and hash(spec) == hash(g.mlp_spec(2))
    assert "layers.0.weight" in repr(spec)


def test_make_spec_rejects_duplicates():
    with pytest.raises(FusionError, match="described twice"):
        g.make_spec(g.dense("fc", None, "h"), g.dense("fc", "h", None))


def test_builders_read_like_the_network():
    spec = g.make_spec(
        g.conv("conv", None, "c"), g.norm("bn", "c"),
        g.dense("fc", Blocks("c", inner=16), None),
    )
    assert spec.axes["conv.weight"] == ("c", None, None, None)
    assert spec.axes["bn.running_var"] == ("c",)
    shapes = {k: (8,) for k in spec.axes if k.startswith("bn") or k == "conv.bias"}
    shapes |= {"conv.weight": (8, 3, 3, 3), "fc.weight": (10, 128), "fc.bias": (10,)}
    assert spec.group_sizes(shapes) == {"c": 8}
    assert np.prod(shapes["fc.weight"]) == 1280
