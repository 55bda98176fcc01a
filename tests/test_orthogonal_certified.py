"""Orthogonal inside `jaxcons.constrain`: feasibility certified after every step (issue 15).

Every residual here is an independent float64 NumPy computation on the values the optimizer
returned: ``max |G / s^2 - I|`` for the smaller Gram matrix ``G`` of the ``(rows, out)`` view.
The tolerances are the documented defaults (`jaxcons.Orthogonal`): relative ``1e-5`` for
float32 kernels of these sizes, ``2 eps`` of the dtype for bfloat16 and float16.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons
from jaxcons import Orthogonal

TOL_F32 = 1e-5  # The documented default for float32 (Gram matrices up to 512 x 512).
SHAPES = [(64, 32), (32, 64), (128, 64)]
LEARNING_RATES = [1e-3, 1e-2, 1e-1, 0.5]
EPS32 = float(np.finfo(np.float32).eps)


def _matrix(w):
    w = np.asarray(w, np.float64)
    return w.reshape(-1, w.shape[-1])


def residual(w, scale=1.0):
    """``max |G / s^2 - I|`` in float64, ``G`` the smaller Gram matrix of the (rows, out) view."""
    m = _matrix(w) / scale
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return float(np.max(np.abs(gram - np.eye(len(gram)))))


def np_polar(w, scale=1.0):
    """``scale`` times the orthogonal polar factor of ``w``, by a float64 NumPy SVD."""
    u, _, vh = np.linalg.svd(_matrix(w), full_matrices=False)
    return scale * (u @ vh).reshape(np.shape(w))


def _orthogonal(shape, seed, scale=1.0):
    return np_polar(np.random.default_rng(seed).normal(size=shape), scale)


def _with_singular_values(shape, sigma, seed):
    """A float64 ``shape`` matrix ``U diag(sigma) V^T`` with random orthonormal ``U``, ``V``."""
    rng = np.random.default_rng(seed)
    k = min(shape)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
    return (u * np.asarray(sigma, np.float64)) @ v.T


# --- training loops: the residual after every step ------------------------------------------


@functools.cache
def _trainer(shape, tangent, dtype, scale):
    """A jitted Adam step (the learning rate an argument, so one compilation serves all) on a
    least-squares loss whose minimizer is not orthogonal, Orthogonal(scale) in constrain."""
    rules = {"w": Orthogonal(scale)}
    rng = np.random.default_rng(sum(shape))
    rows, out = int(np.prod(shape[:-1])), shape[-1]
    x = jnp.asarray(rng.normal(size=(32, rows)), jnp.float32)
    y = x @ jnp.asarray(rng.normal(size=(rows, out)), jnp.float32)
    # In float16 Adam's default eps (1e-8) rounds to 0 and a second moment that underflows
    # divides by it: an update of inf, before any constraint acts.
    eps = 1e-3 if dtype == jnp.float16 else 1e-8

    def make(learning_rate):
        # Adam's update runs under standard promotion (its bias correction mixes dtypes).
        adam = optax.adam(learning_rate, eps=eps)
        adam = optax.GradientTransformation(adam.init, _standard(adam.update))
        if tangent:
            return jaxcons.chain(adam, constraints=rules, tangent=True)
        return optax.chain(adam, jaxcons.constrain(rules))

    def loss(p):
        return jnp.mean(jnp.square(x @ p["w"].astype(jnp.float32).reshape(rows, out) - y))

    @jax.jit
    def step(p, state, learning_rate):
        updates, state = make(learning_rate).update(jax.grad(loss)(p), state, p)
        with jax.numpy_dtype_promotion("standard"):
            return optax.apply_updates(p, updates), state

    return make, step, _orthogonal(shape, seed=7, scale=scale).astype(dtype)


def _standard(fn):
    def wrapped(*args):
        with jax.numpy_dtype_promotion("standard"):
            return fn(*args)

    return wrapped


def train_residuals(shape, learning_rate, steps, *, tangent=False, dtype=jnp.float32, scale=1.0):
    """The float64 residual of the returned kernel after every step, and the losses' drop."""
    make, step, start = _trainer(shape, tangent, dtype, scale)
    params = {"w": jnp.asarray(start, dtype)}
    state = make(learning_rate).init(params)
    out = []
    for _ in range(steps):
        params, state = step(params, state, jnp.float32(learning_rate))
        w = params["w"]
        assert w.dtype == dtype
        out.append(residual(np.asarray(w.astype(jnp.float32)), scale))
    return np.array(out), params["w"]


@pytest.mark.parametrize("tangent", [False, True], ids=["adam", "tangent"])
@pytest.mark.parametrize("learning_rate", LEARNING_RATES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_step_is_on_the_set_within_the_default_tolerance(shape, learning_rate, tangent):
    residuals, _ = train_residuals(shape, learning_rate, 12, tangent=tangent)
    assert residuals.max() <= TOL_F32, residuals


@pytest.mark.parametrize("tangent", [False, True], ids=["adam", "tangent"])
def test_a_256x256_kernel_at_lr_1e_2_is_on_the_set_after_every_step(tangent):
    # The reported defect: three Newton-Schulz steps left it at ~3e-4 on every step.
    residuals, _ = train_residuals((256, 256), 1e-2, 6, tangent=tangent)
    assert residuals.max() <= TOL_F32, residuals


def test_a_conv_kernel_with_a_scale_is_on_the_set_after_every_step():
    residuals, _ = train_residuals((3, 3, 4, 16), 0.1, 8, scale=2.5)
    assert residuals.max() <= TOL_F32, residuals


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_kernels_are_certified_on_the_values_returned(dtype):
    # The residual is measured on the kernel as stored (rounded to its dtype): the documented
    # default tolerance is 2 eps of that dtype, what the rounding alone may leave.
    tol = 2 * float(jnp.finfo(dtype).eps)
    residuals, _ = train_residuals((64, 32), 1e-2, 8, dtype=dtype)
    assert residuals.max() <= tol, (residuals, tol)


# --- the two ways back to the set --------------------------------------------------------------


def test_a_step_far_off_the_set_falls_back_to_the_exact_polar_factor():
    # Singular values 3 (the guard divides by it) down to 1e-4: from 1e-4 / 3 the
    # Newton-Schulz map x -> x (3 - x^2) / 2 needs more than 20 steps to reach 1, so only the
    # SVD branch can return the polar factor. The polar factor of a square matrix is
    # well-conditioned here (2 / (sigma_n + sigma_{n-1}) = 4), so float32 gets it to ulps.
    sigma = np.concatenate([[1e-4], np.linspace(0.5, 3.0, 15)])
    w = jnp.asarray(_with_singular_values((16, 16), sigma, seed=3), jnp.float32)
    x = np.asarray(w, np.float64) / 3.0
    for _ in range(20):
        x = x @ (3 * np.eye(16) - x.T @ x) / 2
    # No affordable number of Newton-Schulz steps gets there.
    assert np.linalg.svd(x, compute_uv=False).min() < 0.5

    c = Orthogonal()
    state = c.init(jnp.asarray(_orthogonal((16, 16), seed=4), jnp.float32))
    got, _ = jax.jit(c.project)(w, state)
    expected = np_polar(np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=0, atol=8 * EPS32)
    assert residual(got) <= TOL_F32


def test_the_fallback_through_constrain_lands_on_the_polar_factor():
    # A far step as an optimizer update, through jaxcons.constrain, on a wide kernel: singular
    # values 0.3 to 6 (over scale 2), so that after the guard's division six Newton-Schulz
    # steps leave one at 0.52. The parameters after optax.apply_updates are the polar factor
    # of the stepped kernel, to float32 rounding: the polar factor of a wide matrix has
    # condition number sigma_max / sigma_min = 20 here (measured error up to 12 eps: 6 ulps of 2).
    rules = {"w": Orthogonal(2.0)}
    start = jnp.asarray(_orthogonal((12, 20), seed=5, scale=2.0), jnp.float32)
    target64 = _with_singular_values((12, 20), np.linspace(0.6, 12.0, 12), seed=6)
    x = target64 / 12.0
    for _ in range(6):
        x = (3 * np.eye(12) - x @ x.T) @ x / 2
    assert np.linalg.svd(x, compute_uv=False).min() < 0.6
    target = jnp.asarray(target64, jnp.float32)
    tx = jaxcons.constrain(rules)
    params = {"w": start}
    updates, _ = jax.jit(tx.update)({"w": target - start}, tx.init(params), params)
    got = optax.apply_updates(params, updates)["w"]
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np_polar(target, 2.0), rtol=0, atol=2.0 * 16 * EPS32
    )
    assert residual(got, 2.0) <= TOL_F32


def test_a_moderate_step_is_brought_within_the_tolerance():
    # Singular values in [0.7, 1.3]: three steps leave the kernel above the tolerance, two
    # more (the repair branch) bring it far below (a singular-value error e becomes about
    # 1.5 e^2 per step). The result agrees with the Newton-Schulz iterates from the first that
    # meets the tolerance on (float32 cannot tell them from the SVD's polar factor).
    sigma = np.linspace(0.7, 1.3, 24)
    w64 = _with_singular_values((48, 24), sigma, seed=8)
    iterates = [w64]
    for _ in range(8):
        x = iterates[-1]
        iterates.append(x @ (3 * np.eye(24) - x.T @ x) / 2)
    first = next(k for k, x in enumerate(iterates) if residual(x) <= TOL_F32 / 10)
    assert residual(iterates[3]) > 10 * TOL_F32 and first > 3  # Three steps are not enough.
    c = Orthogonal()
    w = jnp.asarray(w64, jnp.float32)
    got, _ = jax.jit(c.project)(w, c.init(w))
    assert residual(got) <= TOL_F32
    np.testing.assert_allclose(np.asarray(got, np.float64), iterates[first], rtol=0, atol=1e-5)


def test_a_zero_kernel_comes_back_on_the_set():
    # A zero kernel has no polar factor; every point of the set is as near as any other.
    c = Orthogonal(0.5)
    w = jnp.zeros((6, 4), jnp.float32)
    got, _ = jax.jit(c.project)(w, c.init(jnp.asarray(_orthogonal((6, 4), 9, 0.5), jnp.float32)))
    assert residual(got, 0.5) <= TOL_F32


def test_a_kernel_on_the_set_takes_the_plain_steps():
    # Near the set nothing changes: three Newton-Schulz steps, exactly as before.
    q = _orthogonal((10, 6), seed=10)
    w = q + 1e-3 * np.random.default_rng(11).normal(size=(10, 6))
    x = w.copy()
    for _ in range(3):
        x = x @ (3 * np.eye(6) - x.T @ x) / 2
    c = Orthogonal()
    w32 = jnp.asarray(w, jnp.float32)
    got, _ = c.project(w32, c.init(w32))
    np.testing.assert_allclose(np.asarray(got, np.float64), x, rtol=0, atol=1e-6)


def test_violations_stays_the_exact_check_and_agrees_with_the_residual():
    # jaxcons.violations measures max |W - P(W)| against the exact polar factor; near the set
    # it is bounded by s * k * max |G / s^2 - I| (k the Gram matrix's size; see the docs).
    rules = {"w": Orthogonal(2.0)}
    _, w = train_residuals((32, 64), 0.5, 3, scale=1.0)
    w = jnp.asarray(np.asarray(w) * 2.0, jnp.float32)
    v = float(jaxcons.violations({"w": w}, rules)["w"])
    r = residual(w, 2.0)
    distance = float(np.max(np.abs(np.asarray(w, np.float64) - np_polar(w, 2.0))))
    assert v == pytest.approx(distance, abs=4 * EPS32 * 2.0)
    assert v <= 2.0 * 32 * max(r, EPS32)


# --- tol: validation, dtype floors, configs ----------------------------------------------------


@pytest.mark.parametrize(
    ("tol", "message"),
    [
        (0, "tol must be > 0, got 0."),
        (-1e-3, "tol must be > 0, got -0.001."),
        (float("nan"), "tol must be finite, got nan."),
        (float("inf"), "tol must be finite, got inf."),
        ("1e-5", "tol must be a real number, got '1e-5'."),
        (True, "tol must be a real number, got True."),
        (1.0, "Orthogonal tol must be < 1 (a relative residual max |W^T W / s^2 - I|), got 1.0."),
    ],
)
def test_tol_is_validated_at_construction(tol, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Orthogonal(tol=tol)


@pytest.mark.parametrize(
    ("dtype", "tol", "floor"),
    [
        (jnp.bfloat16, 1e-5, "0.0156"),  # 2 eps(bfloat16)
        (jnp.float16, 1e-3, "0.00195"),  # 2 eps(float16)
        (jnp.float32, 1e-6, "3.81e-06"),  # 32 eps(float32)
    ],
)
def test_a_tol_the_dtype_cannot_attain_is_an_error_at_init(dtype, tol, floor):
    c = Orthogonal(tol=tol)
    w = jnp.asarray(_orthogonal((8, 4), seed=12), dtype)
    name = jnp.dtype(dtype).name
    msg = f"n_iterations=3, tol={tol}) asks for max |W^T W / s^2 - I| <= {tol:g} on a {name}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.constrain({"w": c}).init({"w": w})
    with pytest.raises(ValueError, match=re.escape(f"the smallest it can attain is {floor}")):
        c.init(w)


def test_an_explicit_tol_is_what_the_steps_meet():
    # A looser tolerance lets more steps end after the plain three Newton-Schulz steps; the
    # residual still never exceeds it.
    make_rules = {"w": Orthogonal(tol=1e-3)}
    w = jnp.asarray(_with_singular_values((40, 20), np.linspace(0.8, 1.2, 20), 13), jnp.float32)
    c = make_rules["w"]
    got, _ = c.project(w, c.init(w))
    assert residual(got) <= 1e-3


def test_tol_round_trips_through_configs():
    c = Orthogonal(2.0, n_iterations=4, tol=1e-4)
    assert c.get_config() == {"scale": 2.0, "n_iterations": 4, "tol": 1e-4}
    assert jaxcons.constraints.deserialize(jaxcons.constraints.serialize(c)) == c
    assert Orthogonal.from_config(c.get_config()) == c
    assert c != Orthogonal(2.0, n_iterations=4)
    # Configs written before tol existed still load, with the default.
    old = Orthogonal.from_config({"scale": 1.0, "n_iterations": 3})
    assert old == Orthogonal() and old.tol is None
    assert Orthogonal().get_config() == {"scale": 1.0, "n_iterations": 3, "tol": None}
