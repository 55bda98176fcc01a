"""SpectralNorm: exact and power-iteration projections, state in `constrain`, validation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons
from jaxcons import SpectralNorm, SpectralNormState

LOW_PRECISION = [jnp.bfloat16, jnp.float16]
DTYPES = [jnp.float32, *LOW_PRECISION]


def np_sigma(w):
    """Largest singular value of ``w`` viewed as ``(prod(shape[:-1]), shape[-1])``, in f64."""
    w = np.asarray(w, np.float64)
    return np.linalg.norm(w.reshape(-1, w.shape[-1]), 2)


def np_top_right_vector(w):
    w = np.asarray(w, np.float64)
    return np.linalg.svd(w.reshape(-1, w.shape[-1]))[2][0]


def random_kernel(shape, sigma, seed=0):
    """A float32 kernel whose matrix view has largest singular value ``sigma``."""
    w = np.random.default_rng(seed).normal(size=shape)
    return jnp.asarray(w * (sigma / np_sigma(w)), jnp.float32)


def bits(x):
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


# --- Exact projection (__call__) ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (1, 6), (6, 1)])
@pytest.mark.parametrize("max_value", [0.5, 1.0, 2.5])
def test_call_scales_sigma_to_max_value(shape, max_value):
    w = random_kernel(shape, sigma=3.0, seed=len(shape) + shape[0])
    got = SpectralNorm(max_value)(w)
    np.testing.assert_allclose(np_sigma(got), max_value, rtol=1e-5)
    np.testing.assert_allclose(got, np.asarray(w) * (max_value / np_sigma(w)), rtol=1e-5)
    assert np_sigma(got) <= max_value * (1 + 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_call_feasible_kernel_unchanged_bitwise(dtype):
    w = random_kernel((4, 3), sigma=0.9).at[0, 0].set(-0.0).astype(dtype)
    got = SpectralNorm(1.0)(w)
    assert got.dtype == dtype
    np.testing.assert_array_equal(bits(got), bits(w))
    assert np.signbit(np.asarray(got, np.float32)[0, 0])


def test_call_boundary_kernel_unchanged_bitwise():
    w = jnp.array([[2.0, 0.0], [0.0, -1.0]])  # sigma == max_value exactly.
    np.testing.assert_array_equal(bits(SpectralNorm(2.0)(w)), bits(w))


def test_call_conv_kernel_is_viewed_as_rows_by_out():
    w = random_kernel((3, 3, 2, 4), sigma=3.0)
    got = SpectralNorm(1.0)(w)
    assert got.shape == (3, 3, 2, 4)
    np.testing.assert_allclose(np_sigma(got), 1.0, rtol=1e-5)
    # One global factor, the one of the (18, 4) view.
    np.testing.assert_allclose(got, np.asarray(w) / np_sigma(w), rtol=1e-5)


def test_call_conv_kernel_bound_uses_the_rows_by_out_view_only():
    w = np.random.default_rng(1).normal(size=(3, 3, 2, 4))
    flat_sigma = np_sigma(w)  # (18, 4) view
    other_sigma = np.linalg.norm(w.reshape(3, -1), 2)  # (3, 24) view
    assert other_sigma > flat_sigma * 1.01
    bound = (flat_sigma + other_sigma) / 2
    w = jnp.asarray(w, jnp.float32)
    np.testing.assert_array_equal(bits(SpectralNorm(bound)(w)), bits(w))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_call_keeps_low_precision_dtype(dtype):
    w32 = random_kernel((3, 3, 2, 4), sigma=3.0)
    w = w32.astype(dtype)
    got = SpectralNorm(1.0)(w)
    assert got.dtype == dtype
    want = np.asarray(w, np.float64) / np_sigma(w)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(np_sigma(got), 1.0, rtol=1e-2)


def test_float64_kernels_are_computed_in_float64():
    w = np.random.default_rng(2).normal(size=(5, 3))
    with jax.enable_x64(True):
        c = SpectralNorm(1.0, n_power_iterations=30)
        got = c(jnp.asarray(w))
        state = c.init(jnp.asarray(w))
        projected, new_state = c.project(jnp.asarray(w), state)
    assert got.dtype == projected.dtype == state.u.dtype == new_state.u.dtype == np.float64
    np.testing.assert_allclose(np_sigma(got), 1.0, rtol=1e-12)
    # Scaled by a certified bound, within 1e-10 of sigma in float64: never above the bound.
    assert 1.0 - 1e-9 <= np_sigma(projected) <= 1.0


def test_call_zero_kernel_stays_zero_with_finite_gradient():
    w = jnp.zeros((4, 3))
    got = SpectralNorm(1.0)(w)
    np.testing.assert_array_equal(got, np.zeros((4, 3)))
    grad = jax.grad(lambda w: jnp.sum(SpectralNorm(1.0)(w)))(w)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, np.ones((4, 3)))  # The scale is 1 near zero.


def test_call_gradient_of_active_bound_is_finite():
    w = random_kernel((4, 3), sigma=3.0)
    grad = jax.grad(lambda w: jnp.sum(jnp.square(SpectralNorm(1.0)(w))))(w)
    # ||W / sigma||_F^2 is scale-invariant: its gradient is orthogonal to W.
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(np.vdot(grad, w), 0.0, atol=1e-5)


def test_call_is_idempotent_up_to_rounding():
    w = random_kernel((5, 3), sigma=3.0)
    once = SpectralNorm(1.0)(w)
    np.testing.assert_allclose(SpectralNorm(1.0)(once), once, rtol=1e-6)


def test_call_empty_kernel_passes_through():
    for shape in [(0, 3), (3, 0), (2, 0, 3)]:
        got = SpectralNorm(1.0)(jnp.zeros(shape))
        assert got.shape == shape


def test_call_on_pytree_projects_floating_leaves_only():
    w = random_kernel((4, 3), sigma=3.0)
    tree = {"kernel": w, "step": jnp.array([7, 8], jnp.int32)}
    got = SpectralNorm(1.0)(tree)
    np.testing.assert_allclose(np_sigma(got["kernel"]), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(got["step"], [7, 8])


def test_call_is_jit_compatible():
    w = random_kernel((3, 3, 2, 4), sigma=3.0)
    c = SpectralNorm(1.0)
    np.testing.assert_allclose(jax.jit(c)(w), c(w), rtol=1e-6)


# --- State and power iteration (init / project) -------------------------------------------


def test_init_starts_at_the_exact_top_right_singular_vector():
    c = SpectralNorm(1.0)
    w = random_kernel((3, 3, 2, 5), sigma=3.0)
    state = c.init(w)
    assert isinstance(state, SpectralNormState)
    assert state.u.shape == (5,)
    assert state.u.dtype == jnp.float32
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(state))
    np.testing.assert_allclose(np.linalg.norm(state.u), 1.0, rtol=1e-6)
    # The oracle: NumPy's float64 SVD of the (rows, out) matrix; up to sign.
    _, _, vh = np.linalg.svd(np.asarray(w, np.float64).reshape(-1, 5))
    np.testing.assert_allclose(abs(float(np.dot(vh[0], state.u))), 1.0, rtol=1e-5)
    # A function of the kernel: the same kernel gives the same vector.
    np.testing.assert_array_equal(state.u, c.init(w).u)


def test_init_of_a_zero_kernel_is_a_fixed_generic_direction():
    u = SpectralNorm(3.0).init(jnp.zeros((7, 5))).u
    np.testing.assert_array_equal(u, SpectralNorm(1.0).init(jnp.zeros((2, 5))).u)
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-6)
    # Not an axis vector or `ones`, which a structured kernel can be orthogonal to.
    assert np.ptp(np.asarray(u)) > 0.1 and np.count_nonzero(np.asarray(u)) == 5


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_state_is_float32_for_low_precision_kernels(dtype):
    w = random_kernel((4, 3), sigma=3.0).astype(dtype)
    c = SpectralNorm(1.0)
    state = c.init(w)
    assert state.u.dtype == jnp.float32
    got, new_state = c.project(w, state)
    assert got.dtype == dtype
    assert new_state.u.dtype == jnp.float32


def test_project_matches_an_independent_power_iteration():
    w = random_kernel((6, 4), sigma=3.0)
    c = SpectralNorm(1.0, n_power_iterations=2)
    state = c.init(w)
    got, new_state = c.project(w, state)

    m = np.asarray(w, np.float64)
    u = np.asarray(state.u, np.float64)
    for _ in range(2):
        v = m @ u / np.linalg.norm(m @ u)
        t = m.T @ v
        sigma, u = np.linalg.norm(t), t / np.linalg.norm(t)
    np.testing.assert_allclose(new_state.u, u, rtol=1e-5, atol=1e-6)
    assert sigma <= np_sigma(w) * (1 + 1e-6)  # The estimate is a lower bound.
    # The kernel is scaled (a multiple of w) by a certified upper bound on sigma, not by the
    # estimate: the result is inside the ball, within 0.2% of its edge.
    s = float(np.sum(np.asarray(got, np.float64) * m) / np.sum(m * m))
    np.testing.assert_allclose(got, s * m, rtol=1e-5, atol=1e-7)
    assert 1.0 - 2e-3 <= np_sigma(got) <= 1.0


def test_project_with_enough_iterations_is_accurate():
    w = random_kernel((3, 3, 2, 4), sigma=3.0)
    c = SpectralNorm(1.0, n_power_iterations=50)
    got, state = c.project(w, c.init(w))
    assert 1.0 - 2e-3 <= np_sigma(got) <= 1.0  # Certified, so never above; tight.
    np.testing.assert_allclose(abs(np.dot(state.u, np_top_right_vector(w))), 1.0, rtol=1e-5)


def test_project_feasible_kernel_unchanged_bitwise():
    w = random_kernel((4, 3), sigma=0.9).astype(jnp.bfloat16)
    c = SpectralNorm(1.0)
    got, _ = c.project(w, c.init(w))
    np.testing.assert_array_equal(bits(got), bits(w))


def test_project_zero_kernel_stays_zero_keeps_state_and_recovers():
    c = SpectralNorm(1.0, n_power_iterations=3)
    zero = jnp.zeros((4, 3))
    state = c.init(zero)
    got, new_state = c.project(zero, state)
    np.testing.assert_array_equal(got, np.zeros((4, 3)))
    np.testing.assert_array_equal(new_state.u, state.u)  # Not reset to zero (or NaN).
    grad = jax.grad(lambda w: jnp.sum(c.project(w, state)[0]))(zero)
    np.testing.assert_array_equal(grad, np.ones((4, 3)))
    # The kept vector still works once the kernel becomes non-zero.
    w = random_kernel((4, 3), sigma=3.0)
    c50 = SpectralNorm(1.0, n_power_iterations=50)
    got, _ = c50.project(w, new_state)
    assert 1.0 - 2e-3 <= np_sigma(got) <= 1.0


def test_project_gradient_is_finite_and_jit_matches_eager():
    w = random_kernel((5, 3), sigma=3.0)
    c = SpectralNorm(1.0, n_power_iterations=3)
    state = c.init(w)
    grad = jax.grad(lambda w: jnp.sum(jnp.square(c.project(w, state)[0])))(w)
    assert np.all(np.isfinite(grad))
    eager = c.project(w, state)
    jitted = jax.jit(c.project)(w, state)
    np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-6)
    np.testing.assert_allclose(jitted[1].u, eager[1].u, rtol=1e-6, atol=1e-7)


# --- Inside jaxcons.constrain and apply_constraints ---------------------------------------


def test_constrain_carries_state_and_converges_without_retracing():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    target = random_kernel((6, 4), sigma=3.0, seed=4)
    y = x @ target
    params = {"w": random_kernel((6, 4), sigma=2.0, seed=5), "b": jnp.zeros(4)}
    tx = optax.chain(optax.sgd(0.05), jaxcons.constrain({"w": SpectralNorm(1.0)}))
    opt_state = tx.init(params)

    def loss(p):
        return jnp.mean(jnp.square(x @ p["w"] + p["b"][None, :] - y))

    traces = []

    @jax.jit
    def step(params, opt_state):
        traces.append(1)
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    states = [opt_state[1].constraint_states]
    assert set(states[0]) == {"w"}
    assert isinstance(states[0]["w"], SpectralNormState)
    for _ in range(20):
        params, opt_state = step(params, opt_state)
        states.append(opt_state[1].constraint_states)
    assert len(traces) == 1
    assert set(states[-1]) == {"w"}
    assert states[-1]["w"].u.shape == (4,)
    assert not np.array_equal(states[0]["w"].u, states[1]["w"].u)
    assert not np.array_equal(states[1]["w"].u, states[2]["w"].u)
    sigma = np_sigma(params["w"])
    assert sigma <= 1.0  # Certified.
    assert sigma >= 1.0 - 3e-3  # The loss pulls towards sigma = 3: the bound is active.
    cos = abs(np.dot(states[-1]["w"].u, np_top_right_vector(params["w"])))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)


def test_apply_constraints_is_exact_with_no_state():
    params = {"conv": {"kernel": random_kernel((3, 3, 2, 4), sigma=3.0)}, "bias": jnp.ones(4)}
    got = jaxcons.apply_constraints(params, {"**/kernel": SpectralNorm(1.0)})
    np.testing.assert_allclose(np_sigma(got["conv"]["kernel"]), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(got["bias"], np.ones(4))


# --- Errors, validation, config -----------------------------------------------------------


def test_rank_one_parameter_matched_by_rule_raises_naming_path_and_shape():
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    msg = (
        r"SpectralNorm acts on kernels of rank >= 2, but parameter 'dense/bias' has shape "
        r"\(4,\)\. Match only kernels \(e\.g\. '\*\*/kernel'\), or bound a vector's L2 norm "
        r"with MaxNorm\(max_value, axis=0\)\."
    )
    with pytest.raises(ValueError, match=msg):
        jaxcons.constrain({"**": SpectralNorm(1.0)}).init(params)
    with pytest.raises(ValueError, match=msg):
        jaxcons.apply_constraints(params, {"**": SpectralNorm(1.0)})


@pytest.mark.parametrize("shape", [(4,), ()])
def test_rank_below_two_direct_calls_raise(shape):
    c = SpectralNorm(1.0)
    w = jnp.ones(shape)
    msg = re.escape(f"SpectralNorm acts on kernels of rank >= 2, but the array has shape {shape}.")
    with pytest.raises(ValueError, match=msg):
        c(w)
    with pytest.raises(ValueError, match="rank >= 2, but the array"):
        c.init(w)
    with pytest.raises(ValueError, match="rank >= 2, but the array"):
        c.project(w, SpectralNormState(u=jnp.ones(1)))


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        (0.0, r"max_value must be > 0, got 0\.0\."),
        (-1, r"max_value must be > 0, got -1\."),
        (float("inf"), r"max_value must be finite, got inf\."),
        (float("nan"), r"max_value must be finite, got nan\."),
        ("1", r"max_value must be a real number, got '1'\."),
        (True, r"max_value must be a real number, got True\."),
        (None, r"max_value must be a real number, got None\."),
    ],
)
def test_invalid_max_value(value, msg):
    with pytest.raises(ValueError, match=msg):
        SpectralNorm(value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0"), (-2, "-2"), (1.5, "1.5"), (2.0, "2.0"), (True, "True"), ("2", "'2'")],
)
def test_invalid_n_power_iterations(value, shown):
    msg = re.escape(f"n_power_iterations must be a positive int, got {shown}.")
    with pytest.raises(ValueError, match=msg):
        SpectralNorm(1.0, n_power_iterations=value)


def test_python_scalar_raises_rank_error():
    with pytest.raises(ValueError, match=r"rank >= 2, but the array has shape \(\)\."):
        SpectralNorm(1.0)(2.0)


def test_accepts_numpy_scalars():
    c = SpectralNorm(np.float32(2.0), n_power_iterations=np.int64(3))
    assert c.get_config() == {"max_value": 2.0, "n_power_iterations": 3}
    assert type(c.get_config()["max_value"]) is float
    assert type(c.get_config()["n_power_iterations"]) is int


def test_config_round_trip_repr_and_equality():
    c = SpectralNorm(2.5, n_power_iterations=3)
    assert c.get_config() == {"max_value": 2.5, "n_power_iterations": 3}
    assert SpectralNorm().get_config() == {"max_value": 1.0, "n_power_iterations": 1}
    assert SpectralNorm.from_config(c.get_config()) == c
    assert c != SpectralNorm(2.5)
    assert repr(c) == "SpectralNorm(max_value=2.5, n_power_iterations=3)"
    assert isinstance(c, jaxcons.StatefulConstraint)


# --- The bound inside constrain, from a feasible start -------------------------------------


def test_bound_holds_at_every_step_when_the_kernel_only_grows():
    # x = 1.5 * p: no rotation, so the exact start vector stays exact and the bound is tight.
    c = SpectralNorm(1.0)
    w = random_kernel((16, 8), sigma=1.0)
    params = {"k": w}
    tx = jaxcons.constrain({"k": c})
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.tree.map(lambda x: 0.5 * x, p), s, p))
    worst = 0.0
    for _ in range(20):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        worst = max(worst, np_sigma(params["k"]) - 1.0)
    assert worst <= 0.0, worst


def test_bound_holds_at_every_step_of_adam_training_of_a_conv_kernel(adam):
    shape = (3, 3, 16, 32)
    w = random_kernel(shape, sigma=1.0, seed=1)
    target = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    params = {"k": w}
    tx = jaxcons.chain(adam(1e-3), constraints={"k": SpectralNorm(1.0)})
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum(jnp.square(p["k"] - target)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    worst = 0.0
    for _ in range(150):
        params, state = step(params, state)
        worst = max(worst, np_sigma(params["k"]) / 1.0 - 1.0)
    assert worst <= 0.0, worst
    # The bound binds: the unconstrained target has a far larger spectral norm.
    assert np_sigma(target) > 5.0
