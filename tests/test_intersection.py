"""`Intersection`: closed forms, Dykstra's algorithm against NumPy float64, validation, configs.

Oracles: Dykstra's algorithm written here in NumPy float64 (run long enough to converge), the
KKT form of the projection onto a box intersected with a Euclidean ball (clip the point scaled
by ``1 / (1 + lambda)``, with ``lambda`` found by bisection in float64), and optax's simplex
projection for the non-negative part of an L1 ball.
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
from jaxcons.constraints import (
    Clip,
    Intersection,
    L1Ball,
    MaxNorm,
    MinMaxNorm,
    NofM,
    NonNeg,
    Orthogonal,
    RadialConstraint,
    Simplex,
    SingularValueClip,
    SpectralNorm,
    TopK,
    UnitNorm,
)


class Orthant(jaxcons.Constraint):
    """max(w, 0) without elementwise bounds: Intersection cannot recognise it, so it runs
    Dykstra's algorithm."""

    convex = True

    def __call__(self, w):
        return jnp.maximum(w, jnp.zeros((), w.dtype))


class Cube(jaxcons.Constraint):
    """clip(w, -a, a) without elementwise bounds, for the same reason."""

    convex = True

    def __init__(self, a):
        self.a = a

    def __call__(self, w):
        return jnp.clip(w, -self.a, self.a)

    def get_config(self):
        return {"a": self.a}


def np_ball(r):
    def project(x):
        n = np.linalg.norm(x, axis=0, keepdims=True)
        return x * np.minimum(1.0, r / np.maximum(n, 1e-300))

    return project


def np_dykstra(x, projections, n_iter):
    x = np.asarray(x, np.float64)
    corrections = [np.zeros_like(x) for _ in projections]
    for _ in range(n_iter):
        for i, project in enumerate(projections):
            y = project(x + corrections[i])
            corrections[i] = x + corrections[i] - y
            x = y
    return x


def np_box_ball(x, lo, hi, r):
    """The projection onto {lo <= y <= hi} (containing 0) with every column's norm <= r: by
    the KKT conditions it is clip(x / (1 + lam), lo, hi), with lam >= 0 the smallest value
    meeting the norm, found by bisection in float64. Bounds may be per column."""
    x = np.asarray(x, np.float64)
    lo = np.broadcast_to(np.asarray(lo, np.float64), x.shape[1:])
    hi = np.broadcast_to(np.asarray(hi, np.float64), x.shape[1:])
    out = np.empty_like(x)
    for j in range(x.shape[1]):

        def norm(lam, v=x[:, j], a=lo[j], b=hi[j]):
            return np.linalg.norm(np.clip(v / (1 + lam), a, b))

        left, right = 0.0, 1.0
        if norm(0.0) > r:
            while norm(right) > r:
                right *= 2
            for _ in range(200):
                mid = (left + right) / 2
                left, right = (mid, right) if norm(mid) > r else (left, mid)
        else:
            right = 0.0
        out[:, j] = np.clip(x[:, j] / (1 + right), lo[j], hi[j])
    return out


def normal(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def f64(x):
    return np.asarray(x, np.float64)


# --------------------------------------------------------------------------------------------
# Closed forms.


@pytest.mark.parametrize("order", ["orthant_first", "ball_first"])
def test_orthant_and_ball_closed_form_is_the_limit_of_dykstra(order):
    x = normal((16, 5), scale=2.0)
    members = [NonNeg(), MaxNorm(1.0)]
    c = Intersection(*(members if order == "orthant_first" else members[::-1]))
    closed = f64(c(jnp.asarray(x)))
    np.testing.assert_allclose(closed, f64(MaxNorm(1.0)(NonNeg()(jnp.asarray(x)))), rtol=0, atol=0)
    converged = np_dykstra(x, [lambda v: np.maximum(v, 0), np_ball(1.0)], 2000)
    np.testing.assert_allclose(closed, converged, rtol=0, atol=1e-6)
    # Dykstra run by jaxcons itself, on a member it cannot recognise, agrees too.
    slow = f64(Intersection(Orthant(), MaxNorm(1.0), n_iter=2000, tol=0.0)(jnp.asarray(x)))
    np.testing.assert_allclose(slow, converged, rtol=0, atol=1e-6)


def test_orthant_and_l1_ball_closed_form_matches_optax():
    # {w >= 0, sum(w) <= r}: the positive part if its sum is at most r, else the simplex
    # projection of radius r (computed by optax, sort-based).
    x = normal((6, 6), scale=0.4)
    out = f64(Intersection(L1Ball(1.0), NonNeg())(jnp.asarray(x)))
    with jax.numpy_dtype_promotion("standard"):
        simplex = jax.vmap(lambda v: optax.projections.projection_simplex(v, 1.0), 1, 1)(
            jnp.asarray(x)
        )
    positive = np.maximum(f64(x), 0)
    expected = np.where(positive.sum(axis=0) <= 1.0, positive, f64(simplex))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert np.any(positive.sum(axis=0) > 1.0) and np.any(positive.sum(axis=0) <= 1.0)


@pytest.mark.parametrize("order", ["ball_first", "box_first"])
@pytest.mark.parametrize(
    ("box", "lo", "hi"),
    [
        (Clip(-0.1, 0.1), -0.1, 0.1),
        (Clip(-0.05, [0.2, 0.1, 0.05, 0.3]), -0.05, np.array([0.2, 0.1, 0.05, 0.3])),
        (Clip(max_value=0.08), -np.inf, 0.08),
    ],
    ids=["cube", "per_column", "one_sided"],
)
def test_box_and_ball_closed_form_matches_the_kkt_oracle(order, box, lo, hi):
    x = normal((64, 4))
    members = [MaxNorm(0.5), box] if order == "ball_first" else [box, MaxNorm(0.5)]
    out = f64(Intersection(*members)(jnp.asarray(x)))
    expected = np_box_ball(x, lo, hi, 0.5)
    np.testing.assert_allclose(out, expected, rtol=0, atol=4e-8)
    assert np.all((out >= np.float32(lo)) & (out <= np.asarray(hi, np.float32)))
    assert np.all(np.linalg.norm(out, axis=0) <= 0.5 * (1 + 4e-7))
    # Dykstra, run long enough on a box it cannot recognise, agrees.
    if np.ndim(hi) == 0 and lo == -hi:
        slow = f64(Intersection(MaxNorm(0.5), Cube(hi), n_iter=3000, tol=0.0)(jnp.asarray(x)))
        np.testing.assert_allclose(out, slow, rtol=0, atol=1e-7)


def test_box_and_ball_closed_form_gradient_matches_finite_differences():
    x = normal((8, 3), seed=4)
    c = Intersection(Clip(-0.3, 0.3), MaxNorm(0.6))
    g = normal((8, 3), seed=5)
    grad = np.asarray(jax.grad(lambda w: jnp.sum(c(w) * g))(jnp.asarray(x)), np.float64)
    eps = 1e-3
    numeric = np.zeros_like(grad)
    for i in np.ndindex(x.shape):
        up, down = x.astype(np.float64), x.astype(np.float64)
        up[i] += eps
        down[i] -= eps
        f = [float(np.sum(np_box_ball(v, -0.3, 0.3, 0.6) * g)) for v in (up, down)]
        numeric[i] = (f[0] - f[1]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=0, atol=2e-3)


def test_boxes_combine_into_one_clip():
    c = Intersection(Clip(-1.0, 0.5), Clip(0.0, 2.0), NonNeg())
    assert c.elementwise_bounds == (0.0, 0.5)
    x = normal((4, 3), scale=2.0)
    np.testing.assert_array_equal(c(jnp.asarray(x)), np.clip(x, 0.0, 0.5))
    arrays = Intersection(Clip([-1.0, 0.0, 1.0], 3.0), Clip(max_value=[[2.0], [1.5]]))
    lo, hi = arrays.elementwise_bounds
    np.testing.assert_array_equal(lo, [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(hi, [[2.0], [1.5]])
    x = normal((2, 3), scale=3.0)
    np.testing.assert_array_equal(arrays(jnp.asarray(x)), np.clip(x, lo, hi))


def test_box_intersection_is_exactly_feasible_through_constrain():
    # As for Clip: p + (P(x) - p) would land at 2.0 here; the box correction keeps it in.
    c = Intersection(Clip(-1e8, 5.0), Clip(max_value=1.0))
    params = {"w": jnp.array([-16777218.0], jnp.float32)}
    tx = jaxcons.constrain({"w": c})
    updates, _ = tx.update({"w": jnp.array([1e9], jnp.float32)}, tx.init(params), params)
    new = float(optax.apply_updates(params, updates)["w"][0])
    assert -1e8 <= new <= 1.0


_ENTRY = st.floats(-10.0, 10.0, width=32, allow_subnormal=False)  # XLA:CPU flushes them.


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(np.float32, (4, 3), elements=_ENTRY),
    hnp.arrays(np.float64, (2, 3), elements=st.floats(-2.0, 0.0, width=32, allow_subnormal=False)),
    hnp.arrays(np.float64, (2, 3), elements=st.floats(0.0, 2.0, width=32, allow_subnormal=False)),
)
def test_boxes_property(x, lows, highs):
    # Two per-column boxes (and a one-sided one): one clip onto the common box.
    c = Intersection(Clip(lows[0], highs[0]), Clip(lows[1], highs[1]), Clip(max_value=1.5))
    lo, hi = np.maximum(lows[0], lows[1]), np.minimum(np.minimum(highs[0], highs[1]), 1.5)
    out = f64(c(jnp.asarray(x)))
    np.testing.assert_array_equal(out, np.clip(x, lo.astype(np.float32), hi.astype(np.float32)))
    np.testing.assert_array_equal(f64(c(jnp.asarray(out, jnp.float32))), out)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, (5, 3), elements=_ENTRY), st.floats(0.1, 5.0))
def test_orthant_ball_property(x, radius):
    c = Intersection(MaxNorm(radius), NonNeg())
    out = c(jnp.asarray(x))
    y = f64(out)
    assert np.all(y >= 0)
    assert np.all(np.linalg.norm(y, axis=0) <= radius * (1 + 4e-7))
    ref = np_ball(radius)(np.maximum(f64(x), 0))
    np.testing.assert_allclose(y, ref, rtol=0, atol=4e-7 * max(1.0, float(np.max(np.abs(x)))))
    np.testing.assert_allclose(f64(c(out)), y, rtol=0, atol=4e-7 * max(radius, 1.0))


# --------------------------------------------------------------------------------------------
# Dykstra's algorithm.


def test_dykstra_matches_numpy_step_for_step():
    x = normal((32, 8))
    for n_iter in (1, 5, 50):
        ours = f64(Intersection(MaxNorm(0.5), Cube(0.1), n_iter=n_iter, tol=0.0)(jnp.asarray(x)))
        ref = np_dykstra(x, [np_ball(0.5), lambda v: np.clip(v, -0.1, 0.1)], n_iter)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_dykstra_convergence_figures_in_the_docstring():
    """The residuals the `Intersection` docstring quotes, measured here (256x64, float32)."""
    x = normal((256, 64))
    exact = np_box_ball(x, -0.1, 0.1, 0.5)

    def measure(members, n_iter):
        y = f64(jax.jit(Intersection(*members, n_iter=n_iter, tol=0.0))(jnp.asarray(x)))
        box = max(0.0, float(np.max(np.abs(y))) - 0.1)
        ball = max(0.0, float(np.max(np.linalg.norm(y, axis=0))) - 0.5)
        return float(np.max(np.abs(y - exact))), box, ball

    ball_first = [MaxNorm(0.5), Cube(0.1)]
    box_first = [Cube(0.1), MaxNorm(0.5)]
    d10, _, _ = measure(ball_first, 10)
    d100, _, _ = measure(ball_first, 100)
    d1000, box, ball = measure(ball_first, 1000)
    assert 3e-4 < d10 < 3e-3 and 2e-5 < d100 < 2e-4 and d1000 < 1e-7  # 9e-4 / 6e-5 / 2e-8
    assert box < 1e-8 and ball < 1e-7  # float32 rounding of 0.1 and of the norm
    d10, _, _ = measure(box_first, 10)
    d100, box, ball = measure(box_first, 100)
    d1000, _, _ = measure(box_first, 1000)
    assert 2e-2 < d10 < 2e-1 and 2e-3 < d100 < 2e-2 and d1000 < 2e-6  # 6e-2 / 6e-3 / 5e-7
    assert box == 0 and ball < 1e-7  # In both sets, yet far from the projection.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_dtypes_end_inside_the_last_set(dtype):
    x = jnp.asarray(normal((16, 4)), dtype)
    # A box that does not contain 0 has no closed form with a ball: Dykstra runs.
    out = Intersection(MaxNorm(1.0), Clip(0.1, 0.3), n_iter=20, tol=0.0)(x)
    assert out.dtype == dtype
    y = f64(out.astype(jnp.float32))
    # Neither bound is representable: the last clip rounds them inward.
    assert np.all((y >= 0.1) & (y <= 0.3))
    ref = np_dykstra(f64(x.astype(jnp.float32)), [np_ball(1.0), lambda v: np.clip(v, 0.1, 0.3)], 20)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2 * float(jnp.finfo(dtype).eps))


def test_simplex_and_box_through_constrain():
    # Mixture weights capped at 0.4 each: Dykstra inside a jitted training step.
    c = Intersection(Simplex(), Clip(max_value=0.4), n_iter=200)
    rng = np.random.default_rng(0)
    params = {"w": c(jnp.asarray(rng.normal(size=(5, 3)), jnp.float32))}
    tx = optax.chain(optax.sgd(0.5), jaxcons.constrain({"w": c}))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(
            params, state, {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
        )
        w = f64(params["w"])
        assert np.all(w <= 0.4 + 1e-6) and np.all(w >= -1e-6)
        np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Validation.


class Counter(jaxcons.StatefulConstraint):
    def init(self, w):
        return jnp.zeros((), jnp.int32)

    def project(self, w, state):
        return w, state + 1


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ((SpectralNorm(),), r"member 0, SpectralNorm\(.*\), keeps state between steps"),
        ((NonNeg(), Counter()), r"member 1, Counter\(\), keeps state between steps"),
        (
            (NonNeg(), TopK(3)),
            r"member 1, TopK\(k=3, axis=None\), declares convex=False: its set is not convex, "
            r"or its call is not the Euclidean projection onto it",
        ),
        ((NofM(),), r"member 0, NofM\(n=2, m=4, axis=0\), declares convex=False"),
        ((UnitNorm(),), r"member 0, UnitNorm\(axis=0\), declares convex=False"),
        ((MinMaxNorm(0.5, 1.0),), r"MinMaxNorm\(min_value=0.5, .*\), declares convex=False"),
        ((MinMaxNorm(0.0, 1.0, rate=0.5),), r"MinMaxNorm\(.*rate=0.5.*\), declares convex=False"),
        ((RadialConstraint("tf_keras"),), r"RadialConstraint\(mode='tf_keras'\), declares convex"),
        (
            (NonNeg(), SingularValueClip(0.5, 1.0)),
            r"member 1, SingularValueClip\(min_value=0.5, max_value=1.0\), declares convex=False",
        ),
        ((NonNeg(), Orthogonal()), r"member 1, Orthogonal\(.*\), keeps state between steps"),
        (
            (Clip(0.0, 1.0), Clip(2.0, 3.0)),
            r"Intersection of Clip\(min_value=0.0, max_value=1.0\), "
            r"Clip\(min_value=2.0, max_value=3.0\) is empty: at index \(\) the largest lower bound "
            r"2.0 exceeds the smallest upper bound 1.0",
        ),
        (
            (Clip([0.0, 0.0, 0.0], 1.0), Clip(-1.0, [1.0, 1.0])),
            r"the lower bound of shape \(3,\) and the upper bound of shape \(2,\) do not broadcast "
            r"together",
        ),
        (
            (Clip([0.0, 0.0, 0.0]), NonNeg(), Clip([0.0, 0.0])),
            r"bounds of shapes \[\(3,\), \(\), \(2,\)\] do not broadcast together",
        ),
    ],
)
def test_rejected_members(members, message):
    with pytest.raises(ValueError, match=message):
        Intersection(*members)


def test_type_errors():
    with pytest.raises(
        TypeError,
        match=r"Intersection members must be jaxcons.Constraint objects "
        r".*member 1 is <function .*> of type function",
    ):
        Intersection(NonNeg(), lambda w: w)
    with pytest.raises(TypeError, match=r"Intersection needs at least one constraint, got none"):
        Intersection()
    with pytest.raises(
        ValueError,
        match=r"The constraint identifier 'intersection' needs "
        r"arguments",
    ):
        constraints.get("intersection")


def test_n_iter_and_config_validation():
    with pytest.raises(ValueError, match=r"n_iter must be a positive int, got 0"):
        Intersection(NonNeg(), n_iter=0)
    with pytest.raises(
        ValueError,
        match=r"An Intersection config needs 'constraints': a list of "
        r"serialized constraints, got 'NonNeg'",
    ):
        constraints.deserialize({"class_name": "Intersection", "config": {"constraints": "NonNeg"}})
    with pytest.raises(ValueError, match=r"tol must be >= 0, got -0.001"):
        Intersection(NonNeg(), MaxNorm(), tol=-1e-3)
    with pytest.raises(ValueError, match=r"Unknown Intersection config keys \['rtol'\]"):
        constraints.deserialize(
            {"class_name": "Intersection", "config": {"constraints": [], "rtol": 1e-3}}
        )


def test_check_runs_every_members_check():
    params = {"dense": {"kernel": jnp.ones((4, 3))}}
    c = Intersection(NonNeg(), MaxNorm(1.0, axis=2))
    with pytest.raises(
        ValueError,
        match=r"MaxNorm axis=2: axis 2 is out of range for parameter "
        r"'dense/kernel' of shape \(4, 3\)",
    ):
        jaxcons.constrain({"**/kernel": c}).init(params)
    with pytest.raises(
        ValueError,
        match=r"Clip max_value of shape \(2,\) does not broadcast to "
        r"parameter 'dense/kernel' of shape \(4, 3\)",
    ):
        jaxcons.apply_constraints(
            params, {"**/kernel": Intersection(Clip(max_value=[1.0, 2.0]), MaxNorm())}
        )


# --------------------------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize(
    "c",
    [
        Intersection(NonNeg(), MaxNorm(1.0)),
        Intersection(MaxNorm(0.5, axis=[0, 1]), Clip([-1.0, 0.0, -1.0], 1.0), n_iter=7),
        Intersection(Simplex(), Intersection(Clip(max_value=0.5), NonNeg())),
        Intersection(L1Ball(2.0, axis=None)),
    ],
    ids=repr,
)
def test_config_round_trips_through_json(c):
    blob = json.loads(json.dumps(constraints.serialize(c)))
    back = constraints.deserialize(blob)
    assert type(back) is Intersection
    assert back == c and hash(back) == hash(c)
    x = jnp.asarray(normal((4, 3), scale=2.0))
    np.testing.assert_array_equal(back(x), c(x))


def test_config_format_and_repr():
    c = Intersection(NonNeg(), MaxNorm(1.0), n_iter=5)
    assert c.get_config() == {
        "constraints": [
            {"class_name": "NonNeg", "config": {}},
            {"class_name": "MaxNorm", "config": {"max_value": 1.0, "axis": 0}},
        ],
        "n_iter": 5,
        "tol": 1e-6,
    }
    assert repr(c) == "Intersection(NonNeg(), MaxNorm(max_value=1.0, axis=0), n_iter=5, tol=1e-06)"
    assert c != Intersection(NonNeg(), MaxNorm(1.0), n_iter=6)
    assert c != Intersection(NonNeg(), MaxNorm(1.0), n_iter=5, tol=1e-3)
    assert c != Intersection(MaxNorm(1.0), NonNeg(), n_iter=5)


def test_unregistered_member_works_but_does_not_serialize():
    c = Intersection(Orthant(), MaxNorm(1.0), n_iter=3)
    assert c == Intersection(Orthant(), MaxNorm(1.0), n_iter=3)
    hash(c)
    c(jnp.ones((2, 2)))
    with pytest.raises(
        ValueError,
        match=r"Orthant is not registered; decorate it with "
        r"@jaxcons.constraints.register",
    ):
        constraints.serialize(c)


# --------------------------------------------------------------------------------------------
# Dykstra's residual stop, and the cap reported.


def test_dykstra_stops_on_its_residual_inside_every_member():
    x = normal((32, 8), seed=7)
    c = Intersection(MaxNorm(0.5), Cube(0.1), tol=1e-6)
    out, residual, sweeps = c.solve(jnp.asarray(x))
    y = f64(out)
    assert 0 < int(sweeps) < c.n_iter and float(residual) <= 1e-6
    assert 440 <= int(sweeps) <= 500  # "about 470 sweeps" in the docstring.
    # Inside every member to tol (relative to max(1, max|x|) = 1), checked in float64.
    assert np.max(np.abs(y)) <= 0.1 * (1 + 1e-6)
    assert np.max(np.linalg.norm(y, axis=0)) <= 0.5 + 1e-6
    # And the projection itself: the KKT oracle of the box-ball intersection.
    np.testing.assert_allclose(y, np_box_ball(x, -0.1, 0.1, 0.5), rtol=0, atol=1e-5)
    # The plain call returns the same result.
    np.testing.assert_array_equal(c(jnp.asarray(x)), out)


def test_dykstra_reports_the_cap_when_it_stops_short():
    x = normal((32, 8), seed=7)
    c = Intersection(MaxNorm(0.5), Cube(0.1), n_iter=2, tol=1e-9)
    _, residual, sweeps = jax.jit(c.solve)(jnp.asarray(x))
    assert int(sweeps) == 2 and float(residual) > 1e-9


def test_dykstra_returns_a_feasible_input_without_a_sweep():
    x = normal((8, 3), seed=2, scale=0.01)
    c = Intersection(MaxNorm(0.5), Cube(0.1))
    out, residual, sweeps = c.solve(jnp.asarray(x))
    assert int(sweeps) == 0 and float(residual) == 0.0
    np.testing.assert_array_equal(out, x)


def test_dykstra_is_differentiable_in_reverse_mode():
    # The sweeps are a fori_loop that freezes once converged: reverse mode works, and the
    # gradient is that of the sweeps run, which matches float64 central differences.
    x = normal((6, 3), seed=9)
    g = normal((6, 3), seed=10)
    c = Intersection(MaxNorm(0.5), Cube(0.3))
    grad = jax.grad(lambda w: jnp.sum(c(w) * g))(jnp.asarray(x))
    exact = Intersection(Clip(-0.3, 0.3), MaxNorm(0.5))  # The closed form of the same set.
    closed = jax.grad(lambda w: jnp.sum(exact(w) * g))(jnp.asarray(x))
    np.testing.assert_allclose(grad, closed, rtol=0, atol=1e-3)


def test_closed_forms_report_no_sweep():
    x = normal((6, 3), seed=9)
    out, residual, sweeps = Intersection(Clip(-0.3, 0.3), MaxNorm(0.5)).solve(jnp.asarray(x))
    assert int(sweeps) == 0 and float(residual) == 0.0
    np.testing.assert_allclose(f64(out), np_box_ball(x, -0.3, 0.3, 0.5), rtol=0, atol=1e-6)


def test_solve_reports_the_rounding_of_a_narrow_dtype():
    # The sweeps converge in float32; rounding the result to bfloat16 moves it out of the ball
    # by about bf16's eps, relative. The residual says so instead of the float32 one.
    x = jnp.asarray(normal((32, 8), seed=7), jnp.bfloat16)
    c = Intersection(MaxNorm(0.5), Cube(0.1))
    out, residual, _ = c.solve(x)
    y = f64(out.astype(jnp.float32))
    # The residual's measure, in float64: how far the ball's projection would still move an
    # entry of the returned array (relative to max(1, max |y|) = 1).
    norms = np.linalg.norm(y, axis=0)
    moved = float(np.max(np.abs(y - y * np.minimum(1.0, 0.5 / norms))))
    assert moved > 1e-6  # The narrow dtype cannot hold tol = 1e-6 here ...
    # ... and the reported residual covers what was returned (to float32 rounding).
    assert float(residual) >= moved * (1 - 1e-3)


def test_solve_takes_one_array():
    c = Intersection(MaxNorm(0.5), Cube(0.1))
    with pytest.raises(TypeError, match=r"Intersection.solve takes one array, got dict"):
        c.solve({"w": jnp.ones((3, 2))})
