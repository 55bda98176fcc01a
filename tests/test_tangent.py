"""Tangent projections (UnitNorm's spheres, Orthogonal's Stiefel manifold), `jaxcons.tangent`
and `jaxcons.chain(tangent=...)`: checked in float64 against the manifolds' geometry."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import jaxcons
from jaxcons import NonNeg, Orthogonal, UnitNorm

STIEFEL_SHAPES = [(6, 3), (3, 6), (4, 4), (3, 3, 2, 4)]


def _orthonormal(shape, scale, seed):
    """A float64 kernel on the scaled Stiefel manifold (tall or wide view)."""
    w = np.random.default_rng(seed).normal(size=shape)
    u, _ = scipy.linalg.polar(w.reshape(-1, shape[-1]))
    return scale * u.reshape(shape)


def _view(a):
    a = np.asarray(a, np.float64)
    m = a.reshape(-1, a.shape[-1])
    return m if m.shape[0] >= m.shape[1] else m.T  # The tall view: columns orthonormal.


def _x64(fn, *args):
    with jax.enable_x64(True):
        return np.asarray(fn(*(jnp.asarray(a) for a in args)))


# --- Stiefel ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", STIEFEL_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_stiefel_tangent_is_the_orthogonal_projection(shape, scale):
    w = _orthonormal(shape, scale, seed=sum(shape))
    g = np.random.default_rng(1).normal(size=shape)
    t = _x64(Orthogonal(scale).tangent, w, g)
    W, T, G = _view(w), _view(t), _view(g)
    # In the tangent space {Z : W^T Z + Z^T W = 0} ...
    np.testing.assert_allclose(W.T @ T + T.T @ W, 0, atol=1e-12)
    # ... and the removed part G - T is in the normal space {W S : S symmetric}.
    s = W.T @ (G - T) / scale**2
    np.testing.assert_allclose(s, s.T, atol=1e-12)
    np.testing.assert_allclose(W @ s, G - T, atol=1e-12)
    # So T is orthogonal to every normal vector W S.
    rng = np.random.default_rng(2)
    for _ in range(5):
        a = rng.normal(size=(W.shape[1], W.shape[1]))
        assert abs(np.sum(T * (W @ (a + a.T)))) <= 1e-11
    # A tangent vector comes back unchanged (a projection).
    np.testing.assert_allclose(_x64(Orthogonal(scale).tangent, w, t), t, atol=1e-12)


def test_stiefel_tangent_keeps_the_update_dtype():
    w = jnp.asarray(_orthonormal((6, 3), 1.0, seed=3), jnp.bfloat16)
    g = jnp.ones((6, 3), jnp.float32)
    assert Orthogonal().tangent(w, g).dtype == jnp.float32
    assert Orthogonal().tangent(w.astype(jnp.float32), g.astype(jnp.bfloat16)).dtype == (
        jnp.bfloat16
    )


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_tangent_step_stays_closer_to_stiefel_than_a_plain_step(scale):
    w = _orthonormal((8, 4), scale, seed=4)
    g = np.random.default_rng(5).normal(size=(8, 4))
    t = _x64(Orthogonal(scale).tangent, w, g)

    def distance(x):
        return np.linalg.norm(x.T @ x / scale**2 - np.eye(4))

    for lr in (1e-2, 1e-3):
        plain, riemannian = distance(w - lr * g), distance(w - lr * t)
        # First order in lr for the plain step, second order for the tangent step.
        assert riemannian < 0.1 * plain
        np.testing.assert_allclose(riemannian, lr**2 * np.linalg.norm(t.T @ t) / scale**2)


# --- spheres --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "axis"), [((5, 3), 0), ((5, 3), 1), ((3, 3, 2, 4), (0, 1, 2))])
def test_sphere_tangent_removes_the_radial_component_per_slice(shape, axis):
    rng = np.random.default_rng(6)
    w = np.asarray(_x64(UnitNorm(axis=axis), rng.normal(size=shape)))
    g = rng.normal(size=shape)
    t = _x64(UnitNorm(axis=axis).tangent, w, g)
    axes = (axis,) if isinstance(axis, int) else axis
    np.testing.assert_allclose(np.sum(w * t, axis=axes), 0, atol=1e-12)
    # The removed part is radial: parallel to w, slice by slice.
    radial = g - t
    coef = np.sum(w * g, axis=axes, keepdims=True)
    np.testing.assert_allclose(radial, coef * w, atol=1e-12)


def test_sphere_tangent_leaves_zero_slices_alone():
    w = jnp.array([[1.0, 0.0], [0.0, 0.0]])  # Column 1 is zero.
    g = jnp.array([[2.0, 5.0], [3.0, 7.0]])
    np.testing.assert_array_equal(UnitNorm(axis=0).tangent(w, g), [[0.0, 5.0], [3.0, 7.0]])
    grad = jax.grad(lambda w: jnp.sum(UnitNorm(axis=0).tangent(w, g)))(w)
    assert np.all(np.isfinite(grad))


def test_a_tangent_step_stays_closer_to_the_sphere():
    rng = np.random.default_rng(7)
    w = np.asarray(_x64(UnitNorm(axis=0), rng.normal(size=(6, 4))))
    g = rng.normal(size=(6, 4))
    t = _x64(UnitNorm(axis=0).tangent, w, g)

    def distance(x):
        return np.max(np.abs(np.linalg.norm(x, axis=0) - 1))

    assert distance(w - 1e-2 * t) < 0.1 * distance(w - 1e-2 * g)


# --- the transform ----------------------------------------------------------------------------


def test_tangent_projects_governed_updates_only():
    w = _orthonormal((6, 3), 1.0, seed=8).astype(np.float32)
    params = {"w": jnp.asarray(w), "b": jnp.zeros(3)}
    grads = {"w": jnp.ones((6, 3)), "b": jnp.ones(3)}
    tx = jaxcons.tangent({"w": Orthogonal()})
    out, state = jax.jit(tx.update)(grads, tx.init(params), params)
    assert state == optax.EmptyState()
    np.testing.assert_allclose(out["w"], Orthogonal().tangent(params["w"], grads["w"]))
    np.testing.assert_array_equal(out["b"], grads["b"])


def test_tangent_errors():
    params = {"w": jnp.eye(3), "b": jnp.ones(3)}
    msg = (
        "jaxcons.tangent: the constraint NonNeg() for parameter 'b' has no tangent space "
        "(its set is not a smooth manifold"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.tangent({"w": Orthogonal(), "b": NonNeg()}).init(params)
    with pytest.raises(ValueError, match=re.escape("has no tangent space")):
        jaxcons.tangent({"w": lambda w: w}).init(params)
    with pytest.raises(ValueError, match=re.escape("constraint rule 'v' matches no parameter")):
        jaxcons.tangent({"v": Orthogonal()}).init(params)
    tx = jaxcons.tangent({"w": Orthogonal()})
    msg = "jaxcons.tangent needs the current params: call tx.update(updates, state, params)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update(params, tx.init(params))
    with pytest.raises(TypeError, match="is a regularizer, not a constraint"):
        jaxcons.tangent({"w": jaxcons.L2()})


def test_a_tangent_returning_the_wrong_shape_is_an_error():
    class Broken(jaxcons.Constraint):
        def __call__(self, w):
            return w

        def tangent(self, w, g):
            return g[:1]

    params = {"w": jnp.eye(3)}
    tx = jaxcons.tangent({"w": Broken()})
    msg = "The tangent projection of Broken() for parameter 'w' returned an array of shape (1, 3)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update(params, tx.init(params), params)


def test_chain_tangent_true_is_tangent_first_and_constrain_last():
    w = _orthonormal((6, 3), 1.0, seed=9).astype(np.float32)
    params = {"w": jnp.asarray(w), "b": jnp.ones(3)}
    grads = {
        "w": jnp.asarray(np.random.default_rng(10).normal(size=(6, 3)), jnp.float32),
        "b": jnp.ones(3),
    }
    rules = {"w": Orthogonal()}
    reg = {"b": jaxcons.L2(0.1)}
    built = jaxcons.chain(optax.sgd(0.1), constraints=rules, regularizers=reg, tangent=True)
    manual = optax.chain(
        jaxcons.regularize(reg),
        jaxcons.tangent(rules),
        optax.sgd(0.1),
        jaxcons.constrain(rules),
    )
    a, _ = built.update(grads, built.init(params), params)
    b, _ = manual.update(grads, manual.init(params), params)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # Without tangent the step differs (the normal part of the gradient is kept).
    plain = jaxcons.chain(optax.sgd(0.1), constraints=rules, regularizers=reg)
    c, _ = plain.update(grads, plain.init(params), params)
    assert not np.array_equal(np.asarray(a["w"]), np.asarray(c["w"]))


def test_chain_tangent_rules_of_their_own():
    params = {"w": jnp.eye(3), "b": jnp.ones(3)}
    rules = {"w": Orthogonal(), "b": NonNeg()}
    with pytest.raises(ValueError, match="NonNeg\\(\\) for parameter 'b' has no tangent space"):
        jaxcons.chain(optax.sgd(0.1), constraints=rules, tangent=True).init(params)
    tx = jaxcons.chain(optax.sgd(0.1), constraints=rules, tangent={"w": Orthogonal()})
    tx.update(params, tx.init(params), params)


def test_chain_tangent_validation():
    msg = "jaxcons.chain got tangent=True but no constraints: a step projected onto tangent"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.chain(optax.sgd(0.1), regularizers={"w": jaxcons.L2()}, tangent=True)
    msg = "jaxcons.chain got tangent='yes': expected True (the constraints' own tangent spaces)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.chain(optax.sgd(0.1), constraints={"w": Orthogonal()}, tangent="yes")
    with pytest.raises(ValueError, match=re.escape("got tangent=1: expected True")):
        jaxcons.chain(optax.sgd(0.1), constraints={"w": Orthogonal()}, tangent=1)


def test_riemannian_sgd_finds_the_dominant_subspace():
    # max trace(W^T A W) over W with orthonormal columns: the sum of the k largest
    # eigenvalues of A (Ky Fan). Riemannian SGD: tangent, sgd, Orthogonal as retraction.
    rng = np.random.default_rng(11)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    eigenvalues = np.array([5.0, 4.0, 3.0, 1.0, 0.8, 0.5, 0.3, 0.2, 0.1, 0.0])
    a = jnp.asarray((q * eigenvalues) @ q.T, jnp.float32)
    rules = {"w": Orthogonal()}
    params = jaxcons.apply_constraints({"w": jnp.asarray(rng.normal(size=(10, 3)))}, rules)
    params = {"w": params["w"].astype(jnp.float32)}
    tx = jaxcons.chain(optax.sgd(0.05), constraints=rules, tangent=True)

    def loss(p):
        return -jnp.trace(p["w"].T @ a @ p["w"])

    @jax.jit
    def step(p, state):
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    state = tx.init(params)
    for _ in range(300):
        params, state = step(params, state)
    np.testing.assert_allclose(-float(loss(params)), 12.0, rtol=1e-4)
    w = np.asarray(params["w"], np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(3), atol=1e-5)
