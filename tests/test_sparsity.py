"""`TopK` and `NofM`: parity with NumPy oracles, ties, validation.

The oracles rank entries with NumPy's stable argsort of ``-|w|`` (so among equal magnitudes the
lower index comes first), slice by slice or group by group, independently of the code under
test.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxcons
from jaxcons import constraints
from jaxcons.constraints import NofM, TopK


def np_keep_top(v: np.ndarray, k: int) -> np.ndarray:
    """The mask of the k largest |v|, ties to the lower index."""
    order = np.argsort(-np.abs(v), kind="stable")
    keep = np.zeros(v.shape, bool)
    keep[order[:k]] = True
    return keep


def np_top_k(w: np.ndarray, k: int, axes: tuple[int, ...]) -> np.ndarray:
    rest = [a for a in range(w.ndim) if a not in axes]
    moved = np.transpose(w, rest + list(axes))
    flat = moved.reshape(-1, int(np.prod([w.shape[a] for a in axes])))
    out = np.stack([np.where(np_keep_top(v, k), v, 0) for v in flat]).reshape(moved.shape)
    return np.transpose(out, np.argsort(rest + list(axes)))


def np_n_of_m(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(-1, m)
    out = np.stack([np.where(np_keep_top(g, n), g, 0) for g in groups]).reshape(moved.shape)
    return np.moveaxis(out, -1, axis)


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# TopK.


@pytest.mark.parametrize(
    ("shape", "k", "axis", "axes"),
    [
        ((6, 5), 7, None, (0, 1)),
        ((6, 5), 2, 0, (0,)),
        ((6, 5), 3, -1, (1,)),
        ((3, 3, 4, 2), 5, [0, 1, 2], (0, 1, 2)),
        ((3, 4, 5), 4, (0, 2), (0, 2)),
        ((6, 5), 30, None, (0, 1)),  # k = the slice size: the identity.
    ],
)
def test_top_k_matches_numpy(shape, k, axis, axes):
    w = normal(shape)
    out = TopK(k, axis=axis)(jnp.asarray(w))
    assert_bitwise(out, np_top_k(w, k, axes).astype(np.float32))


def test_top_k_ties_go_to_the_lower_index():
    w = np.array([[1.0, -2.0, 2.0, 0.5], [-2.0, 1.0, 1.0, 1.0]], np.float32)
    out = TopK(2, axis=-1)(jnp.asarray(w))
    np.testing.assert_array_equal(out, [[0.0, -2.0, 2.0, 0.0], [-2.0, 1.0, 0.0, 0.0]])
    ints = np.random.default_rng(0).integers(-3, 4, size=(8, 6)).astype(np.float32)
    for axis, axes in [(None, (0, 1)), (0, (0,)), (1, (1,))]:
        out = TopK(3, axis=axis)(jnp.asarray(ints))
        assert_bitwise(out, np_top_k(ints, 3, axes).astype(np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_top_k_keeps_entries_bit_for_bit_and_the_dtype(dtype):
    w = jnp.asarray(normal((8, 4)), dtype)
    out = TopK(3, axis=0)(w)
    assert out.dtype == dtype
    expected = np_top_k(np.asarray(w.astype(jnp.float32)), 3, (0,))
    np.testing.assert_array_equal(np.asarray(out, np.float32), expected)
    sparse = TopK(3, axis=0)(out)  # Idempotent, and at most k non-zeros is a fixed point.
    assert_bitwise(sparse, out)


def test_top_k_gradient_flows_through_kept_entries_only():
    w = jnp.asarray(normal((5, 4)))
    g = jnp.asarray(normal((5, 4), seed=1))
    grad = jax.grad(lambda w: jnp.sum(TopK(2, axis=0)(w) * g))(w)
    keep = np_top_k(np.asarray(w), 2, (0,)) != 0
    np.testing.assert_array_equal(grad, np.where(keep, np.asarray(g), 0))


def test_top_k_inside_constrain_keeps_k_non_zeros():
    rng = np.random.default_rng(0)
    params = {"w": TopK(6)(jnp.asarray(rng.normal(size=(8, 8)), jnp.float32))}
    tx = optax.chain(optax.sgd(0.1), jaxcons.constrain({"w": TopK(6)}))
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(
            {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)}, state, params
        )
        params = optax.apply_updates(params, updates)
        assert int(np.count_nonzero(np.asarray(params["w"]))) <= 6


# --------------------------------------------------------------------------------------------
# NofM.


@pytest.mark.parametrize(
    ("shape", "n", "m", "axis"),
    [
        ((8, 3), 2, 4, 0),
        ((6, 12), 1, 4, 1),
        ((3, 16, 2), 2, 8, -2),
        ((8, 5), 4, 4, 0),  # n = m: the identity.
        ((3, 3, 8, 4), 2, 4, 2),  # A Conv2D kernel grouped along its input channels.
    ],
)
def test_n_of_m_matches_numpy(shape, n, m, axis):
    w = normal(shape)
    out = NofM(n, m, axis)(jnp.asarray(w))
    assert_bitwise(out, np_n_of_m(w, n, m, axis % len(shape)).astype(np.float32))


def test_n_of_m_ties_go_to_the_lower_index():
    w = np.array([1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 2.0, -3.0, 2.0], np.float32)
    np.testing.assert_array_equal(
        NofM(2, 4)(jnp.asarray(w)), [1.0, -1.0, 0, 0, 0, 0, 0, 0, 3.0, 0, -3.0, 0]
    )
    ints = np.random.default_rng(1).integers(-2, 3, size=(16, 5)).astype(np.float32)
    assert_bitwise(NofM(2, 4)(jnp.asarray(ints)), np_n_of_m(ints, 2, 4, 0).astype(np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_n_of_m_dtype_and_idempotence(dtype):
    w = jnp.asarray(normal((8, 6)), dtype)
    out = NofM()(w)
    assert out.dtype == dtype
    assert_bitwise(NofM()(out), out)
    counts = np.count_nonzero(np.asarray(out, np.float32).reshape(2, 4, 6), axis=1)
    assert np.all(counts <= 2)


# --------------------------------------------------------------------------------------------
# Properties.


@settings(max_examples=20, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements=st.integers(-4, 4).map(float),
    ),
    st.integers(1, 6),
    st.sampled_from([None, 0, 1]),
)
def test_top_k_properties(w, k, axis):
    axes = (0, 1) if axis is None else (axis,)
    size = int(np.prod([w.shape[a] for a in axes]))
    k = min(k, size)
    c = TopK(k, axis=axis)
    out = np.asarray(c(jnp.asarray(w)))
    assert_bitwise(out, np_top_k(w, k, axes).astype(np.float32))
    assert_bitwise(c(jnp.asarray(out)), out)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda g: hnp.arrays(
            np.float32,
            st.tuples(st.just(4 * g), st.integers(1, 4)),
            elements=st.integers(-3, 3).map(float),
        )
    ),
    st.integers(1, 4),
)
def test_n_of_m_properties(w, n):
    out = np.asarray(NofM(n, 4)(jnp.asarray(w)))
    assert_bitwise(out, np_n_of_m(w, n, 4, 0).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Validation, config, registry.


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TopK(0), r"k must be a positive int, got 0"),
        (lambda: TopK(2.0), r"k must be a positive int, got 2.0"),
        (lambda: TopK(True), r"k must be a positive int, got True"),
        (lambda: TopK(1, axis=1.5), r"axis must be an int, a non-empty list/tuple of ints"),
        (lambda: NofM(0, 4), r"n must be a positive int, got 0"),
        (lambda: NofM(2, 0), r"m must be a positive int, got 0"),
        (lambda: NofM(5, 4), r"NofM needs n <= m, got n=5 > m=4"),
        (lambda: NofM(axis=(0, 1)), r"NofM axis must be an int \(one axis\), got \(0, 1\)"),
        (lambda: NofM(axis=None), r"NofM axis must be an int \(one axis\), got None"),
    ],
)
def test_validation_messages(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_shape_errors_name_the_path_and_shape():
    params = {"dense": {"kernel": jnp.ones((6, 3))}}
    with pytest.raises(
        ValueError,
        match=r"TopK\(k=7, axis=0\) needs k <= the slice size, but "
        r"parameter 'dense/kernel' of shape \(6, 3\) has slices of 6 entries",
    ):
        jaxcons.constrain({"**/kernel": TopK(7, axis=0)}).init(params)
    with pytest.raises(
        ValueError,
        match=r"TopK\(k=19, axis=None\) needs k <= the slice size, but "
        r"parameter '<array>' of shape \(6, 3\) has slices of 18 entries",
    ):
        TopK(19)(jnp.ones((6, 3)))
    with pytest.raises(
        ValueError,
        match=r"NofM\(n=2, m=4\) needs the length of axis 0 to be a "
        r"multiple of m=4; parameter 'dense/kernel' has shape \(6, 3\)",
    ):
        jaxcons.apply_constraints(params, {"**/kernel": NofM()})
    with pytest.raises(
        ValueError,
        match=r"NofM axis=2: axis 2 is out of range for parameter "
        r"'dense/kernel' of shape \(6, 3\) \(rank 2\)",
    ):
        jaxcons.constrain({"**/kernel": NofM(axis=2)}).init(params)


@pytest.mark.parametrize("c", [TopK(3), TopK(2, axis=[0, 1]), NofM(), NofM(1, 2, -1)], ids=repr)
def test_config_round_trips_through_json(c):
    back = constraints.deserialize(json.loads(json.dumps(constraints.serialize(c))))
    assert back == c and hash(back) == hash(c)


def test_names_and_defaults():
    assert TopK(3).get_config() == {"k": 3, "axis": None}
    assert NofM().get_config() == {"n": 2, "m": 4, "axis": 0}
    assert constraints.get("n_of_m") == NofM() and constraints.get("NofM") == NofM()
    assert constraints.top_k is TopK and jaxcons.n_of_m is NofM
    with pytest.raises(ValueError, match=r"The constraint identifier 'top_k' needs arguments"):
        constraints.get("top_k")
