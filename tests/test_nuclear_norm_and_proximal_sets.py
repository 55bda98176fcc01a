"""The NuclearNorm regularizer (value, gradient, proximal operator, against NumPy's SVD) and
`jaxcons.proximal` with constraints (the proximal operator of an indicator is a projection)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons
from jaxcons import L1, Clip, MaxNorm, NonNeg, NuclearNorm, Orthogonal

SHAPES = [(6, 4), (4, 6), (3, 3, 2, 4), (5, 1)]


def _matrix(x):
    x = np.asarray(x, np.float64)
    return x.reshape(-1, x.shape[-1])


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def np_svt(x, t):
    u, s, vh = np.linalg.svd(_matrix(x), full_matrices=False)
    return ((u * np.maximum(s - t, 0)) @ vh).reshape(np.shape(x))


# --- NuclearNorm ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_value_is_the_sum_of_singular_values(shape):
    x = _random(shape, seed=sum(shape))
    got = NuclearNorm(0.3)(jnp.asarray(x, jnp.float32))
    assert got.shape == () and got.dtype == jnp.float32
    want = 0.3 * np.sum(np.linalg.svd(_matrix(x), compute_uv=False))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradient_is_factor_times_the_polar_factor():
    x = _random((6, 4), seed=1)
    u, _, vh = np.linalg.svd(x, full_matrices=False)
    grad = jax.grad(NuclearNorm(0.5))(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(grad, 0.5 * u @ vh, rtol=1e-4, atol=1e-5)


def test_value_and_gradient_are_finite_at_zero_and_low_rank():
    for x in (jnp.zeros((4, 3)), jnp.outer(jnp.arange(4.0), jnp.ones(3))):
        value, grad = jax.value_and_grad(NuclearNorm(1.0))(x)
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert float(NuclearNorm(1.0)(jnp.zeros((4, 3)))) == 0.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("step", [0.1, 1.0])
def test_prox_is_singular_value_soft_thresholding(shape, step):
    x = _random(shape, seed=sum(shape) + 1)
    got = NuclearNorm(0.8).prox(jnp.asarray(x, jnp.float32), step)
    assert got.shape == shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_svt(x, 0.8 * step), rtol=1e-5, atol=1e-5)


def test_prox_gives_exactly_the_rank_of_the_singular_values_above_the_threshold():
    u, _ = np.linalg.qr(_random((8, 5), seed=2))
    v, _ = np.linalg.qr(_random((5, 5), seed=3))
    x = (u * np.array([4.0, 2.0, 0.9, 0.5, 0.1])) @ v.T
    got = np.asarray(NuclearNorm(1.0).prox(jnp.asarray(x, jnp.float32), 1.0), np.float64)
    s = np.linalg.svd(got, compute_uv=False)
    np.testing.assert_allclose(s[:2], [3.0, 1.0], rtol=1e-5)
    assert np.all(s[2:] <= 1e-6 * s[0])  # Rank 2, up to float32 rounding of the product.


def test_prox_minimises_the_proximal_objective():
    x = _random((5, 4), seed=4)
    t = 0.7

    def objective(z):
        return 0.5 * np.sum((z - x) ** 2) + t * np.sum(np.linalg.svd(z, compute_uv=False))

    got = np.asarray(NuclearNorm(1.0).prox(jnp.asarray(x, jnp.float32), t), np.float64)
    rng = np.random.default_rng(5)
    for _ in range(30):
        assert objective(got) <= objective(got + 1e-2 * rng.normal(size=x.shape)) + 1e-6


def test_prox_in_float64_and_traced_step():
    x = _random((4, 3), seed=6)
    with jax.enable_x64(True):
        got = jax.jit(NuclearNorm(0.5).prox)(jnp.asarray(x), jnp.asarray(0.4))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np_svt(x, 0.2), rtol=1e-12, atol=1e-12)


def test_proximal_training_gives_a_low_rank_kernel():
    rng = np.random.default_rng(7)
    a = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    params = {"kernel": jnp.zeros((8, 6))}
    tx = jaxcons.chain(optax.sgd(0.05), proximal={"kernel": NuclearNorm(2.0)}, learning_rate=0.05)

    def loss(p):
        return jnp.mean(jnp.sum(jnp.square(a @ p["kernel"] - a @ target), axis=1))

    @jax.jit
    def step(p, state):
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    state = tx.init(params)
    for _ in range(200):
        params, state = step(params, state)
    s = np.linalg.svd(np.asarray(params["kernel"], np.float64), compute_uv=False)
    full = np.linalg.svd(np.asarray(target, np.float64), compute_uv=False)
    assert np.sum(s > 1e-5 * s[0]) < np.sum(full > 1e-5 * full[0])  # Rank reduced, exactly.
    assert s[0] > 0.5 * full[0]  # ... while still fitting the dominant directions.


def test_nuclear_norm_validation_and_names():
    with pytest.raises(ValueError, match=re.escape("factor must be >= 0, got -1.0")):
        NuclearNorm(-1.0)
    msg = "NuclearNorm acts on kernels of rank >= 2 (viewed as (prod(shape[:-1]), shape[-1])"
    with pytest.raises(ValueError, match=re.escape(msg)):
        NuclearNorm()(jnp.ones(3))
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    with pytest.raises(ValueError, match=re.escape("parameter 'dense/bias' has shape (2,)")):
        jaxcons.penalty(params, {"dense/*": NuclearNorm()})
    assert jaxcons.regularizers.get("nuclear_norm") == NuclearNorm()
    r = NuclearNorm(0.25)
    assert jaxcons.regularizers.deserialize(jaxcons.regularizers.serialize(r)) == r


# --- proximal with constraints ----------------------------------------------------------------


def _problem(seed=8):
    rng = np.random.default_rng(seed)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "bias": jnp.asarray(np.abs(rng.normal(size=3)), jnp.float32),
        }
    }
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(5 * rng.normal(size=p.shape), jnp.float32), params
    )
    return params, grads


def test_proximal_mixes_regularizers_and_constraints():
    params, grads = _problem()
    lr = 0.1
    tx = optax.chain(
        optax.sgd(lr),
        jaxcons.proximal({"**/kernel": L1(0.5), "**/bias": NonNeg()}, lr),
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    x = jax.tree_util.tree_map(lambda p, g: np.asarray(p) - lr * np.asarray(g), params, grads)
    k = x["dense"]["kernel"]
    want_kernel = np.sign(k) * np.maximum(np.abs(k) - lr * 0.5, 0)
    np.testing.assert_allclose(new["dense"]["kernel"], want_kernel, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new["dense"]["bias"], np.maximum(x["dense"]["bias"], 0), rtol=1e-6)
    assert np.min(np.asarray(new["dense"]["bias"])) >= 0
    assert np.any(np.asarray(new["dense"]["bias"]) == 0)  # The projection was active.


@pytest.mark.parametrize(
    "identifier",
    ["non_neg", "NonNeg", {"class_name": "NonNeg", "config": {}}, NonNeg()],
    ids=["alias", "class_name", "config", "object"],
)
def test_proximal_looks_constraint_names_up_in_the_constraint_registry(identifier):
    params, grads = _problem()
    tx = optax.chain(optax.sgd(0.1), jaxcons.proximal({"**/bias": identifier}, 0.1))
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.min(np.asarray(new["dense"]["bias"])) >= 0


def test_proximal_lands_exactly_inside_a_box_like_constrain():
    # -16777218 + (1 - -16777218) rounds to 2.0 in float32: the plain update would leave
    # the box; the projection's update is corrected as in jaxcons.constrain.
    p = jnp.array([-16777218.0], jnp.float32)
    assert float((p + (jnp.float32(1.0) - p))[0]) == 2.0
    params = {"w": p}
    tx = jaxcons.proximal({"w": Clip(-1e8, 1.0)}, 0.1)
    updates, _ = tx.update({"w": jnp.array([1e9], jnp.float32)}, tx.init(params), params)
    assert -1e8 <= float(optax.apply_updates(params, updates)["w"][0]) <= 1.0


def test_proximal_uses_the_exact_projection_of_a_constraint():
    params = {"w": jnp.asarray(_random((6, 3), seed=10), jnp.float32)}
    zero = {"w": jnp.zeros((6, 3))}
    for c in (MaxNorm(1.0), Orthogonal()):
        tx = jaxcons.proximal({"w": c}, 0.1)
        updates, _ = tx.update(zero, tx.init(params), params)
        np.testing.assert_allclose(
            optax.apply_updates(params, updates)["w"], c(params["w"]), rtol=1e-6, atol=1e-6
        )


def test_proximal_constraint_errors():
    params, _ = _problem()
    msg = "regularizer rule '**/bais' matches no parameter"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.proximal({"**/bais": NonNeg()}, 0.1).init(params)
    # Elsewhere the two kinds stay apart.
    with pytest.raises(TypeError, match="NonNeg\\(\\) is a constraint, not a regularizer"):
        jaxcons.regularize({"**/bias": NonNeg()})
    with pytest.raises(ValueError, match="'non_neg' names a constraint, not a regularizer"):
        jaxcons.penalty(params, {"**/bias": "non_neg"})
    with pytest.raises(ValueError, match="Unknown regularizer identifier 'non_negative'"):
        jaxcons.proximal({"**/bias": "non_negative"}, 0.1)
