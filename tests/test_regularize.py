"""The `regularize` and `proximal` optax transforms."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons
from jaxcons import ProximalState, penalty, proximal, regularize
from jaxcons.regularizers import L1, L1L2, L2, GroupLasso, OrthogonalRegularizer


def make_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        },
        "Dense_1": {
            "kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        },
    }
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)

    def loss(p):
        h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, :])
        out = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None, :]
        return jnp.mean((out - y) ** 2)

    return params, loss


RULES = {
    "Dense_0/kernel": GroupLasso(0.05),
    "Dense_1/kernel": OrthogonalRegularizer(0.1, "columns"),
    "**/bias": L1L2(l1=0.01, l2=0.02),
}


def assert_trees_close(a, b, rtol=1e-5, atol=0.0):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# --- regularize ------------------------------------------------------------------------------


def test_regularize_adds_the_gradient_of_the_penalty():
    params, loss = make_problem()
    grads = jax.grad(loss)(params)
    tx = regularize(RULES)
    updates, state = tx.update(grads, tx.init(params), params)
    assert state == optax.EmptyState()
    expected = jax.grad(lambda p: loss(p) + penalty(p, RULES))(params)
    assert_trees_close(updates, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_regularize_in_a_chain_equals_training_on_loss_plus_penalty(optimizer, adam):
    make_opt = {"sgd": lambda: optax.sgd(0.1), "adam": lambda: adam(1e-2)}[optimizer]
    params, loss = make_problem(1)
    rules = {"**/kernel": L2(0.01), "**/bias": L1(0.001)}

    def train(tx, objective, p):
        state = tx.init(p)
        for _ in range(5):
            updates, state = tx.update(jax.grad(objective)(p), state, p)
            p = optax.apply_updates(p, updates)
        return p

    coupled = train(optax.chain(regularize(rules), make_opt()), loss, params)
    in_loss = train(make_opt(), lambda p: loss(p) + penalty(p, rules), params)
    assert_trees_close(coupled, in_loss, rtol=1e-5, atol=1e-6)


def test_regularize_leaves_ungoverned_updates_untouched():
    params, loss = make_problem()
    grads = jax.grad(loss)(params)
    tx = regularize({"Dense_0/kernel": L2(1.0)})
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["Dense_1"]["kernel"] is grads["Dense_1"]["kernel"]
    np.testing.assert_allclose(
        updates["Dense_0"]["kernel"],
        np.asarray(grads["Dense_0"]["kernel"]) + 2.0 * np.asarray(params["Dense_0"]["kernel"]),
        rtol=1e-6,
    )


def _train_jitted(tx, params, loss, steps):
    """Runs ``steps`` jitted training steps; returns params, state and the trace log."""
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state, traces


def test_regularize_under_jit_does_not_retrace(adam):
    params, loss = make_problem()
    tx = optax.chain(regularize({"**/kernel": "l2", "**/bias": "l1"}), adam(1e-3))
    params, _, traces = _train_jitted(tx, params, loss, steps=3)
    assert len(traces) == 1
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(params))


def test_regularize_keeps_update_dtype():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    tx = regularize({"w": L2(0.5)})
    updates, _ = tx.update({"w": jnp.zeros(4, jnp.bfloat16)}, tx.init(params), params)
    assert updates["w"].dtype == jnp.bfloat16
    assert np.all(np.asarray(updates["w"], np.float32) == 1.0)


def test_regularize_inside_optax_masked():
    params, loss = make_problem()
    mask = {"Dense_0": {"kernel": True, "bias": False}, "Dense_1": {"kernel": False, "bias": False}}
    tx = optax.masked(regularize({"**/kernel": L1(1.0)}), mask)
    grads = jax.grad(loss)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(
        updates["Dense_0"]["kernel"],
        np.asarray(grads["Dense_0"]["kernel"]) + np.sign(np.asarray(params["Dense_0"]["kernel"])),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(updates["Dense_1"]["kernel"], grads["Dense_1"]["kernel"])


def test_regularize_errors():
    params, _ = make_problem()
    tx = regularize({"**/kernel": L2()})
    msg = "jaxcons.regularize needs the current params: call tx.update(updates, state, params)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match=re.escape("regularizer rule '**/kernal' matches no")):
        regularize({"**/kernal": L2()}).init(params)
    msg = "OrthogonalRegularizer needs a rank-2 parameter; parameter 'Dense_0/bias'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        regularize({"**": OrthogonalRegularizer()}).init(params)


# --- proximal --------------------------------------------------------------------------------


def sgd_prox_step(params, grads, rules, lr):
    tx = optax.chain(optax.sgd(lr), proximal(rules, lr))
    updates, state = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), state


def soft(x: np.ndarray, t: float) -> np.ndarray:
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def test_proximal_l1_gives_exact_zeros_after_apply_updates():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(8, 8)).astype(np.float32)
    g = rng.normal(size=(8, 8)).astype(np.float32)
    new, _ = sgd_prox_step({"w": jnp.asarray(p)}, {"w": jnp.asarray(g)}, {"w": L1(2.0)}, 0.25)
    w = np.asarray(new["w"])
    expected = soft(p.astype(np.float64) - 0.25 * g, 0.5)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(w == 0.0, expected == 0.0)
    assert (w == 0.0).mean() > 0.2


def test_proximal_l2_is_shrinkage_and_l1l2_the_elastic_net():
    p = np.array([1.0, -0.05, 0.5, -3.0], np.float32)
    g = np.array([0.5, 0.0, -1.0, 1.0], np.float32)
    lr = 0.1
    x = p.astype(np.float64) - lr * g
    new, _ = sgd_prox_step({"w": jnp.asarray(p)}, {"w": jnp.asarray(g)}, {"w": L2(0.5)}, lr)
    np.testing.assert_allclose(new["w"], x / (1 + 2 * lr * 0.5), rtol=1e-6)
    new, _ = sgd_prox_step(
        {"w": jnp.asarray(p)}, {"w": jnp.asarray(g)}, {"w": L1L2(l1=1.0, l2=0.5)}, lr
    )
    np.testing.assert_allclose(new["w"], soft(x, lr * 1.0) / (1 + 2 * lr * 0.5), rtol=1e-6)
    assert float(new["w"][1]) == 0.0


def test_proximal_group_lasso_zeros_whole_columns():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(6, 8)).astype(np.float32)
    kernel[:, :4] *= 0.05  # four weak units
    params = {"dense": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(8)}}
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    new, _ = sgd_prox_step(params, grads, {"**/kernel": GroupLasso(1.0)}, 0.5)
    w = np.asarray(new["dense"]["kernel"])
    norms = np.linalg.norm(kernel.astype(np.float64), axis=0)
    dead = norms <= 0.5
    assert dead.sum() == 4
    assert np.all(w[:, dead] == 0.0)
    np.testing.assert_allclose(w[:, ~dead], kernel[:, ~dead] * (1 - 0.5 / norms[~dead]), rtol=1e-5)
    np.testing.assert_array_equal(new["dense"]["bias"], params["dense"]["bias"])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_proximal_exact_zeros_in_low_precision(dtype):
    p = jnp.asarray([0.3, -0.2, 0.05, 1.5, -2.0], dtype)
    g = jnp.zeros(5, dtype)
    new, _ = sgd_prox_step({"w": p}, {"w": g}, {"w": L1(1.0)}, 0.5)
    w = new["w"]
    assert w.dtype == dtype
    np.testing.assert_array_equal(np.asarray(w[:3], np.float32), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(w[3:], np.float32), [1.0, -1.5], rtol=1e-2)


def test_proximal_gradient_descent_solves_the_lasso():
    """ISTA with an orthonormal design converges to the closed form soft(X^T y, lam)."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(20, 6)))
    X = jnp.asarray(q, jnp.float32)
    beta = np.array([2.0, -1.0, 0.05, 0.0, -0.02, 0.5])
    y = X @ jnp.asarray(beta, jnp.float32)
    lam = 0.1

    def loss(p):
        return 0.5 * jnp.sum((X @ p["w"] - y) ** 2)

    tx = optax.chain(optax.sgd(0.5), proximal({"w": L1(lam)}, 0.5))
    params = {"w": jnp.zeros(6)}
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    for _ in range(60):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    expected = soft(np.asarray(q).T @ np.asarray(y, np.float64), lam)
    np.testing.assert_allclose(params["w"], expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.asarray(params["w"]) == 0.0, expected == 0.0)
    assert int(state[1].count) == 60


def test_proximal_schedule_is_evaluated_at_the_count():
    params = {"w": jnp.array([1.0, -1.0])}
    tx = proximal({"w": L1(1.0)}, lambda count: 0.1 * (count + 1).astype(jnp.float32))
    state = tx.init(params)
    assert isinstance(state, ProximalState)
    assert state.count.dtype == jnp.int32 and int(state.count) == 0
    zeros = {"w": jnp.zeros(2)}
    updates, state = tx.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], [0.9, -0.9], rtol=1e-6)  # step 0.1
    updates, state = tx.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], [0.7, -0.7], rtol=1e-6)  # step 0.2
    assert int(state.count) == 2


def test_proximal_with_optax_schedule_under_jit_does_not_retrace(adam):
    params, loss = make_problem()
    schedule = optax.exponential_decay(1e-2, 10, 0.5)
    rules = {"**/kernel": GroupLasso(0.1), "**/bias": L1(0.1)}
    tx = optax.chain(adam(schedule), proximal(rules, schedule))
    params, state, traces = _train_jitted(tx, params, loss, steps=3)
    assert len(traces) == 1
    assert int(state[1].count) == 3


def test_proximal_leaves_ungoverned_updates_untouched():
    params, loss = make_problem()
    grads = jax.grad(loss)(params)
    tx = proximal({"Dense_0/bias": L1(0.1), "**": None}, 0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["Dense_1"]["kernel"] is grads["Dense_1"]["kernel"]


def test_proximal_inside_optax_masked():
    params = {"a": jnp.array([0.05, 1.0]), "b": jnp.array([0.05, 1.0])}
    tx = optax.masked(proximal({"*": L1(1.0)}, 0.1), {"a": True, "b": False})
    updates, _ = tx.update({"a": jnp.zeros(2), "b": jnp.zeros(2)}, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["a"], [0.0, 0.9], rtol=1e-6)
    np.testing.assert_array_equal(new["b"], params["b"])


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), "0.1", True, None])
def test_proximal_learning_rate_validation(bad):
    msg = (
        "learning_rate must be a finite number > 0 or an optax schedule (a callable count -> "
        f"step size), got {bad!r}."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        proximal({"w": L1()}, bad)


def test_proximal_without_prox_names_the_parameter_path():
    params, _ = make_problem()
    msg = (
        "jaxcons.proximal: the regularizer OrthogonalRegularizer(factor=0.01, mode='rows') for "
        "parameter 'Dense_1/kernel' has no proximal operator (prox)."
    )
    tx = proximal({"Dense_1/kernel": OrthogonalRegularizer(), "**/bias": L1()}, 0.1)
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.init(params)

    def plain(x):
        return jnp.sum(jnp.abs(x))

    msg = f"the regularizer {plain!r} for parameter 'Dense_0/bias' has no proximal operator"
    with pytest.raises(ValueError, match=re.escape(msg)):
        proximal({"Dense_0/bias": plain}, 0.1).init(params)


def test_proximal_errors_at_update():
    params, _ = make_problem()
    tx = proximal({"**/bias": L1()}, 0.1)
    state = tx.init(params)
    msg = "jaxcons.proximal needs the current params: call tx.update(updates, state, params)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update(params, state)
    with pytest.raises(ValueError, match=re.escape("regularizer rule '**/bais' matches no")):
        proximal({"**/bais": L1()}, 0.1).init(params)


def test_custom_regularizer_with_prox_works_in_proximal():
    class NonNegPenalty:
        """A duck-typed regularizer: the indicator of w >= 0, whose prox is the projection."""

        def __call__(self, x):
            return jnp.zeros((), jnp.float32)

        def prox(self, x, step):
            del step
            return jnp.maximum(x, jnp.zeros((), x.dtype))

    params = {"w": jnp.array([0.5, -0.5])}
    tx = proximal({"w": NonNegPenalty()}, 0.1)
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], [0.5, 0.0])


def test_python_float_leaves_are_governed_like_arrays(standard_promotion):
    params = {"scale": 1.5}
    with standard_promotion():
        reg = jaxcons.regularize({"scale": jaxcons.L2(0.5)})
        updates, _ = reg.update({"scale": jnp.float32(0.0)}, reg.init(params), params)
        assert float(updates["scale"]) == 1.5  # d/dx 0.5 x^2 = x
        prox = jaxcons.proximal({"scale": jaxcons.L1(1.0)}, learning_rate=2.0)
        updates, _ = prox.update({"scale": jnp.float32(0.0)}, prox.init(params), params)
        assert float(optax.apply_updates(params, updates)["scale"]) == 0.0


def test_proximal_lands_on_the_prox_point_for_bf16_params_with_float32_updates(
    standard_promotion,
):
    # The difference is taken in float32: p + u' is the bf16 prox point itself, not a
    # bf16-rounded difference added back.
    p = jnp.array([0.423828125, -3.0, 0.05], jnp.bfloat16)
    u = jnp.array([0.3, -0.7, 0.01], jnp.float32)
    tx = jaxcons.proximal({"w": jaxcons.L1(0.1)}, learning_rate=1.0)
    with standard_promotion():
        updates, _ = tx.update({"w": u}, tx.init({"w": p}), {"w": p})
        new = optax.apply_updates({"w": p}, updates)["w"]
    x = np.asarray((p.astype(jnp.float32) + u).astype(jnp.bfloat16), np.float32)
    expected = np.sign(x) * np.maximum(np.abs(x) - np.float32(0.1), 0.0)
    np.testing.assert_array_equal(
        np.asarray(new, np.float32),
        np.asarray(jnp.asarray(expected).astype(jnp.bfloat16), np.float32),
    )
