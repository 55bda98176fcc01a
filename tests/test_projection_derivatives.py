"""Derivatives of the projections, on their sets and off them, against independent oracles.

Each projection is written again here in NumPy float64 (columns normalised, the polar factor by
SVD, the PSD projection by eigendecomposition, the L1-ball and simplex projections by Duchi et
al.'s sort, singular values clipped or projected onto the L1 ball, the spectral-norm scaling).
The JVP along a random direction and the gradient of a random linear functional of a
constraint, in float32, are compared with central differences of that oracle at the same
point (the float32 point read as float64): ``(P(w + h d) - P(w - h d)) / 2h`` with
``h = 1e-6``, whose truncation and rounding errors (~1e-10) are far below the tolerance,
1e-4 relative to the largest entry.

The points on the sets are exactly feasible in float32 (each test checks that the constraint
returns them bit for bit, so its exact-return shortcut is what is differentiated): there the
derivative of a projection onto a set without interior is not the identity (the tangent
projection on a sphere or the Stiefel manifold, the symmetrisation on the PSD cone).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import np_l1_ball as np_l1_ball_vector
from oracles import np_simplex as np_simplex_vector

import jaxcons
from jaxcons.constraints import (
    PSD,
    L1Ball,
    MinMaxNorm,
    NuclearBall,
    Orthogonal,
    Simplex,
    SingularValueClip,
    SpectralNorm,
    UnitNorm,
)

H = 1e-6
RTOL = 1e-4

# --- oracles: NumPy, float64 ---------------------------------------------------------------------


def _column_norms(w):
    return np.sqrt(np.sum(w * w, axis=0, keepdims=True))


def np_unit_norm(w):
    return w / _column_norms(w)


def np_min_max_norm(a, b, rate=1.0):
    def project(w):
        n = _column_norms(w)
        inside = (n >= a) & (n <= b)
        desired = rate * np.clip(n, a, b) + (1 - rate) * n
        return np.where(inside, w, w * desired / n)

    return project


def _as_matrix(w):
    return w.reshape(-1, w.shape[-1])


def np_polar(scale):
    def project(w):
        u, _, vh = np.linalg.svd(_as_matrix(w), full_matrices=False)
        return (scale * u @ vh).reshape(w.shape)

    return project


def np_psd(c):
    def project(w):
        sym = (w + np.swapaxes(w, -1, -2)) / 2
        lam, q = np.linalg.eigh(sym)
        return (q * np.maximum(lam, c)[..., None, :]) @ np.swapaxes(q, -1, -2)

    return project


def np_spectral_norm(c):
    def project(w):
        return w * min(1.0, c / np.linalg.norm(_as_matrix(w), 2))

    return project


def np_singular_value_clip(a, b):
    def project(w):
        u, s, vh = np.linalg.svd(_as_matrix(w), full_matrices=False)
        return ((u * np.clip(s, a, b)) @ vh).reshape(w.shape)

    return project


def np_nuclear_ball(radius):
    def project(w):
        u, s, vh = np.linalg.svd(_as_matrix(w), full_matrices=False)
        return ((u * np_l1_ball_vector(s, radius)) @ vh).reshape(w.shape)

    return project


def np_l1_ball(radius, axis=0):
    def project(w):
        if axis is None:
            return np_l1_ball_vector(w.reshape(-1), radius).reshape(w.shape)
        return np.stack([np_l1_ball_vector(col, radius) for col in w.T], axis=1)

    return project


def np_simplex(total):
    def project(w):
        return np.stack([np_simplex_vector(col, total) for col in w.T], axis=1)

    return project


# --- the check -----------------------------------------------------------------------------------


def _close(got, expected):
    got = np.asarray(got, np.float64)
    assert np.all(np.isfinite(got))
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * scale)


def _check(constraint, oracle, w, seed=0):
    """The JVP and the gradient of ``<constraint(w), g>`` at the float32 point ``w``, against
    central differences of ``oracle`` (float64) at the same point."""
    w32 = jnp.asarray(w, jnp.float32)
    w = np.asarray(w32, np.float64)
    rng = np.random.default_rng(seed)
    d, g = rng.normal(size=w.shape), rng.normal(size=w.shape)

    expected_jvp = (oracle(w + H * d) - oracle(w - H * d)) / (2 * H)
    jvp = jax.jit(lambda x, dx: jax.jvp(constraint, (x,), (dx,))[1])
    _close(jvp(w32, jnp.asarray(d, jnp.float32)), expected_jvp)

    expected_grad = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[index] = H
        expected_grad[index] = np.sum((oracle(w + e) - oracle(w - e)) * g) / (2 * H)
    grad = jax.jit(jax.grad(lambda x, g: jnp.sum(constraint(x) * g)))
    _close(grad(w32, jnp.asarray(g, jnp.float32)), expected_grad)


def _assert_on_the_set(constraint, w):
    """``w`` (as float32) is exactly feasible: the constraint returns it bit for bit."""
    w32 = jnp.asarray(w, jnp.float32)
    np.testing.assert_array_equal(np.asarray(constraint(w32)), np.asarray(w32))


# --- points --------------------------------------------------------------------------------------

# Columns of exactly unit norm in float32.
UNIT = np.array(
    [[0.6, 0.8, 0, 0], [0.5, 0.5, 0.5, 0.5], [0, -0.28, 0, 0.96], [0.36, 0.48, 0.8, 0]]
).T


def _with_norms(norms, rows=4, seed=0):
    w = np.random.default_rng(seed).normal(size=(rows, len(norms)))
    return w / _column_norms(w) * np.asarray(norms)


def _orthonormal(shape, seed=0):
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    tall = rows >= cols
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(max(rows, cols), min(rows, cols))))
    return (q if tall else q.T).reshape(shape)


def _with_singular_values(s, rows, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, len(s))))
    v, _ = np.linalg.qr(rng.normal(size=(len(s), len(s))))
    return (u * np.asarray(s)) @ v.T


def _signed_permutation():
    w = np.zeros((4, 3))
    w[[2, 0, 3], [0, 1, 2]] = [1.0, -1.0, 1.0]
    return w


# --- sphere-like sets: UnitNorm, MinMaxNorm --------------------------------------------------


def test_unit_norm_the_issue_example():
    w = jnp.array([[0.6], [0.8]], jnp.float32)
    got = jax.grad(lambda w: UnitNorm()(w)[0, 0])(w)
    x = np.asarray(w, np.float64)
    expected = np.array(
        [
            (np_unit_norm(x + e)[0, 0] - np_unit_norm(x - e)[0, 0]) / (2 * H)
            for e in (np.array([[H], [0.0]]), np.array([[0.0], [H]]))
        ]
    ).reshape(2, 1)  # (I - w w^T) e_0 = [0.64, -0.48].
    _close(got, expected)


def test_unit_norm_on_the_sphere():
    _assert_on_the_set(UnitNorm(), UNIT)
    _check(UnitNorm(), np_unit_norm, UNIT)


def test_unit_norm_off_the_sphere():
    _check(UnitNorm(), np_unit_norm, _with_norms([0.5, 1.4, 2.0]))


@pytest.mark.parametrize(
    ("a", "b", "rate", "w"),
    [
        (1.0, 1.0, 1.0, UNIT),  # On the unit sphere (the set has no interior).
        (1.0, 1.0, 1.0, _with_norms([0.5, 1.4, 2.0])),
        (1.0, 1.0, 0.5, UNIT),  # Not a projection: the derivative of its formula.
        (0.5, 2.0, 1.0, _with_norms([0.7, 1.0, 1.5])),  # Inside the shell: the identity.
        (0.5, 2.0, 1.0, _with_norms([0.2, 1.0, 3.0])),
    ],
    ids=["sphere_on", "sphere_off", "sphere_rate_on", "shell_inside", "shell_off"],
)
def test_min_max_norm(a, b, rate, w):
    c = MinMaxNorm(a, b, rate=rate)
    if a == b and w is UNIT:
        _assert_on_the_set(c, w)
    _check(c, np_min_max_norm(a, b, rate), w)


# --- the Stiefel manifold: Orthogonal -------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "scale"),
    [((6, 4), 1.0), ((6, 4), 2.0), ((4, 6), 1.0), ((2, 2, 2, 3), 1.0)],
    ids=["tall", "tall_scaled", "wide", "conv"],
)
def test_orthogonal_on_the_set(shape, scale):
    w = scale * _orthonormal(shape)
    _assert_on_the_set(Orthogonal(scale), w)
    _check(Orthogonal(scale), np_polar(scale), w)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)], ids=["tall", "wide"])
def test_orthogonal_off_the_set(shape):
    w = np.random.default_rng(4).normal(size=shape)
    _check(Orthogonal(), np_polar(1.0), w)


@pytest.mark.parametrize(
    ("make", "oracle"),
    [
        (lambda: Orthogonal(), np_polar(1.0)),
        (lambda: SingularValueClip(1.0, 1.0), np_singular_value_clip(1.0, 1.0)),
        # On the ball's boundary (clipped singular values at 1) the projection has no
        # derivative; the one from inside (the identity) is only checked to be finite.
        (lambda: SingularValueClip(0.0, 1.0), None),
    ],
    ids=["orthogonal", "svc_equal_bounds", "svc_ball"],
)
@pytest.mark.parametrize("shape", [(64, 32), (4, 4), (16, 24)])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_projections_of_their_own_output_are_exact_with_finite_derivatives(
    make, oracle, shape, seed
):
    # The projection's own output (an SVD's polar factor reads a few ulps off the set) must be
    # recognised as feasible: returned bit for bit (idempotent), `violations` 0, and
    # differentiated as a point of the set (finite: no SVD derivative at equal singular values).
    c = make()
    w = c(jnp.asarray(2.0 * _random(shape, seed), jnp.float32))
    np.testing.assert_array_equal(np.asarray(c(w)), np.asarray(w))
    assert float(jaxcons.violations({"w": w}, {"w": c})["w"]) == 0.0
    if oracle is None:
        g = jnp.asarray(_random(shape, seed + 10), jnp.float32)
        grad = jax.grad(lambda x: jnp.sum(c(x) * g))(w)
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(g))  # From inside.
    else:
        _check(c, oracle, np.asarray(w, np.float64), seed=seed)


# --- the PSD cone ---------------------------------------------------------------------------------


def test_psd_at_the_identity_is_finite_and_symmetrises():
    # Every eigenvalue is 1: eigh's own derivative divides by their zero gaps.
    _assert_on_the_set(PSD(), np.eye(3))
    _check(PSD(), np_psd(0.0), np.eye(3))


@pytest.mark.parametrize("c", [0.0, 0.5])
def test_psd_inside_the_cone(c):
    a = np.random.default_rng(5).normal(size=(2, 3, 3))
    w = a @ np.swapaxes(a, -1, -2) + (c + 0.5) * np.eye(3)  # Symmetric, also once rounded.
    _assert_on_the_set(PSD(c), w)
    _check(PSD(c), np_psd(c), w)


@pytest.mark.parametrize("c", [0.0, 0.5])
def test_psd_off_the_cone(c):
    w = np.random.default_rng(6).normal(size=(2, 3, 3))
    _check(PSD(c), np_psd(c), w)


def test_psd_on_the_boundary_is_finite_and_from_inside():
    # A singular PSD matrix with a repeated zero eigenvalue: P has no derivative there; the
    # one from inside the cone (the symmetrisation) is returned, without NaN.
    w = jnp.asarray(np.diag([1.0, 0.0, 0.0]), jnp.float32)
    _assert_on_the_set(PSD(), w)
    d = np.random.default_rng(7).normal(size=(3, 3))
    _, got = jax.jvp(PSD(), (w,), (jnp.asarray(d, jnp.float32),))
    _close(got, (d + d.T) / 2)
    grad = jax.grad(lambda x: jnp.sum(PSD()(x) * jnp.asarray(d, jnp.float32)))(w)
    _close(grad, (d + d.T) / 2)


# --- balls: SpectralNorm, SingularValueClip, NuclearBall, L1Ball, Simplex ----------------------


@pytest.mark.parametrize("sigma", [0.5, 3.0], ids=["inside", "outside"])
def test_spectral_norm(sigma):
    w = _with_singular_values([sigma, 0.4, 0.1], rows=5)
    _check(SpectralNorm(1.0), np_spectral_norm(1.0), w)


@pytest.mark.parametrize(
    ("a", "b", "w"),
    [
        (0.5, 1.0, _with_singular_values([0.9, 0.7, 0.6], rows=5)),  # Inside: the identity.
        (0.5, 1.0, 0.75 * _orthonormal((5, 3))),  # Inside, singular values all equal.
        (1.0, 1.0, _signed_permutation()),  # On the set, which has no interior.
        (0.5, 1.0, _with_singular_values([2.5, 0.8, 0.1], rows=5)),
        (0.0, 1.0, _with_singular_values([2.5, 1.5, 0.4], rows=5)),
    ],
    ids=["inside", "inside_repeated", "orthogonal_on", "band_off", "ball_off"],
)
def test_singular_value_clip(a, b, w):
    _check(SingularValueClip(a, b), np_singular_value_clip(a, b), w)


def test_singular_value_clip_feasible_points_are_exact():
    _assert_on_the_set(SingularValueClip(0.5, 1.0), 0.75 * _orthonormal((5, 3)))
    _assert_on_the_set(SingularValueClip(1.0, 1.0), _signed_permutation())


@pytest.mark.parametrize(
    ("radius", "w"),
    [
        (2.0, _with_singular_values([0.9, 0.5, 0.2], rows=5)),  # Inside.
        (1.0, 0.2 * _orthonormal((5, 3))),  # Inside, singular values all equal.
        (1.5, _with_singular_values([2.0, 0.9, 0.2], rows=5)),  # Outside, rank 2 after.
    ],
    ids=["inside", "inside_repeated", "outside"],
)
def test_nuclear_ball(radius, w):
    _check(NuclearBall(radius), np_nuclear_ball(radius), w)


def test_nuclear_ball_feasible_point_with_equal_singular_values_is_exact():
    _assert_on_the_set(NuclearBall(1.0), 0.2 * _orthonormal((5, 3)))


def _random(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


def _l1_inside():
    w = np.random.default_rng(8).normal(size=(5, 3))
    w[1, 0] = w[3, 2] = 0.0  # Zero entries: inside the ball the derivative is still 1 there.
    return w / np.sum(np.abs(w), axis=0, keepdims=True) * np.array([0.3, 0.6, 0.9])


@pytest.mark.parametrize(
    ("c", "oracle", "w"),
    [
        (L1Ball(1.0), np_l1_ball(1.0), _l1_inside()),
        (L1Ball(1.0), np_l1_ball(1.0), _random((5, 3), 9)),
        (L1Ball(2.0, axis=None), np_l1_ball(2.0, None), 0.5 * _random((5, 3), 10)),
        (Simplex(), np_simplex(1.0), np.array([[24, 20, 12, 8], [8, 8, 16, 32]]).T / 64.0),
        (Simplex(), np_simplex(1.0), _random((5, 3), 11)),
    ],
    ids=["l1_inside", "l1_support", "l1_whole_support", "simplex_on", "simplex_support"],
)
def test_l1_ball_and_simplex(c, oracle, w):
    _check(c, oracle, w)


def test_l1_ball_and_simplex_points_are_exact():
    _assert_on_the_set(L1Ball(1.0), _l1_inside())
    _assert_on_the_set(Simplex(), np.array([[24, 20, 12, 8], [8, 8, 16, 32]]).T / 64.0)


# --- transforms -------------------------------------------------------------------------------


def test_jit_vmap_and_second_derivatives_on_the_sphere():
    w = jnp.asarray(UNIT, jnp.float32)
    g = jnp.asarray(np.random.default_rng(12).normal(size=UNIT.shape), jnp.float32)

    def loss(x):
        return jnp.sum(jaxcons.UnitNorm()(x) * g)

    eager = jax.grad(loss)(w)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(w), eager, rtol=1e-6, atol=1e-7)
    batched = jax.vmap(jax.grad(loss))(jnp.stack([w, 2 * w]))
    np.testing.assert_allclose(batched[0], eager, rtol=1e-6, atol=1e-7)
    # Off the sphere the derivative is that of w / |w|: at 2w, half of the one at w.
    np.testing.assert_allclose(batched[1], eager / 2, rtol=1e-5, atol=1e-6)
    hessian = jax.jit(jax.hessian(loss))(w)
    assert np.all(np.isfinite(np.asarray(hessian)))
