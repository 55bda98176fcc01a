"""Property tests (hypothesis) for the built-in constraints: feasibility, idempotence, scaling."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxcons.constraints import Clip, MaxNorm, MinMaxNorm, NonNeg, RadialConstraint, UnitNorm

SETTINGS = settings(max_examples=25, deadline=None)

# Entries are 0 or of magnitude in [1e-3, 1e3], so squares and power-of-two rescalings neither
# overflow nor underflow in float32.
ENTRY = st.floats(-1e3, 1e3, width=32).map(lambda x: 0.0 if abs(x) < 1e-3 else x)
# Norm bounds: 0 or well inside float32's normal range.
BOUND = st.one_of(st.just(0.0), st.floats(1e-3, 10.0))
POW2 = st.sampled_from([2.0**k for k in range(-4, 5)])


@st.composite
def tensor_and_axis(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    w = draw(hnp.arrays(np.float32, shape, elements=ENTRY))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    signed = [a - len(shape) if draw(st.booleans()) else a for a in axes]
    axis = signed[0] if len(signed) == 1 and draw(st.booleans()) else signed
    return w, axis, tuple(axes)


def norms(w, axes) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return np.sqrt(np.sum(w * w, axis=axes, keepdims=True))


def assert_bitwise(a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------
# Norm constraints.


@SETTINGS
@given(tensor_and_axis(), st.one_of(st.just(0.0), st.floats(1e-3, 50.0)))
def test_max_norm_feasible_idempotent_and_kept_when_feasible(data, c):
    w, axis, axes = data
    p = MaxNorm(c, axis)
    out = p(jnp.asarray(w))
    assert np.all(norms(out, axes) <= c * (1 + 1e-6))
    np.testing.assert_allclose(p(out), out, rtol=1e-6, atol=1e-30)
    inside = jnp.asarray(np.asarray(out) * np.float32(0.5))
    assert_bitwise(p(inside), inside)
    # Only rescaling, never a change of direction: out = s * w with s in [0, 1] per vector.
    s = np.where(norms(w, axes) > 0, norms(out, axes) / np.maximum(norms(w, axes), 1e-30), 1)
    np.testing.assert_allclose(out, s * w, rtol=1e-5, atol=1e-30)
    assert np.all(s <= 1 + 1e-6)


@SETTINGS
@given(tensor_and_axis(), st.floats(0.1, 50.0), st.data())
def test_max_norm_is_the_nearest_feasible_point(data, c, draw):
    w, axis, axes = data
    out = np.asarray(MaxNorm(c, axis)(jnp.asarray(w)), np.float64)
    z = draw.draw(hnp.arrays(np.float64, w.shape, elements=st.floats(-10, 10)))
    z = z * np.minimum(1, c / np.maximum(norms(z, axes), 1e-12))  # Any point of the set.
    dist_out = np.sqrt(np.sum((w - out) ** 2, axis=axes))
    dist_z = np.sqrt(np.sum((w - z) ** 2, axis=axes))
    assert np.all(dist_out <= dist_z * (1 + 1e-5) + 1e-3)


@SETTINGS
@given(tensor_and_axis(), POW2, BOUND)
def test_max_norm_scales_exactly_by_powers_of_two(data, a, c):
    w, axis, _ = data
    lhs = MaxNorm(a * c, axis)(jnp.asarray(w * np.float32(a)))
    assert_bitwise(lhs, np.asarray(MaxNorm(c, axis)(jnp.asarray(w))) * np.float32(a))


@SETTINGS
@given(
    tensor_and_axis(),
    BOUND,
    BOUND,
    st.floats(0.01, 1.0),
)
def test_min_max_norm_moves_norms_toward_the_interval(data, b1, b2, rate):
    w, axis, axes = data
    lo, hi = min(b1, b2), max(b1, b2)
    out = MinMaxNorm(lo, hi, rate, axis)(jnp.asarray(w))
    n_in, n_out = norms(w, axes), norms(out, axes)
    target = np.clip(n_in, lo, hi)
    nonzero = n_in > 0
    assert np.all(n_out[~nonzero] == 0)
    tol = 1e-5 * np.maximum(n_in, hi) + 1e-30
    # The new norm lies between the old norm and the interval, at the rate's fraction.
    np.testing.assert_allclose(
        n_out[nonzero], (rate * target + (1 - rate) * n_in)[nonzero], rtol=1e-5, atol=1e-30
    )
    assert np.all(np.abs(n_out - target) <= np.abs(n_in - target) + tol)
    if rate == 1.0:
        assert np.all((n_out[nonzero] >= lo * (1 - 1e-6)) & (n_out[nonzero] <= hi * (1 + 1e-6)))


@SETTINGS
@given(tensor_and_axis(), BOUND, BOUND)
def test_min_max_norm_rate_one_is_idempotent_and_exact_inside(data, b1, b2):
    w, axis, _ = data
    p = MinMaxNorm(min(b1, b2), max(b1, b2), 1.0, axis)
    out = p(jnp.asarray(w))
    np.testing.assert_allclose(p(out), out, rtol=1e-6, atol=1e-30)


@SETTINGS
@given(tensor_and_axis(), POW2, BOUND, BOUND, st.floats(0.01, 1.0))
def test_min_max_norm_scales_exactly_by_powers_of_two(data, a, b1, b2, rate):
    w, axis, _ = data
    lo, hi = min(b1, b2), max(b1, b2)
    lhs = MinMaxNorm(a * lo, a * hi, rate, axis)(jnp.asarray(w * np.float32(a)))
    rhs = np.asarray(MinMaxNorm(lo, hi, rate, axis)(jnp.asarray(w))) * np.float32(a)
    assert_bitwise(lhs, rhs)


@SETTINGS
@given(tensor_and_axis(), POW2)
def test_unit_norm_properties(data, a):
    w, axis, axes = data
    p = UnitNorm(axis)
    out = p(jnp.asarray(w))
    n_in, n_out = norms(w, axes), norms(out, axes)
    np.testing.assert_allclose(n_out[n_in > 0], 1.0, rtol=1e-6)
    assert np.all(n_out[n_in == 0] == 0)
    np.testing.assert_allclose(p(out), out, rtol=1e-6, atol=1e-30)
    assert_bitwise(p(jnp.asarray(w * np.float32(a))), out)


# --------------------------------------------------------------------------------------------
# Elementwise constraints: exact.


@SETTINGS
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3), elements=ENTRY))
def test_non_neg_exact(w):
    out = NonNeg()(jnp.asarray(w))
    assert np.all(np.asarray(out) >= 0)
    assert_bitwise(NonNeg()(out), out)
    np.testing.assert_array_equal(np.asarray(out)[w > 0], w[w > 0])


@SETTINGS
@given(
    hnp.arrays(np.float32, hnp.array_shapes(max_dims=3), elements=ENTRY),
    st.floats(-100, 100, width=32),
    st.floats(-100, 100, width=32),
)
def test_clip_exact(w, b1, b2):
    lo, hi = min(b1, b2), max(b1, b2)
    out = np.asarray(Clip(lo, hi)(jnp.asarray(w)))
    assert np.all((out >= lo) & (out <= hi))
    assert_bitwise(Clip(lo, hi)(jnp.asarray(out)), out)
    inside = (w >= lo) & (w <= hi)
    np.testing.assert_array_equal(out[inside], w[inside])


# --------------------------------------------------------------------------------------------
# RadialConstraint.


def rings(size: int) -> np.ndarray:
    """Ring of each cell, 0 at the centre: the frames of the square peeled from the outside."""
    i = np.arange(size)
    frame = np.minimum(np.minimum.outer(i, i), np.minimum.outer(i[::-1], i[::-1]))
    return (size - 1) // 2 - frame


@st.composite
def kernels(draw):
    size = draw(st.integers(1, 7))
    shape = (size, size, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return draw(hnp.arrays(np.float32, shape, elements=ENTRY))


def is_ring_constant(k: np.ndarray) -> bool:
    ring = rings(k.shape[0])
    return all(np.all(k[ring == r] == k[ring == r][:1]) for r in range(int(ring.max()) + 1))


@SETTINGS
@given(kernels(), st.data())
def test_radial_mean_projection(k, data):
    p = RadialConstraint()
    out = np.asarray(p(jnp.asarray(k)))
    assert is_ring_constant(out)
    assert_bitwise(p(jnp.asarray(out)), out)
    ring = rings(k.shape[0])
    for r in range(int(ring.max()) + 1):  # Each ring keeps its sum.
        scale = np.abs(k[ring == r]).sum(0, dtype=np.float64)
        gap = out[ring == r].sum(0, dtype=np.float64) - k[ring == r].sum(0, dtype=np.float64)
        assert np.all(np.abs(gap) <= 1e-5 * scale)
    # Nearest ring-constant kernel: no closer than a random ring-constant z.
    values = data.draw(
        hnp.arrays(np.float64, (int(ring.max()) + 1, *k.shape[2:]), elements=st.floats(-1e3, 1e3))
    )
    z = values[ring]
    k64 = k.astype(np.float64)
    assert np.sum((k64 - out) ** 2) <= np.sum((k64 - z) ** 2) * (1 + 1e-5) + 1e-3


@SETTINGS
@given(kernels())
def test_radial_tf_keras_copies_input_values_and_even_sizes_are_idempotent(k):
    p = RadialConstraint("tf_keras")
    out = np.asarray(p(jnp.asarray(k)))
    assert is_ring_constant(out)
    assert np.all(np.isin(out, k))
    if k.shape[0] % 2 == 0:
        assert_bitwise(p(jnp.asarray(out)), out)
