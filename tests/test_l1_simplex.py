"""`L1Ball` and `Simplex`: parity with optax.projections and a NumPy float64 oracle.

The oracles are independent of the code under test: ``optax.projections.projection_l1_ball``
and ``projection_simplex`` (sort-based) applied slice by slice with `jax.vmap`, and the
sort-based algorithm of Duchi et al. (2008) written here in NumPy float64.
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
from oracles import np_l1_ball, np_simplex

import jaxcons
from jaxcons import constraints
from jaxcons.constraints import L1Ball, Simplex

F32_EPS = float(np.finfo(np.float32).eps)


def by_slices(fn, w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Applies ``fn`` (1-D -> 1-D) to every slice of ``w`` spanning ``axes``, in float64."""
    w = np.asarray(w, np.float64)
    rest = [a for a in range(w.ndim) if a not in axes]
    moved = np.transpose(w, rest + list(axes))
    flat = moved.reshape(-1, int(np.prod([w.shape[a] for a in axes])))
    out = np.stack([fn(row) for row in flat]).reshape(moved.shape)
    return np.transpose(out, np.argsort(rest + list(axes)))


def optax_by_columns(fn, w: jax.Array) -> jax.Array:
    """An optax projection applied to every column (axis 0) of a matrix with `jax.vmap`.

    optax mixes int32 and float32 inside, which the suite's strict promotion rejects.
    """
    with jax.numpy_dtype_promotion("standard"):
        return jax.vmap(fn, in_axes=1, out_axes=1)(w)


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_close(out, expected, w, ulps=8):
    """Entries agree to ``ulps`` float32 ulps of the largest input or output entry:
    ``|w| - theta`` is computed in float32, so that is the resolution of any float32
    projection."""
    out = np.asarray(out, np.float64)
    scale = max(float(np.max(np.abs(w))), float(np.max(np.abs(expected))), 1e-30)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ulps * F32_EPS * scale)


def data(kind: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        w = rng.normal(size=shape)
    elif kind == "cauchy":  # Heavy tails: a few huge entries.
        w = rng.standard_cauchy(size=shape)
    elif kind == "ties":  # Many equal magnitudes.
        w = np.round(rng.normal(size=shape), 1)
    elif kind == "geometric":  # Entries spread over 30 binades.
        w = rng.choice([-1.0, 1.0], size=shape) * 2.0 ** -rng.uniform(0, 30, size=shape)
    else:
        raise AssertionError(kind)
    return w.astype(np.float32)


KINDS = ["normal", "cauchy", "ties", "geometric"]


# --------------------------------------------------------------------------------------------
# Parity.


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("radius", [1e-3, 1.0, 10.0])
def test_l1_ball_matches_optax_and_numpy(kind, radius):
    w = data(kind, (64, 16))
    out = L1Ball(radius)(jnp.asarray(w))
    expected = by_slices(lambda v: np_l1_ball(v, radius), w, (0,))
    assert_close(out, expected, w)
    reference = optax_by_columns(
        lambda v: optax.projections.projection_l1_ball(v, radius), jnp.asarray(w)
    )
    assert_close(out, np.asarray(reference, np.float64), w)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("total", [1e-3, 1.0, 100.0])
def test_simplex_matches_optax_and_numpy(kind, total):
    w = data(kind, (64, 16))
    out = Simplex(total)(jnp.asarray(w))
    expected = by_slices(lambda v: np_simplex(v, total), w, (0,))
    assert_close(out, expected, w)
    reference = optax_by_columns(
        lambda v: optax.projections.projection_simplex(v, total), jnp.asarray(w)
    )
    assert_close(out, np.asarray(reference, np.float64), w)


@pytest.mark.parametrize(
    ("shape", "axis", "axes"),
    [
        ((5, 7), -1, (1,)),
        ((3, 3, 4, 6), [0, 1, 2], (0, 1, 2)),
        ((3, 3, 4, 6), (1, -1), (1, 3)),
        ((4, 5, 6), None, (0, 1, 2)),
    ],
)
def test_axes_are_the_slices_spanned(shape, axis, axes):
    w = data("normal", shape, seed=1) * 2
    expected = by_slices(lambda v: np_l1_ball(v, 1.5), w, axes)
    assert_close(L1Ball(1.5, axis=axis)(jnp.asarray(w)), expected, w)
    expected = by_slices(lambda v: np_simplex(v, 2.0), w, axes)
    assert_close(Simplex(2.0, axis=axis)(jnp.asarray(w)), expected, w)


def test_radius_far_below_the_entries_resolution():
    # The threshold is within an ulp of the largest entry: y_max = r is below float32's
    # resolution there, so the projection can only be accurate to an ulp of that entry.
    w = np.array([1e5, 3.0, -2.0], np.float32)
    out = np.asarray(L1Ball(1e-6, axis=None)(jnp.asarray(w)), np.float64)
    assert np.sum(np.abs(out)) <= 1e5 * F32_EPS
    np.testing.assert_array_equal(out[1:], [0.0, 0.0])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_dtypes_match_the_float32_oracle_to_their_rounding(dtype):
    w = jnp.asarray(data("normal", (32, 8)) * 3, dtype)
    w64 = np.asarray(w.astype(jnp.float32), np.float64)
    for c, fn in [(L1Ball(2.0), np_l1_ball), (Simplex(2.0), np_simplex)]:
        out = c(w)
        assert out.dtype == dtype
        expected = by_slices(lambda v, fn=fn: fn(v, 2.0), w64, (0,))
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=eps, atol=eps)


def test_float16_sums_accumulate_in_float32():
    # 2048 entries of 60: the L1 norm 122880 overflows float16 (max 65504).
    w = jnp.full((2048,), 60.0, jnp.float16)
    out = np.asarray(L1Ball(1.0, axis=None)(w), np.float64)
    np.testing.assert_allclose(out, 1 / 2048, rtol=1e-3)
    out = np.asarray(Simplex(1.0, axis=None)(w), np.float64)
    np.testing.assert_allclose(out, 1 / 2048, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# Exactness, gradients, transforms.


def test_slices_inside_the_ball_come_back_bit_for_bit():
    w = data("normal", (16, 4))
    w[:, 1] *= 0.5 / np.sum(np.abs(w[:, 1]))  # Inside the unit ball.
    w[:, 3] *= 1.0 / np.sum(np.abs(w[:, 3]))  # On its boundary (to float32 rounding).
    out = L1Ball(1.0)(jnp.asarray(w))
    assert_bitwise(out[:, 1], w[:, 1])
    assert np.sum(np.abs(np.asarray(out[:, 0], np.float64))) <= 1 + 4 * F32_EPS


def test_exact_simplex_points_come_back_bit_for_bit():
    w = np.array([[0.25, 0.0], [0.5, 1.0], [0.25, 0.0]], np.float32)
    assert_bitwise(Simplex()(jnp.asarray(w)), w)


def test_gradients_match_optax():
    # optax's sort-based projections are differentiable; both give the projection's Jacobian.
    w = jnp.asarray(data("normal", (24, 5)) * 2)
    g = jnp.asarray(data("normal", (24, 5), seed=3))
    pairs = [
        (L1Ball(1.0), lambda v: optax.projections.projection_l1_ball(v, 1.0)),
        (Simplex(1.0), lambda v: optax.projections.projection_simplex(v, 1.0)),
    ]
    for c, ref in pairs:
        ours = jax.grad(lambda w, c=c: jnp.sum(c(w) * g))(w)
        theirs = jax.grad(lambda w, ref=ref: jnp.sum(optax_by_columns(ref, w) * g))(w)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_vmap_and_jit():
    w = jnp.asarray(data("normal", (3, 10, 4)))
    c = L1Ball(1.0, axis=0)  # Per sample: columns of a (10, 4) matrix.
    out = jax.jit(jax.vmap(c))(w)
    assert_close(out, by_slices(lambda v: np_l1_ball(v, 1.0), np.asarray(w), (1,)), w)


def test_inside_constrain_slices_stay_feasible():
    rng = np.random.default_rng(0)
    params = {
        "w": Simplex()(jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)),
        "v": L1Ball(2.0)(jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)),
    }
    tx = optax.chain(optax.sgd(0.5), jaxcons.constrain({"w": Simplex(), "v": L1Ball(2.0)}))
    state = tx.init(params)
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p))
    )
    for _ in range(3):
        grads = jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.normal(size=x.shape) * 5, x.dtype), params
        )
        params, state = step(params, state, grads)
        w, v = np.asarray(params["w"], np.float64), np.asarray(params["v"], np.float64)
        assert np.all(w >= 0) and np.allclose(w.sum(axis=0), 1.0, rtol=0, atol=4 * F32_EPS)
        assert np.all(np.abs(v).sum(axis=0) <= 2.0 * (1 + 4 * F32_EPS))


# --------------------------------------------------------------------------------------------
# Properties.


@st.composite
def tensor_and_axis(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    entry = st.floats(-1e3, 1e3, width=32).map(lambda x: 0.0 if abs(x) < 1e-3 else x)
    w = draw(hnp.arrays(np.float32, shape, elements=entry))
    axes = tuple(sorted(draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))))
    return w, axes


@settings(max_examples=20, deadline=None)
@given(tensor_and_axis(), st.floats(1e-2, 1e2))
def test_l1_ball_properties(data, radius):
    w, axes = data
    c = L1Ball(radius, axis=list(axes))
    out = np.asarray(c(jnp.asarray(w)))
    norms = np.sum(np.abs(out.astype(np.float64)), axis=axes)
    # Each |w_i| - theta is rounded to float32: an error of up to an ulp of |w_i| per entry.
    n = int(np.prod([w.shape[a] for a in axes]))
    assert np.all(norms <= radius * (1 + 8 * F32_EPS) + 2 * n * F32_EPS * np.max(np.abs(w)))
    assert np.all(np.sign(out) * np.sign(w) >= 0)  # Never flips a sign.
    assert_close(out, by_slices(lambda v: np_l1_ball(v, radius), w, axes), w, ulps=16)
    again = np.asarray(c(jnp.asarray(out)))
    assert_close(again, out.astype(np.float64), w, ulps=16)


@settings(max_examples=20, deadline=None)
@given(tensor_and_axis(), st.floats(1e-2, 1e2))
def test_simplex_properties(data, total):
    w, axes = data
    c = Simplex(total, axis=list(axes))
    out = np.asarray(c(jnp.asarray(w)), np.float64)
    assert np.all(out >= 0)
    n = int(np.prod([w.shape[a] for a in axes]))
    scale = max(total, float(np.max(np.abs(w))))
    np.testing.assert_allclose(out.sum(axis=axes), total, rtol=0, atol=4 * n * F32_EPS * scale)
    assert_close(out, by_slices(lambda v: np_simplex(v, total), w, axes), w, ulps=16)


# --------------------------------------------------------------------------------------------
# Validation, config, registry.


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: L1Ball(0.0), r"radius must be > 0, got 0.0"),
        (lambda: L1Ball(-1), r"radius must be > 0, got -1"),
        (lambda: L1Ball(float("nan")), r"radius must be finite, got nan"),
        (lambda: L1Ball(True), r"radius must be a real number, got True"),
        (
            lambda: L1Ball(axis="0"),
            r"axis must be an int, a non-empty list/tuple of ints, or "
            r"None, got '0'",
        ),
        (lambda: Simplex(0), r"total must be > 0, got 0"),
        (lambda: Simplex(float("inf")), r"total must be finite, got inf"),
        (lambda: Simplex(axis=[]), r"axis must be an int, a non-empty list/tuple of ints"),
    ],
)
def test_validation_messages(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("c", [L1Ball(1.0, axis=2), Simplex(axis=[0, 2])], ids=repr)
def test_axis_out_of_range_names_the_path(c):
    params = {"layer": {"kernel": jnp.ones((4, 3))}}
    name = type(c).__name__
    with pytest.raises(
        ValueError,
        match=rf"{name} axis=.*: axis 2 is out of range for parameter "
        r"'layer/kernel' of shape \(4, 3\) \(rank 2\)",
    ):
        jaxcons.constrain({"**/kernel": c}).init(params)


@pytest.mark.parametrize(
    "c", [L1Ball(), L1Ball(0.5, axis=(0, 1)), Simplex(), Simplex(3, axis=None)], ids=repr
)
def test_config_round_trips_through_json(c):
    blob = json.loads(json.dumps(constraints.serialize(c)))
    back = constraints.deserialize(blob)
    assert back == c and hash(back) == hash(c)
    w = jnp.asarray(data("normal", (4, 3)) * 3)
    assert_bitwise(back(w), c(w))


def test_names_and_defaults():
    assert L1Ball().get_config() == {"radius": 1.0, "axis": 0}
    assert Simplex(axis=(0, 1)).get_config() == {"total": 1.0, "axis": [0, 1]}
    assert constraints.get("l1_ball") == L1Ball() and constraints.get("L1Ball") == L1Ball()
    assert constraints.get("simplex") == Simplex()
    assert constraints.l1_ball is L1Ball and jaxcons.simplex is Simplex
    assert repr(L1Ball(2.0, axis=None)) == "L1Ball(radius=2.0, axis=None)"
