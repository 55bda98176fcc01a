"""Derivatives through the norm-based constraints and penalties.

Their norms are plain ``sqrt(sum(x**2))`` in the forward pass, with the derivative given by a
custom rule that is 0 (not NaN) at a zero vector. These tests check that rule against an
independent oracle, central finite differences of the same maths written in NumPy float64,
and its behaviour at zero (where the derivative is the zero subgradient), under ``jax.grad``,
``jax.jvp``, ``jax.vmap`` and second derivatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcons
from jaxcons import GroupLasso, MaxNorm, MinMaxNorm, UnitNorm


def _np_norms(w: np.ndarray, axis: int) -> np.ndarray:
    return np.sqrt(np.sum(w * w, axis=axis, keepdims=True))


def _np_max_norm(w: np.ndarray) -> np.ndarray:
    n = _np_norms(w, 0)
    return w * np.where(n > 1.0, 1.0 / np.where(n > 1.0, n, 1.0), 1.0)


def _np_unit_norm(w: np.ndarray) -> np.ndarray:
    return w / _np_norms(w, 0)


def _np_min_max_norm(w: np.ndarray) -> np.ndarray:
    n = _np_norms(w, 0)
    desired = 0.5 * np.clip(n, 0.8, 1.2) + 0.5 * n
    return w * desired / n


CASES = [
    ("max_norm", MaxNorm(1.0), _np_max_norm),
    ("unit_norm", UnitNorm(), _np_unit_norm),
    ("min_max_norm", MinMaxNorm(0.8, 1.2, rate=0.5), _np_min_max_norm),
]


def _kernel() -> np.ndarray:
    """A (4, 3) kernel whose columns have norms 0.5, 1.0 + 0.4 and 2.0: each clearly on one
    side of every bound, so the maps are smooth around it and finite differences are exact
    to their truncation error."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3))
    return w / _np_norms(w, 0) * np.array([0.5, 1.4, 2.0])


def _finite_difference_grad(f, w: np.ndarray, weights: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        step = np.zeros_like(w)
        step[index] = h
        grad[index] = (np.sum(f(w + step) * weights) - np.sum(f(w - step) * weights)) / (2 * h)
    return grad


@pytest.mark.parametrize(("name", "constraint", "oracle"), CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_float64_finite_differences(name, constraint, oracle):
    w = _kernel()
    weights = np.random.default_rng(1).normal(size=w.shape)
    expected = _finite_difference_grad(oracle, w, weights)
    got = jax.jit(jax.grad(lambda x: jnp.sum(constraint(x) * weights.astype(np.float32))))(
        jnp.asarray(w, jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize(("name", "constraint", "oracle"), CASES, ids=[c[0] for c in CASES])
def test_jvp_matches_float64_finite_differences(name, constraint, oracle):
    w = _kernel()
    direction = np.random.default_rng(2).normal(size=w.shape)
    h = 1e-6
    expected = (oracle(w + h * direction) - oracle(w - h * direction)) / (2 * h)
    _, got = jax.jvp(
        constraint, (jnp.asarray(w, jnp.float32),), (jnp.asarray(direction, jnp.float32),)
    )
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=2e-4, atol=2e-5)


def test_group_lasso_gradient_matches_float64_finite_differences():
    w = _kernel()
    reg = GroupLasso(0.3, axis=0)
    expected = _finite_difference_grad(lambda x: 0.3 * np.sum(_np_norms(x, 0)), w, np.ones(1))
    got = jax.grad(reg)(jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=2e-4, atol=2e-5)


def test_group_lasso_derivatives_at_a_zero_group_are_zero():
    w = jnp.asarray(_kernel(), jnp.float32).at[:, 1].set(0.0)
    reg = GroupLasso(1.0, axis=0)
    grad = jax.grad(reg)(w)
    np.testing.assert_array_equal(np.asarray(grad[:, 1]), np.zeros(4, np.float32))
    expected = np.asarray(w[:, [0, 2]]) / np.linalg.norm(np.asarray(w[:, [0, 2]]), axis=0)
    np.testing.assert_allclose(np.asarray(grad[:, [0, 2]]), expected, rtol=1e-6)
    hessian = jax.hessian(reg)(w)
    assert np.all(np.isfinite(np.asarray(hessian)))
    np.testing.assert_array_equal(np.asarray(hessian[:, 1, :, 1]), np.zeros((4, 4), np.float32))


@pytest.mark.parametrize(("name", "constraint", "oracle"), CASES, ids=[c[0] for c in CASES])
def test_gradient_at_zero_kernel_is_zero_under_vmap(name, constraint, oracle):
    del oracle
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)
    batch = jnp.zeros((2, 4, 3), jnp.float32).at[1].set(jnp.asarray(_kernel(), jnp.float32))
    grads = jax.vmap(jax.grad(lambda x: jnp.sum(constraint(x) * weights)))(batch)
    # Zero columns are returned as they are (no rescaling branch is taken), so the derivative
    # there is the identity's: finite, with no NaN leaking from the untaken branch.
    expected_zero = np.asarray(weights)
    np.testing.assert_allclose(np.asarray(grads[0]), expected_zero, rtol=1e-6, atol=0)
    single = jax.grad(lambda x: jnp.sum(constraint(x) * weights))(batch[1])
    np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(single), rtol=1e-6)


def test_a_nan_group_makes_the_group_lasso_penalty_nan_rather_than_vanish():
    # The norm is plain sqrt(sum(x**2)): a NaN in a group propagates into the penalty (a guard
    # on the squared norm would have counted that group as a zero vector and hidden the NaN).
    w = jnp.array([[jnp.nan, 1.0], [2.0, 1.0]], jnp.float32)
    assert np.isnan(float(GroupLasso(1.0, axis=0)(w)))
    assert np.isnan(float(jaxcons.penalty({"k": w}, {"k": GroupLasso(1.0, axis=0)})))
    prox = np.asarray(GroupLasso(1.0, axis=0).prox(w, 0.1))
    assert np.isnan(prox[0, 0]) and np.all(np.isfinite(prox[:, 1]))
