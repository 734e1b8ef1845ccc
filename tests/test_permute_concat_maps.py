"""apply_maps on a concatenated axis when only some of its groups have a map, or maps of mixed kinds."""

from __future__ import annotations

import numpy as np
import pytest

import gamfsolve as g
from gamfsolve.spec._permute import apply_maps

SPEC = g.PermutationSpec({"a": ("g",), "b": ("h",), "cat": (g.Concat("g", 1, "h"),)})
PARAMS = {"a": np.zeros(2), "b": np.zeros(3), "cat": np.arange(6.0)}


def test_index_vector_for_one_group_of_a_concat_axis() -> None:
    out = apply_maps(PARAMS["cat"], SPEC.axes["cat"], {"h": np.array([2, 1, 0])}, np)
    np.testing.assert_array_equal(out, [0, 1, 2, 5, 4, 3])
    out = apply_maps(PARAMS["cat"], SPEC.axes["cat"], {"g": np.array([1, 0])}, np)
    np.testing.assert_array_equal(out, [1, 0, 2, 3, 4, 5])


def test_index_vector_beside_a_soft_plan_on_one_axis() -> None:
    plan = np.full((3, 3), 1 / 3)
    out = apply_maps(PARAMS["cat"], SPEC.axes["cat"], {"g": np.array([1, 0]), "h": plan}, np)
    np.testing.assert_allclose(out, [1, 0, 2, 4, 4, 4])


def test_permute_with_some_groups_of_a_concat_axis() -> None:
    out = g.permute(PARAMS, SPEC, {"h": np.array([1, 2, 0])})
    np.testing.assert_array_equal(out["cat"], [0, 1, 2, 4, 5, 3])


def test_permute_into_a_universe_with_some_groups_of_a_concat_axis() -> None:
    out = g.permute(PARAMS, SPEC, {"h": np.array([3, 0, 1, 2])})  # one empty slot first
    np.testing.assert_array_equal(out["cat"], [0, 1, 2, 0, 3, 4, 5])
    assert out["b"].shape == (4,)


def test_float_index_vector_is_refused_naming_the_group() -> None:
    with pytest.raises(g.FusionError, match=r"perms\['h'\].*integer"):
        g.permute(PARAMS, SPEC, {"h": np.array([2.0, 1.0, 0.0])})


def test_plans_that_do_not_fit_the_axis_are_refused_naming_the_groups() -> None:
    with pytest.raises(g.FusionError, match=r"'g': 2, 'h': 2.*length 6"):
        apply_maps(PARAMS["cat"], SPEC.axes["cat"], {"g": np.eye(2), "h": np.eye(2)}, np)
