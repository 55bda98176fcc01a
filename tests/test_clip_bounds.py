"""`Clip` with one-sided and per-element (array) bounds.

Expected values come from NumPy (``np.clip`` in float64, ``np.nextafter`` for the inward
rounding of narrow dtypes), never from the code under test.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxcons
from jaxcons import constraints
from jaxcons.constraints import Clip, NonNeg


def normal(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (0.0, None),
        (None, 0.5),
        (-1.0, 1.0),
        (np.linspace(-1.0, 0.0, 5), None),  # One lower bound per column of (4, 5).
        (None, [[0.5], [1.0], [0.0], [2.0]]),  # One upper bound per row.
        (np.full((4, 5), -0.25), np.linspace(0.0, 1.0, 20).reshape(4, 5)),  # Per element.
        ([-0.5, -0.25, 0.0, 0.25, 0.5], 1.0),
    ],
    ids=["lower", "upper", "scalars", "column_lower", "row_upper", "full", "mixed"],
)
def test_values_match_numpy(lo, hi):
    w = normal((4, 5), scale=2.0)
    expected = np.clip(
        w.astype(np.float64),
        -np.inf if lo is None else np.asarray(lo, np.float64),
        np.inf if hi is None else np.asarray(hi, np.float64),
    )
    out = Clip(lo, hi)(jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=0, atol=1e-7)
    assert not np.array_equal(np.asarray(out), w)  # The bounds do act on this input.


def test_one_sided_lower_is_non_neg_bit_for_bit():
    w = jnp.asarray(normal((6, 3)))
    assert_bitwise(Clip(min_value=0.0)(w), NonNeg()(w))


def test_feasible_entries_come_back_bit_for_bit():
    w = normal((4, 3))
    lo, hi = w.min(axis=0) - 0.5, w.max(axis=0) + 0.5  # Every column strictly inside.
    assert_bitwise(Clip(lo, hi)(jnp.asarray(w)), w)


def test_python_scalar_input():
    assert float(Clip(max_value=1.0)(3.0)) == 1.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_array_bounds_round_inward_entry_by_entry(dtype):
    lo = np.array([-0.3, 0.1, -1.0])
    hi = np.array([0.7, 0.3, 1.0])
    w = jnp.asarray(np.array([[-5.0, -5.0, -5.0], [5.0, 5.0, 5.0]]), dtype)
    out = np.asarray(Clip(lo, hi)(w), np.float64)
    np_dtype = np.dtype(dtype)
    for j in range(3):
        low, high = out[0, j], out[1, j]
        assert lo[j] <= low and high <= hi[j]
        # The nearest representable values further out are outside the box: rounded inward
        # by at most one step, never further.
        below = float(np.nextafter(np.asarray(low, np_dtype), np.asarray(-np.inf, np_dtype)))
        above = float(np.nextafter(np.asarray(high, np_dtype), np.asarray(np.inf, np_dtype)))
        assert below < lo[j] and above > hi[j]


def test_elementwise_bounds_hold_the_validated_arrays():
    c = Clip([0, 1], None)
    lo, hi = c.elementwise_bounds
    assert hi is None
    assert isinstance(lo, np.ndarray) and lo.dtype == np.float64
    np.testing.assert_array_equal(lo, [0.0, 1.0])
    with pytest.raises(ValueError, match="read-only"):
        lo[0] = 5.0


# --------------------------------------------------------------------------------------------
# Config and serialization.


def test_get_config_holds_nested_lists_and_round_trips_through_json():
    c = Clip(np.array([[-1.0, 0.0], [0.5, -0.5]], np.float32), 2)
    config = c.get_config()
    assert config == {"min_value": [[-1.0, 0.0], [0.5, -0.5]], "max_value": 2}
    blob = json.loads(json.dumps(constraints.serialize(c)))
    back = constraints.deserialize(blob)
    assert back == c and hash(back) == hash(c)
    w = jnp.asarray(normal((2, 2), scale=3.0))
    assert_bitwise(back(w), c(w))
    # An equal list builds an equal constraint; a different one does not.
    assert Clip([[-1.0, 0.0], [0.5, -0.5]], 2) == c
    assert Clip([[-1.0, 0.0], [0.5, -0.25]], 2) != c


def test_one_sided_configs():
    assert Clip(max_value=1.0).get_config() == {"min_value": None, "max_value": 1.0}
    assert constraints.deserialize(constraints.serialize(Clip(min_value=0.5))) == Clip(0.5)
    assert repr(Clip(max_value=[1.0, 2.0])) == "Clip(min_value=None, max_value=[1.0, 2.0])"


# --------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_value": [0.0, float("nan")]}, r"min_value must be finite, got nan at index \(1,\)"),
        (
            {"max_value": [[1.0], [float("inf")]]},
            r"max_value must be finite, got inf at index \(1, 0\)",
        ),
        (
            {"min_value": [[0.0], [1.0, 2.0]]},
            r"min_value must be a real number or an array of real numbers, got the ragged",
        ),
        (
            {"max_value": ["a", "b"]},
            r"max_value must be a real number or an array of real numbers, got \['a', 'b'\] "
            r"\(dtype <U1\)",
        ),
        ({"max_value": [True, False]}, r"got \[True, False\] \(dtype bool\)"),
        ({"min_value": []}, r"min_value must not be empty, got \[\] of shape \(0,\)"),
        (
            {"min_value": [0.0, 2.0], "max_value": [1.0, 1.0]},
            r"Clip needs min_value <= max_value everywhere; at index \(1,\) min_value is 2.0 > "
            r"max_value 1.0",
        ),
        (
            {"min_value": [0.0, 0.0, 0.0], "max_value": [1.0, 1.0]},
            r"Clip min_value of shape \(3,\) and max_value of shape \(2,\) do not broadcast "
            r"together",
        ),
        (
            {"min_value": 0.5, "max_value": [1.0, 0.25]},
            r"at index \(1,\) min_value is 0.5 > max_value 0.25",
        ),
        (
            {"min_value": {"a": 1}},
            r"min_value must be a real number or an array of real numbers, got \{'a': 1\}",
        ),
    ],
)
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Clip(**kwargs)


def test_no_bound_at_all_is_a_type_error():
    with pytest.raises(
        TypeError, match="Clip needs at least one bound: min_value and max_value are both None"
    ):
        Clip()
    with pytest.raises(ValueError, match=r"The constraint identifier 'clip' needs arguments"):
        constraints.get("clip")


def test_traced_bounds_are_rejected():
    @jax.jit
    def build(b):
        return Clip(max_value=b)(jnp.ones(2))

    with pytest.raises(
        ValueError,
        match="max_value must be a concrete number when the object is built, got a traced value",
    ):
        build(jnp.asarray(1.0))


def test_bound_that_does_not_broadcast_to_the_parameter_names_path_and_shapes():
    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
    c = Clip(max_value=[1.0, 2.0, 3.0])
    out = jaxcons.apply_constraints(params, {"dense/*": c})  # Broadcasts to both leaves.
    np.testing.assert_array_equal(out["dense"]["bias"], [1.0, 1.0, 1.0])
    wide = Clip(min_value=np.zeros((4, 1)))
    with pytest.raises(
        ValueError,
        match=r"Clip min_value of shape \(4, 1\) does not broadcast to "
        r"parameter 'dense/bias' of shape \(3,\)",
    ):
        jaxcons.constrain({"dense/*": wide}).init(params)
    with pytest.raises(ValueError, match=r"parameter 'dense/bias' of shape \(3,\)"):
        jaxcons.apply_constraints(params, {"dense/*": wide})
    with pytest.raises(
        ValueError,
        match=r"Clip max_value of shape \(2,\) does not broadcast to "
        r"parameter '<array>' of shape \(4, 3\)",
    ):
        Clip(max_value=[1.0, 2.0])(jnp.ones((4, 3)))


# --------------------------------------------------------------------------------------------
# Exact feasibility through jaxcons.constrain.


def test_adversarial_rounding_with_array_bounds():
    # 1.0 - (-16777218) rounds in float32 so that the naive p + (P(x) - p) lands at 2.0.
    p = jnp.array([-16777218.0, 16777218.0], jnp.float32)
    c = Clip([-1e8, -1.0], [1.0, 1e8])
    params = {"w": p}
    tx = jaxcons.constrain({"w": c})
    updates, _ = tx.update({"w": jnp.array([1e9, -1e9], jnp.float32)}, tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, updates)["w"], np.float64)
    assert -1e8 <= new[0] <= 1.0
    assert -1.0 <= new[1] <= 1e8


def test_one_sided_upper_bound_through_constrain():
    params = {"w": jnp.array([[0.0, 0.5], [0.25, -3.0]], jnp.float32)}
    c = Clip(max_value=[0.3, 0.1])
    tx = optax.chain(optax.sgd(1.0), jaxcons.constrain({"w": c}))
    updates, _ = tx.update({"w": -jnp.ones((2, 2))}, tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, updates)["w"], np.float64)
    bound = np.asarray([0.3, 0.1], np.float32)  # float32 rounds the bounds to nearest.
    expected = np.minimum(np.array([[1.0, 1.5], [1.25, -2.0]], np.float32), bound)
    assert np.all(new <= bound)
    # p + (P(x) - p) is P(x) up to one rounding (0.5 + (0.1 - 0.5) lands one ulp below 0.1).
    np.testing.assert_allclose(new, expected, rtol=1.2e-7, atol=0)


_F16 = st.floats(-4.0, 4.0, width=16)


def _holds_a_bf16_value(lo, hi):
    """Whether [lo, hi] holds a bfloat16 value (ml_dtypes rounding, float64 comparisons)."""
    first = np.float64(ml_dtypes.bfloat16(lo))
    if first < lo:
        first = np.float64(np.nextafter(ml_dtypes.bfloat16(lo), ml_dtypes.bfloat16(np.inf)))
    return first <= hi


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(_F16, _F16, st.floats(-1e4, 1e4, width=32)), min_size=3, max_size=3),
    st.integers(0, 2),
)
# The example that reached CI by chance (2026-12-06): a = b makes the box [2.4396875,
# 2.4496875], narrower than one bf16 step there and holding no bf16 value.
@example(rows=[(2.4296875, 2.4296875, 0.0), (0.0, 1.0, 1.0), (-1.0, 0.0, -1.0)], sided=0)
def test_bf16_params_with_float32_updates_stay_in_array_boxes(rows, sided):
    # Bounds: one per column, as floats that bf16 usually cannot represent (rounded inward).
    lows = np.array([min(a, b) for a, b, _ in rows]) + 0.01
    highs = np.array([max(a, b) for a, b, _ in rows]) + 0.02
    lo, hi = [(lows, highs), (lows, None), (None, highs)][sided]
    c = Clip(lo, hi)
    start = np.array([[a, b, u] for a, b, u in rows], np.float32).T[:2]  # (2, 3)
    if lo is not None and hi is not None and not all(map(_holds_a_bf16_value, lo, hi)):
        # No bf16 value lies in some box: no projection exists, and saying so is the contract.
        with pytest.raises(ValueError, match=r"holds no bfloat16 value"):
            c(jnp.asarray(start, jnp.bfloat16))
        params = {"w": jnp.zeros((2, 3), jnp.bfloat16)}
        tx = jaxcons.constrain({"w": c})
        with pytest.raises(ValueError, match=r"so parameter 'w' cannot be projected onto it"):
            tx.update({"w": jnp.zeros((2, 3))}, tx.init(params), params)
        return
    params = {"w": c(jnp.asarray(start, jnp.bfloat16))}  # Start feasible.
    step = np.broadcast_to(np.array([u for _, _, u in rows], np.float32), (2, 3))
    tx = jaxcons.constrain({"w": c})
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = tx.update({"w": jnp.asarray(step)}, tx.init(params), params)
        new = np.asarray(optax.apply_updates(params, updates)["w"], np.float64)
    assert np.asarray(params["w"]).dtype == ml_dtypes.bfloat16
    if lo is not None:
        assert np.all(new >= lo)
    if hi is not None:
        assert np.all(new <= hi)


def test_a_box_that_holds_no_value_of_the_dtype_names_the_element_bounds_and_dtype():
    c = Clip([0.0, 2.4396875], [1.0, 2.4496875])
    with pytest.raises(
        ValueError,
        match=r"The box \[2.4396875, 2.4496875\] of element \(1,\) of the bounds holds no "
        r"bfloat16 value \(it lies between the consecutive bfloat16 values 2.4375 and "
        r"2.453125\), so the array cannot be projected onto it: widen the box to hold a "
        r"bfloat16 value, or use a wider dtype\.",
    ):
        c(jnp.ones((2, 2), jnp.bfloat16))
    # float32 has values there: the same box is fine.
    assert float(c(jnp.ones((2, 2), jnp.float32))[0, 1]) >= 2.4396875


def test_a_box_that_holds_no_value_names_the_parameter_through_constrain():
    c = Clip([0.0, 2.4396875], [1.0, 2.4496875])
    params = {"layer": {"w": jnp.ones((2, 2), jnp.bfloat16)}}
    tx = jaxcons.constrain({"**/w": c})
    with pytest.raises(ValueError, match=r"so parameter 'layer/w' cannot be projected onto it"):
        tx.update({"layer": {"w": jnp.zeros((2, 2), jnp.bfloat16)}}, tx.init(params), params)
    with pytest.raises(ValueError, match=r"so parameter 'layer/w' cannot be projected onto it"):
        jaxcons.violations(params, {"**/w": c})


def test_violations_measure_against_the_true_bounds():
    # float32's nearest value to 0.3 lies above 0.3: outside Clip(max_value=0.3), by 1.2e-8.
    # It measures the distance to the projection, which lies inside the true box: the float32
    # just below 0.3.
    above = jnp.asarray(np.float32(0.3))[None]
    assert float(np.float32(0.3)) > 0.3
    below = np.nextafter(np.float32(0.3), np.float32(0.0))
    assert float(below) < 0.3
    gap = float(jaxcons.violations({"w": above}, {"w": Clip(max_value=0.3)})["w"])
    assert gap == float(np.float32(0.3)) - float(below)
    # The projection rounds the bound inward, so a projected parameter measures 0.
    projected = Clip(max_value=0.3)(jnp.ones(3))
    assert float(np.max(np.asarray(projected, np.float64))) <= 0.3
    assert float(jaxcons.violations({"w": projected}, {"w": Clip(max_value=0.3)})["w"]) == 0.0
    # A bf16 entry 0.002 below a lower bound measures its distance to the first bf16 inside.
    low = jnp.asarray([2.4375], jnp.bfloat16)
    gap = float(jaxcons.violations({"w": low}, {"w": Clip(2.4396875, 2.5)})["w"])
    first_inside = np.nextafter(ml_dtypes.bfloat16(2.4375), ml_dtypes.bfloat16(np.inf))
    assert float(first_inside) >= 2.4396875
    assert gap == float(first_inside) - 2.4375
