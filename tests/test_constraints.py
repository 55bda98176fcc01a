"""Behaviour of the built-in constraints and of the constraint registry.

Expected values are computed here with NumPy (in float64), never with the code under test.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcons
from jaxcons import constraints
from jaxcons.constraints import (
    Clip,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    RadialConstraint,
    SpectralNorm,
    UnitNorm,
)

NORM_CONSTRAINTS = [MaxNorm(1.0), MinMaxNorm(0.5, 1.0), UnitNorm()]
FLOAT_DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]


@constraints.register
class CenterAround(jaxcons.Constraint):
    """The seeds' custom constraint: weights centred around ``ref_value`` on average."""

    def __init__(self, ref_value: float):
        self.ref_value = ref_value

    def __call__(self, w: jax.Array) -> jax.Array:
        return w - jnp.mean(w) + self.ref_value

    def get_config(self) -> dict[str, float]:
        return {"ref_value": self.ref_value}


def normal(size: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size)


def with_column_norms(rows: int, norms: list[float], seed: int = 0) -> np.ndarray:
    """A random float32 ``(rows, len(norms))`` matrix whose columns have the given norms."""
    w = normal((rows, len(norms)), seed)
    return (w / np_norms(w, 0) * np.asarray(norms)).astype(np.float32)


def assert_bitwise(actual: jax.Array, expected: jax.Array) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def np_norms(w: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return np.sqrt(np.sum(w * w, axis=axis, keepdims=True))


def np_rescale(w: np.ndarray, axis: int | tuple[int, ...], desired: np.ndarray) -> np.ndarray:
    n = np_norms(w, axis)
    return np.asarray(w, np.float64) * np.where(n > 0, desired / np.where(n > 0, n, 1), 1)


# --------------------------------------------------------------------------------------------
# MaxNorm, MinMaxNorm, UnitNorm: values.


def test_max_norm_matches_numpy_and_keeps_short_columns():
    w = np.array([[3.0, 0.3, -6.0], [4.0, 0.4, 8.0]], np.float32)  # Column norms 5, .5, 10.
    out = MaxNorm(max_value=2.0)(jnp.asarray(w))
    np.testing.assert_allclose(out, [[1.2, 0.3, -1.2], [1.6, 0.4, 1.6]], rtol=1e-6)
    assert_bitwise(out[:, 1], w[:, 1])


def test_max_norm_conv_kernel_filters():
    w = normal(size=(3, 3, 4, 5)).astype(np.float32)
    w[..., 1] *= 0.01  # This filter is inside the ball.
    out = MaxNorm(1.0, axis=[0, 1, 2])(jnp.asarray(w))
    expected = np_rescale(w, (0, 1, 2), np.minimum(np_norms(w, (0, 1, 2)), 1.0))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np_norms(np.asarray(out), (0, 1, 2)).max(), 1.0, rtol=1e-6)
    assert_bitwise(out[..., 1], w[..., 1])


def test_max_norm_zero_radius_projects_to_zero():
    out = MaxNorm(0.0)(jnp.array([[3.0, 0.0], [-4.0, 0.0]]))
    np.testing.assert_array_equal(np.abs(np.asarray(out)), np.zeros((2, 2)))


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.1])
def test_min_max_norm_matches_numpy(rate):
    w = with_column_norms(6, [0.05, 0.2, 0.5, 1.0, 1.5, 3.0, 10.0, 0.0])
    lo, hi = 0.8, 2.0
    out = MinMaxNorm(lo, hi, rate=rate)(jnp.asarray(w))
    n = np_norms(w, 0)
    expected = np_rescale(w, 0, rate * np.clip(n, lo, hi) + (1 - rate) * n)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    inside = ((n >= lo) & (n <= hi)).ravel()
    assert inside.any()
    assert_bitwise(out[:, inside], w[:, inside])
    np.testing.assert_array_equal(out[:, -1], np.zeros(6))


def test_min_max_norm_rate_one_lands_in_the_shell():
    w = normal(size=(5, 7)).astype(np.float32) * np.geomspace(1e-2, 1e2, 7).astype(np.float32)
    n = np_norms(np.asarray(MinMaxNorm(0.5, 1.5)(jnp.asarray(w))), 0)
    assert np.all(n >= 0.5 * (1 - 1e-6)) and np.all(n <= 1.5 * (1 + 1e-6))


def test_unit_norm_matches_numpy():
    w = normal(size=(4, 6)).astype(np.float32)
    out = UnitNorm(axis=-1)(jnp.asarray(w))
    np.testing.assert_allclose(out, w / np_norms(w, -1), rtol=1e-6)


def test_unit_norm_keeps_unit_vectors_bitwise():
    w = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, -1.0, 0.0, 0.0]], np.float32)
    assert_bitwise(UnitNorm()(jnp.asarray(w)), w)


@pytest.mark.parametrize(
    "constraint", [MaxNorm(1.0), MinMaxNorm(0.5, 1.0), MinMaxNorm(0.5, 1.0, rate=0.3)]
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_feasible_tensors_come_back_bitwise(constraint, dtype):
    w = jnp.asarray(with_column_norms(8, [0.75, 0.6, 0.9, 0.55, 0.99]), dtype)
    assert_bitwise(constraint(w), w)


# --------------------------------------------------------------------------------------------
# Zero vectors, gradients, dtypes.


@pytest.mark.parametrize("constraint", NORM_CONSTRAINTS, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_zero_vectors_stay_zero_with_finite_gradient(constraint, dtype):
    w = jnp.asarray(np.array([[0.0, 3.0, 0.1], [0.0, 4.0, 0.0]], np.float32), dtype)
    out = constraint(w)
    np.testing.assert_array_equal(np.asarray(out[:, 0], np.float32), [0.0, 0.0])
    grad = jax.grad(lambda w: jnp.sum(constraint(w).astype(jnp.float32) ** 2))(w)
    assert grad.dtype == dtype
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


@pytest.mark.parametrize("mode", ["mean", "tf_keras"])
def test_radial_zero_kernel_finite_gradient(mode):
    c = RadialConstraint(mode)
    w = jnp.zeros((3, 3, 2, 2))
    np.testing.assert_array_equal(c(w), np.zeros((3, 3, 2, 2)))
    grad = jax.grad(lambda w: jnp.sum(c(w) ** 2))(w)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize(
    "constraint",
    [
        *NORM_CONSTRAINTS,
        NonNeg(),
        Clip(-0.5, 0.5),
        RadialConstraint(),
        RadialConstraint("tf_keras"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_shape_and_dtype_kept(constraint, dtype):
    w = jnp.asarray(normal(size=(3, 3, 2, 4)).astype(np.float32) * 3, dtype)
    out = constraint(w)
    assert out.shape == w.shape and out.dtype == w.dtype
    jitted = jax.jit(constraint)(w)
    assert jitted.dtype == dtype
    rtol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(
        np.asarray(jitted, np.float32), np.asarray(out, np.float32), rtol=rtol
    )


def test_float16_norms_accumulate_in_float32():
    # 300**2 + 400**2 overflows float16 (max 65504); a float16 reduction would give inf.
    w = jnp.array([[300.0], [400.0]], jnp.float16)
    np.testing.assert_allclose(np.asarray(MaxNorm(1.0)(w), np.float32), [[0.6], [0.8]], rtol=1e-3)
    np.testing.assert_allclose(np.asarray(UnitNorm()(w), np.float32), [[0.6], [0.8]], rtol=1e-3)


def test_bfloat16_projection_is_accurate():
    w = normal(size=(64, 3)).astype(np.float32) * 5
    wb = jnp.asarray(w, jnp.bfloat16)
    out = np.asarray(MaxNorm(1.0)(wb), np.float32)
    wb32 = np.asarray(wb, np.float32)
    np.testing.assert_allclose(out, wb32 / np_norms(wb32, 0), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    ("constraint", "lo", "hi"),
    [(MaxNorm(1.0), 0.0, 1.0), (MinMaxNorm(0.5, 1.0), 0.5, 1.0), (UnitNorm(), 1.0, 1.0)],
    ids=repr,
)
def test_float64_kept_and_accurate(constraint, lo, hi):
    with jax.enable_x64(True):
        w = jnp.asarray(normal(size=(3, 3, 2, 4)) * np.geomspace(0.1, 10, 4), jnp.float64)
        out = constraint(w)
        assert out.dtype == jnp.float64
        n = np_norms(np.asarray(out), 0)
        assert np.all(n >= lo * (1 - 1e-15)) and np.all(n <= hi * (1 + 1e-15))


@pytest.mark.parametrize("mode", ["mean", "tf_keras"])
def test_radial_float64_kept(mode):
    with jax.enable_x64(True):
        k = jnp.asarray(normal(size=(4, 4, 2, 3)), jnp.float64)
        out = RadialConstraint(mode)(k)
        assert out.dtype == jnp.float64
        ref = np_radial_mean(np.asarray(k)) if mode == "mean" else np_tf_keras_radial(np.asarray(k))
        np.testing.assert_allclose(out, ref, rtol=1e-14, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Axis forms and validation.


def test_axis_forms_agree():
    w = jnp.asarray(normal(size=(3, 4, 5)).astype(np.float32) * 3)
    np.testing.assert_array_equal(MaxNorm(1.0, axis=-1)(w), MaxNorm(1.0, axis=2)(w))
    np.testing.assert_array_equal(MaxNorm(1.0, axis=[0, 2])(w), MaxNorm(1.0, axis=(-3, -1))(w))
    np.testing.assert_array_equal(UnitNorm(axis=np.int64(1))(w), UnitNorm(axis=1)(w))
    assert MaxNorm(axis=(0, 1)) == MaxNorm(axis=[0, 1])
    expected = np_rescale(np.asarray(w), (0, 2), np.minimum(np_norms(np.asarray(w), (0, 2)), 1.0))
    np.testing.assert_allclose(MaxNorm(1.0, axis=(2, 0))(w), expected, rtol=1e-6)


@pytest.mark.parametrize("cls", [MaxNorm, MinMaxNorm, UnitNorm])
def test_axis_out_of_range_direct_call(cls):
    with pytest.raises(
        ValueError,
        match=r"axis 2 is out of range for parameter '<array>' of "
        r"shape \(3, 4\) \(rank 2\)",
    ):
        cls(axis=2)(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"axis -3 is out of range .*shape \(3, 4\)"):
        cls(axis=[0, -3])(jnp.ones((3, 4)))


@pytest.mark.parametrize("cls", [MaxNorm, MinMaxNorm, UnitNorm])
def test_axis_out_of_range_through_rules(cls):
    params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}}
    with pytest.raises(
        ValueError,
        match=rf"{cls.__name__} axis=\[0, 1\]: axis 1 is out of range for parameter "
        r"'params/Dense_0/bias' of shape \(4,\)",
    ):
        jaxcons.apply_constraints(params, {"**": cls(axis=[0, 1])})


def test_duplicate_axes():
    with pytest.raises(
        ValueError,
        match=r"MaxNorm axis=\[1, -1\] names axis 1 twice for "
        r"parameter '<array>' of shape \(3, 2\)",
    ):
        MaxNorm(axis=[1, -1])(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"names axis 0 twice for parameter 'w' of shape \(3,\)"):
        jaxcons.apply_constraints({"w": jnp.ones(3)}, {"w": UnitNorm(axis=(0, 0))})


@pytest.mark.parametrize("axis", [1.0, True, [], (0, "1"), "0"])
@pytest.mark.parametrize("cls", [MaxNorm, MinMaxNorm, UnitNorm])
def test_malformed_axis(cls, axis):
    with pytest.raises(
        ValueError,
        match=r"axis must be an int, a non-empty list/tuple of ints, "
        rf"or None, got {re.escape(repr(axis))}",
    ):
        cls(axis=axis)


def test_axis_none_takes_one_norm_over_the_whole_tensor():
    w = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    total = np.sqrt(np.sum(w.astype(np.float64) ** 2))  # 9.539
    np.testing.assert_allclose(MaxNorm(2.0, axis=None)(jnp.asarray(w)), w * 2.0 / total, rtol=1e-6)
    np.testing.assert_allclose(UnitNorm(axis=None)(jnp.asarray(w)), w / total, rtol=1e-6)
    out = MinMaxNorm(10.0, 12.0, axis=None)(jnp.asarray(w))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out, np.float64)), 10.0, rtol=1e-6)
    assert MaxNorm(axis=None).get_config() == {"max_value": 2.0, "axis": None}
    restored = jaxcons.constraints.deserialize(jaxcons.constraints.serialize(UnitNorm(axis=None)))
    assert restored == UnitNorm(axis=None)


# --------------------------------------------------------------------------------------------
# Argument validation.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_value": -1.0}, r"max_value must be >= 0, got -1.0"),
        ({"max_value": float("inf")}, r"max_value must be finite, got inf"),
        ({"max_value": float("nan")}, r"max_value must be finite, got nan"),
        ({"max_value": "2"}, r"max_value must be a real number, got '2'"),
        ({"max_value": True}, r"max_value must be a real number, got True"),
    ],
)
def test_max_norm_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaxNorm(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_value": -0.5}, r"min_value must be >= 0, got -0.5"),
        ({"max_value": -1}, r"max_value must be >= 0, got -1"),
        ({"max_value": float("inf")}, r"max_value must be finite, got inf"),
        ({"min_value": float("nan")}, r"min_value must be finite, got nan"),
        (
            {"min_value": 2.0, "max_value": 1.0},
            r"MinMaxNorm needs min_value <= max_value, got min_value=2.0 > max_value=1.0",
        ),
        ({"rate": 0.0}, r"rate must be in \(0, 1\], got 0.0"),
        ({"rate": 1.5}, r"rate must be in \(0, 1\], got 1.5"),
        ({"rate": -0.1}, r"rate must be in \(0, 1\], got -0.1"),
        ({"rate": float("nan")}, r"rate must be finite, got nan"),
        ({"rate": None}, r"rate must be a real number, got None"),
    ],
)
def test_min_max_norm_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MinMaxNorm(**kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.0, 0.0), r"Clip needs min_value <= max_value, got min_value=1.0 > max_value=0.0"),
        ((float("-inf"), 0.0), r"min_value must be finite, got -inf"),
        ((0.0, float("nan")), r"max_value must be finite, got nan"),
        ((0.0, "1"), r"max_value must be a real number or an array of real numbers, got '1'"),
    ],
)
def test_clip_validation(args, message):
    with pytest.raises(ValueError, match=message):
        Clip(*args)


def test_bounds_accept_numpy_and_jax_scalars():
    w = jnp.array([[30.0, 0.0], [40.0, 0.1]])
    for c in [MaxNorm(np.float32(1.5)), MinMaxNorm(jnp.asarray(0.5), np.int64(2), np.float64(1))]:
        blob = json.loads(json.dumps(constraints.serialize(c)))
        assert constraints.deserialize(blob) == c
    np.testing.assert_allclose(MaxNorm(np.float32(1.5))(w)[:, 0], [0.9, 1.2], rtol=1e-6)
    c = MinMaxNorm(jnp.asarray(0.5), np.int64(2))
    np.testing.assert_allclose(c(w), [[1.2, 0.0], [1.6, 0.5]], rtol=1e-6)


def test_min_max_norm_equal_bounds_is_a_sphere():
    w = jnp.asarray(normal(size=(4, 5)).astype(np.float32))
    np.testing.assert_allclose(np_norms(np.asarray(MinMaxNorm(1.0, 1.0)(w)), 0), 1.0, rtol=1e-6)


def test_non_floating_array_is_rejected():
    with pytest.raises(
        TypeError,
        match=r"MaxNorm acts on floating-point arrays; got an array of "
        r"dtype int32",
    ):
        MaxNorm()(jnp.ones((2, 2), jnp.int32))


# --------------------------------------------------------------------------------------------
# NonNeg and Clip.


def test_non_neg_and_clip_values():
    w = jnp.array([-1.5, -0.0, 0.25, 3.0])
    np.testing.assert_array_equal(NonNeg()(w), [0.0, 0.0, 0.25, 3.0])
    np.testing.assert_array_equal(Clip(-1.0, 1.0)(w), [-1.0, -0.0, 0.25, 1.0])
    assert_bitwise(NonNeg()(w[2:]), w[2:])
    assert_bitwise(Clip(-2.0, 3.0)(w[1:]), w[1:])


def test_non_neg_takes_python_scalars():
    assert float(NonNeg()(-2.0)) == 0.0
    assert float(Clip(0.0, 1.0)(3.0)) == 1.0


# --------------------------------------------------------------------------------------------
# RadialConstraint.


def np_rings(size: int) -> np.ndarray:
    """Ring of each cell counted from the centre: peel square frames from the outside in."""
    ring = np.empty((size, size), int)
    for i in range(size):
        for j in range(size):
            frame_from_outside = min(i, j, size - 1 - i, size - 1 - j)
            ring[i, j] = (size - 1) // 2 - frame_from_outside
    return ring


def np_radial_mean(k: np.ndarray) -> np.ndarray:
    size = k.shape[0]
    ring = np_rings(size)
    out = np.empty(k.shape, np.float64)
    for r in range(ring.max() + 1):
        cells = ring == r
        out[cells] = k[cells].astype(np.float64).mean(axis=0)
    return out


def np_tf_keras_radial_slice(kernel: np.ndarray) -> np.ndarray:
    """tf.keras 2.x ``RadialConstraint._kernel_constraint``, re-done step by step in NumPy."""
    size = kernel.shape[0]
    start = size // 2
    if size % 2:
        new = kernel[start - 1 : start, start - 1 : start]
        index = 0
    else:
        new = kernel[start - 1 : start, start - 1 : start] + np.zeros((2, 2), kernel.dtype)
        index = 1
    while index < start:
        new = np.pad(new, 1, constant_values=kernel[start + index, start + index])
        index += 1
    return new


def np_tf_keras_radial(k: np.ndarray) -> np.ndarray:
    out = np.empty_like(k)
    for c in range(k.shape[2]):
        for o in range(k.shape[3]):
            out[:, :, c, o] = np_tf_keras_radial_slice(k[:, :, c, o])
    return out


def test_radial_tf_keras_literal_3x3_and_4x4():
    k3 = jnp.arange(9.0).reshape(3, 3, 1, 1)
    # Odd size: the centre copies k[0, 0], the ring copies the centre k[1, 1] (one ring off).
    np.testing.assert_array_equal(
        RadialConstraint("tf_keras")(k3)[..., 0, 0], [[4, 4, 4], [4, 0, 4], [4, 4, 4]]
    )
    v = np.arange(16.0).reshape(4, 4)  # v[i, j] = 4 i + j, so v_11 = 5 and v_33 = 15.
    out = RadialConstraint("tf_keras")(jnp.asarray(v).reshape(4, 4, 1, 1))[..., 0, 0]
    # The inner block takes v_11 and the outer ring v_33: the reverse of tf.keras's docstring.
    np.testing.assert_array_equal(
        out, [[15, 15, 15, 15], [15, 5, 5, 15], [15, 5, 5, 15], [15, 15, 15, 15]]
    )


@pytest.mark.parametrize("size", [3, 4, 5, 6])
def test_radial_tf_keras_matches_reference(size):
    k = normal(size=(size, size, 2, 3)).astype(np.float32)
    out = RadialConstraint("tf_keras")(jnp.asarray(k))
    assert_bitwise(out, np_tf_keras_radial(k))


@pytest.mark.parametrize("size", [3, 5])
def test_radial_tf_keras_is_not_idempotent_for_odd_sizes(size):
    k = jnp.asarray(normal(size=(size, size, 1, 1)).astype(np.float32))
    c = RadialConstraint("tf_keras")
    assert not np.array_equal(c(c(k)), c(k))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7])
def test_radial_mean_matches_reference(size):
    k = normal(size=(size, size, 2, 3)).astype(np.float32)
    out = RadialConstraint()(jnp.asarray(k))
    np.testing.assert_allclose(out, np_radial_mean(k), rtol=1e-6, atol=1e-6)


def test_radial_mean_literal_4x4():
    v = np.arange(16.0).reshape(4, 4, 1, 1)
    inner = (5 + 6 + 9 + 10) / 4
    outer = (np.arange(16).sum() - 4 * inner) / 12
    expected = np.full((4, 4), outer)
    expected[1:3, 1:3] = inner
    np.testing.assert_allclose(RadialConstraint()(jnp.asarray(v, jnp.float32))[..., 0, 0], expected)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_radial_mean_is_an_orthogonal_idempotent_projection(size):
    k = jnp.asarray(normal(size=(size, size, 3, 2)).astype(np.float32))
    c = RadialConstraint()
    once = c(k)
    assert_bitwise(c(once), once)
    residual = np.asarray(k, np.float64) - np.asarray(once, np.float64)
    inner = np.sum(residual * np.asarray(once, np.float64), axis=(0, 1))
    np.testing.assert_allclose(inner, 0.0, atol=1e-5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_radial_mean_keeps_ring_constant_kernels_bitwise(dtype):
    values = jnp.asarray(normal(size=(3, 2, 2)).astype(np.float32) / 3, dtype)
    ring = np_rings(5)
    k = values[ring]  # (5, 5, 2, 2), constant on every ring.
    assert_bitwise(RadialConstraint()(k), k)
    # One perturbed ring is averaged; the others stay bit for bit.
    k2 = k.at[0, 0, 0, 0].add(jnp.asarray(1.0, dtype))
    out = RadialConstraint()(k2)
    assert_bitwise(out[:, :, 1], k2[:, :, 1])
    inner = np.asarray(ring < 2)
    assert_bitwise(np.asarray(out[:, :, 0, 0])[inner], np.asarray(k2[:, :, 0, 0])[inner])
    assert not np.array_equal(np.asarray(out[0, 0, 0, 0]), np.asarray(k2[0, 0, 0, 0]))


@pytest.mark.parametrize("mode", ["mean", "tf_keras"])
def test_radial_shape_errors(mode):
    c = RadialConstraint(mode)
    with pytest.raises(
        ValueError,
        match=r"RadialConstraint needs a 4-D Conv2D kernel of shape "
        r"\(rows, cols, in, out\); parameter '<array>' has shape \(3, 3, 2\) "
        r"\(rank 3\)",
    ):
        c(jnp.ones((3, 3, 2)))
    with pytest.raises(
        ValueError,
        match=r"RadialConstraint needs a square kernel "
        r"\(rows == cols\); parameter '<array>' has shape \(3, 5, 1, 1\)",
    ):
        c(jnp.ones((3, 5, 1, 1)))
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)}}
    with pytest.raises(ValueError, match=r"parameter 'conv/bias' has shape \(4,\) \(rank 1\)"):
        jaxcons.apply_constraints(params, {"conv/*": c})
    out = jaxcons.apply_constraints(params, {"conv/kernel": c})
    np.testing.assert_array_equal(out["conv"]["kernel"], np.ones((3, 3, 1, 4)))


def test_radial_unknown_mode():
    with pytest.raises(
        ValueError,
        match=r"RadialConstraint mode must be one of \('mean', "
        r"'tf_keras'\), got 'keras'",
    ):
        RadialConstraint("keras")


# --------------------------------------------------------------------------------------------
# Pytrees, jit and rules.


def test_called_on_a_pytree_projects_every_floating_leaf():
    tree = {"a": jnp.array([[3.0], [4.0]]), "n": jnp.array([7, 8]), "b": jnp.array([0.1, 0.2])}
    out = MaxNorm(1.0)(tree)
    np.testing.assert_allclose(out["a"], [[0.6], [0.8]], rtol=1e-6)
    assert_bitwise(out["b"], tree["b"])
    assert out["n"] is tree["n"]


def test_apply_constraints_with_conv_and_dense_rules():
    params = {
        "Conv_0": {"kernel": jnp.asarray(normal(size=(3, 3, 2, 4)).astype(np.float32))},
        "Dense_0": {"kernel": jnp.asarray(normal(size=(6, 3)).astype(np.float32) * 4)},
    }
    rules = {"Conv_*/kernel": "radial_constraint", "Dense_*/kernel": MaxNorm(1.0)}
    out = jax.jit(lambda p: jaxcons.apply_constraints(p, rules))(params)
    k = np.asarray(params["Conv_0"]["kernel"])
    np.testing.assert_allclose(out["Conv_0"]["kernel"], np_radial_mean(k), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np_norms(np.asarray(out["Dense_0"]["kernel"]), 0), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# get_config, get, serialize, deserialize, register.

ALL_CONSTRAINTS = [
    NonNeg(),
    Clip(-1.0, 2.5),
    MaxNorm(),
    MaxNorm(3, axis=[0, 1, 2]),
    MaxNorm(0.5, axis=(0, -1)),
    MinMaxNorm(),
    MinMaxNorm(0.25, 4.0, rate=0.5, axis=-1),
    UnitNorm(),
    UnitNorm(axis=[1, 2]),
    RadialConstraint(),
    RadialConstraint("tf_keras"),
    SpectralNorm(),
    SpectralNorm(0.5, n_power_iterations=3),
    CenterAround(0.5),
]


def test_get_config_is_the_constructor_arguments():
    assert MaxNorm().get_config() == {"max_value": 2.0, "axis": 0}
    assert MaxNorm(3, axis=(0, 1)).get_config() == {"max_value": 3, "axis": [0, 1]}
    assert MinMaxNorm().get_config() == {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}
    assert MinMaxNorm(0.5, 2.0, 0.25, [-1]).get_config() == {
        "min_value": 0.5,
        "max_value": 2.0,
        "rate": 0.25,
        "axis": [-1],
    }
    assert UnitNorm(axis=-2).get_config() == {"axis": -2}
    assert RadialConstraint().get_config() == {"mode": "mean"}
    assert NonNeg().get_config() == {}
    assert Clip(0, 1).get_config() == {"min_value": 0, "max_value": 1}


def test_repr():
    assert repr(MinMaxNorm(0.5, axis=[0, 1])) == (
        "MinMaxNorm(min_value=0.5, max_value=1.0, rate=1.0, axis=[0, 1])"
    )
    assert repr(RadialConstraint("tf_keras")) == "RadialConstraint(mode='tf_keras')"


@pytest.mark.parametrize("constraint", ALL_CONSTRAINTS, ids=repr)
def test_serialize_round_trip_through_json(constraint):
    blob = json.dumps(constraints.serialize(constraint))
    back = constraints.deserialize(json.loads(blob))
    assert type(back) is type(constraint)
    assert back == constraint
    assert back.get_config() == json.loads(blob)["config"]
    assert constraints.get(json.loads(blob)) == constraint
    w = jnp.asarray(normal(size=(3, 3, 2, 4)).astype(np.float32) * 2)
    assert_bitwise(back(w), constraint(w))


def test_serialize_format():
    assert constraints.serialize(MaxNorm(1.5, axis=(0, 1))) == {
        "class_name": "MaxNorm",
        "config": {"max_value": 1.5, "axis": [0, 1]},
    }
    assert constraints.serialize(CenterAround(2.0)) == {
        "class_name": "CenterAround",
        "config": {"ref_value": 2.0},
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("max_norm", MaxNorm()),
        ("maxnorm", MaxNorm()),
        ("MaxNorm", MaxNorm()),
        ("min_max_norm", MinMaxNorm()),
        ("MinMaxNorm", MinMaxNorm()),
        ("non_neg", NonNeg()),
        ("nonneg", NonNeg()),
        ("NonNeg", NonNeg()),
        ("unit_norm", UnitNorm()),
        ("unitnorm", UnitNorm()),
        ("UnitNorm", UnitNorm()),
        ("radial_constraint", RadialConstraint()),
        ("RadialConstraint", RadialConstraint()),
        ("spectral_norm", SpectralNorm()),
        ("SpectralNorm", SpectralNorm()),
    ],
)
def test_get_by_name(name, expected):
    got = constraints.get(name)
    assert type(got) is type(expected)
    assert got == expected
    assert constraints.deserialize(name) == expected


def test_shortcut_aliases():
    assert constraints.max_norm is MaxNorm
    assert constraints.min_max_norm is MinMaxNorm
    assert constraints.non_neg is NonNeg
    assert constraints.unit_norm is UnitNorm
    assert constraints.radial_constraint is RadialConstraint
    assert constraints.spectral_norm is SpectralNorm
    assert constraints.max_norm(2.0) == MaxNorm(2.0)


def test_get_passes_through_none_instances_and_callables():
    c = MaxNorm(1.0)
    assert constraints.get(None) is None
    assert constraints.get(c) is c

    def halve(w):
        return w / 2

    assert constraints.get(halve) is halve
    with pytest.raises(TypeError, match=r"got the class MaxNorm; call it first: MaxNorm\(\)"):
        constraints.get(MaxNorm)
    with pytest.raises(TypeError, match=r"Could not interpret constraint identifier 3"):
        constraints.get(3)


def test_unknown_name_lists_valid_names():
    with pytest.raises(
        ValueError,
        match=r"Unknown constraint identifier 'max_nrom'\. Valid names: "
        r".*MaxNorm.*max_norm.*maxnorm.*min_max_norm.*non_neg.*nonneg.*"
        r"radial_constraint.*spectral_norm.*unit_norm.*unitnorm",
    ):
        constraints.get("max_nrom")
    with pytest.raises(
        ValueError,
        match=r"Unknown constraint identifier 'Nope'\. Valid names: "
        r".*CenterAround",
    ):
        constraints.deserialize({"class_name": "Nope", "config": {}})


def test_serialize_rejects_plain_functions_and_unregistered_classes():
    with pytest.raises(ValueError, match=r"Cannot serialize .*only Constraint subclasses"):
        constraints.serialize(lambda w: w)

    class Unregistered(jaxcons.Constraint):
        def __call__(self, w):
            return w

    with pytest.raises(
        ValueError,
        match=r"Unregistered is not registered; decorate it with "
        r"@jaxcons.constraints.register",
    ):
        constraints.serialize(Unregistered())


def test_deserialize_rejects_malformed_configs():
    with pytest.raises(
        ValueError,
        match=r"must be a dict with 'class_name' and 'config' keys, "
        r"got \{'config': \{\}\}",
    ):
        constraints.deserialize({"config": {}})
    with pytest.raises(ValueError, match=r"MinMaxNorm needs min_value <= max_value"):
        constraints.deserialize(
            {"class_name": "MinMaxNorm", "config": {"min_value": 3.0, "max_value": 1.0}}
        )


def test_center_around_round_trips_and_applies():
    c = constraints.get({"class_name": "CenterAround", "config": {"ref_value": 1.0}})
    assert isinstance(c, CenterAround)
    np.testing.assert_allclose(c(jnp.array([0.0, 2.0, 4.0])), [-1.0, 1.0, 3.0])
    out = jaxcons.apply_constraints(
        {"w": jnp.array([1.0, 3.0])},
        {"w": constraints.serialize(CenterAround(0.0))},
    )
    np.testing.assert_allclose(out["w"], [-1.0, 1.0])


def test_register_refuses_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match=r"A constraint named 'MaxNorm' is already registered"):

        @constraints.register(name="MaxNorm")
        class Other(jaxcons.Constraint):
            pass

    with pytest.raises(ValueError, match=r"'max_norm' is a built-in constraint shortcut name"):

        @constraints.register(name="max_norm")
        class Other2(jaxcons.Constraint):
            pass


def test_custom_constraint_without_get_config_is_not_equal_to_a_differently_built_one():
    # Equality and hashing come from get_config; a subclass that keeps state but has no
    # get_config must not compare equal to another instance (jit caches on static values).
    class Scale(jaxcons.Constraint):
        def __init__(self, v):
            self.v = v

        def __call__(self, w):
            return w * self.v

    a, b = Scale(1.0), Scale(2.0)
    assert a != b and a == a and hash(a) != hash(b)
    assert jaxcons.MaxNorm(2) == jaxcons.MaxNorm(2.0)
    assert hash(jaxcons.MaxNorm(2)) == hash(jaxcons.MaxNorm(2.0))
    assert jaxcons.NonNeg() == jaxcons.NonNeg() and hash(jaxcons.NonNeg()) == hash(jaxcons.NonNeg())


def test_registry_error_messages():
    class Plain:
        pass

    with pytest.raises(TypeError, match="Only subclasses of Constraint can be registered"):
        constraints.register(Plain)
    with pytest.raises(ValueError, match="registered constraint name must be a non-empty str"):
        constraints.register(name="")(type("Nameless", (jaxcons.Constraint,), {}))

    @constraints.register(name="test_registry_errors>Bad")
    class BadConfig(jaxcons.Constraint):
        def __call__(self, w):
            return w

        def get_config(self):
            return {"fn": print}

    with pytest.raises(ValueError, match=r"get_config\(\) returned .* which is not JSON-safe"):
        constraints.serialize(BadConfig())
    with pytest.raises(ValueError, match="'config' of a serialized constraint must be a dict"):
        constraints.deserialize({"class_name": "MaxNorm", "config": [2.0]})


def test_stateful_constraint_hooks_must_be_implemented():
    class Half(jaxcons.StatefulConstraint):
        pass

    with pytest.raises(
        TypeError,
        match=r"Half subclasses jaxcons.StatefulConstraint but "
        r"defines no init\(\)",
    ):
        Half()

    class NoProject(jaxcons.StatefulConstraint):
        def init(self, w):
            return jnp.zeros(())

    with pytest.raises(TypeError, match=r"NoProject .*defines no project\(\)"):
        NoProject()
