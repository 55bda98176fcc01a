"""`jaxcons.constrain` and `jaxcons.proximal` on trees of many parameters, and exact
non-negativity from any start.

Oracles are NumPy float64 projections; structure (not timing) is checked with `jax.make_jaxpr`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcons

RULES = {
    "**/kernel": jaxcons.MaxNorm(1.5),
    "**/bias": jaxcons.NonNeg(),
    "**/scale": jaxcons.Clip(0.25, 2.0),
    "**/unit": jaxcons.UnitNorm(axis=1),
}


def _tree(blocks: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        f"block_{i}": {
            "kernel": rng.standard_normal((5, 3)).astype(np.float32),
            "bias": np.abs(rng.standard_normal(3)).astype(np.float32),
            "scale": rng.uniform(0.25, 2.0, 3).astype(np.float32),
            "unit": rng.standard_normal((2, 4)).astype(np.float32),
        }
        for i in range(blocks)
    }


def _oracle(name: str, x: np.ndarray) -> np.ndarray:
    """The projection of ``x`` (float64), written independently of jaxcons."""
    if name == "kernel":
        n = np.sqrt(np.sum(x * x, axis=0, keepdims=True))
        return x * np.minimum(1.0, 1.5 / np.where(n > 0, n, 1.0))
    if name == "bias":
        return np.maximum(x, 0.0)
    if name == "scale":
        return np.clip(x, 0.25, 2.0)
    n = np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    return x / np.where(n > 0, n, 1.0)


def test_many_equal_parameters_match_the_float64_projection():
    params = jax.tree_util.tree_map(jnp.asarray, _tree(12))
    rng = np.random.default_rng(1)
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape).astype(np.float32)), params
    )
    tx = jaxcons.constrain(RULES)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    for block, leaves in new.items():
        for name, value in leaves.items():
            x = np.asarray(params[block][name], np.float64) + np.asarray(grads[block][name])
            np.testing.assert_allclose(
                np.asarray(value), _oracle(name, x), rtol=2e-6, atol=1e-6, err_msg=block + name
            )
            if name == "bias":
                assert np.all(np.asarray(value) >= 0)
            if name == "scale":
                assert np.all((np.asarray(value) >= 0.25) & (np.asarray(value) <= 2.0))


def _update_equations(blocks: int) -> int:
    params = jax.tree_util.tree_map(jnp.asarray, _tree(blocks))
    tx = jaxcons.constrain(RULES)
    state = tx.init(params)
    return len(jax.make_jaxpr(lambda u, p: tx.update(u, state, p)[0])(params, params).eqns)


def test_update_traces_each_constraint_once_not_once_per_parameter():
    # Every parameter here shares its constraint, shape and dtypes with others: the update's
    # top-level program grows by one call per parameter, not by the projection's operations.
    small, large = _update_equations(2), _update_equations(10)
    extra_parameters = (10 - 2) * 4
    assert large - small <= extra_parameters, (small, large)


PROX_RULES = {
    "**/kernel": jaxcons.L1(0.5),
    "**/bias": jaxcons.L2(2.0),
    "**/scale": jaxcons.GroupLasso(1.0, axis=0),
    "**/unit": jaxcons.MaxNorm(1.0, axis=1),
}


def _prox_oracle(name: str, x: np.ndarray, eta: float) -> np.ndarray:
    """The proximal point of ``x`` under ``PROX_RULES`` with step ``eta`` (float64)."""
    if name == "kernel":
        return np.sign(x) * np.maximum(np.abs(x) - eta * 0.5, 0.0)
    if name == "bias":
        return x / (1.0 + 2.0 * eta * 2.0)
    if name == "scale":
        n = np.sqrt(np.sum(x * x))
        return x * max(0.0, 1.0 - eta * 1.0 / n)
    n = np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    return x * np.minimum(1.0, 1.0 / np.where(n > 0, n, 1.0))


def test_proximal_on_many_equal_parameters_matches_float64_for_fixed_and_scheduled_steps():
    params = jax.tree_util.tree_map(jnp.asarray, _tree(6))
    rng = np.random.default_rng(2)
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape).astype(np.float32)), params
    )
    schedule = optax.linear_schedule(0.1, 0.3, transition_steps=1)
    for learning_rate, etas in ((0.1, (0.1, 0.1)), (schedule, (0.1, 0.3))):
        tx = jaxcons.proximal(PROX_RULES, learning_rate)
        state = tx.init(params)
        update = jax.jit(tx.update)
        for eta in etas:  # Two steps: the schedule's value moves between them.
            updates, state = update(grads, state, params)
            new = optax.apply_updates(params, updates)
            for block, leaves in new.items():
                for name, value in leaves.items():
                    x = np.asarray(params[block][name], np.float64) + np.asarray(grads[block][name])
                    np.testing.assert_allclose(
                        np.asarray(value),
                        _prox_oracle(name, x, eta),
                        rtol=2e-6,
                        atol=1e-6,
                        err_msg=f"{block}/{name}, eta {eta}",
                    )


def test_proximal_traces_each_operand_once_not_once_per_parameter():
    def equations(blocks: int) -> int:
        params = jax.tree_util.tree_map(jnp.asarray, _tree(blocks))
        tx = jaxcons.proximal(PROX_RULES, 0.1)
        state = tx.init(params)
        return len(jax.make_jaxpr(lambda u, p: tx.update(u, state, p)[0])(params, params).eqns)

    small, large = equations(2), equations(10)
    assert large - small <= (10 - 2) * 4, (small, large)


_F32 = st.floats(-(2.0**100), 2.0**100, width=32)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(_F32, _F32), min_size=1, max_size=16))
def test_nonneg_lands_exactly_nonnegative_from_any_float32_start(pairs):
    # Any start, feasible or not, tiny or huge: p + (max(p + u, 0) - p) rounds to >= 0.
    params = {"w": jnp.asarray([p for p, _ in pairs], jnp.float32)}
    updates_in = {"w": jnp.asarray([u for _, u in pairs], jnp.float32)}
    tx = jaxcons.constrain({"w": jaxcons.NonNeg()})
    updates, _ = tx.update(updates_in, tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, updates)["w"])
    assert np.all(new >= 0), new


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, width=16), min_size=1, max_size=16),
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=16, max_size=16),
)
def test_nonneg_lands_exactly_nonnegative_for_bf16_params_with_float32_updates(p, u):
    params = {"w": jnp.asarray(p, jnp.bfloat16)}
    updates_in = {"w": jnp.asarray(u[: len(p)], jnp.float32)}
    tx = jaxcons.constrain({"w": jaxcons.NonNeg()})
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = tx.update(updates_in, tx.init(params), params)
        new = optax.apply_updates(params, updates)["w"]
    assert new.dtype == jnp.bfloat16
    assert np.all(np.asarray(new, np.float32) >= 0)


def test_nonneg_stays_nonnegative_for_float32_params_with_bfloat16_updates():
    # -p is not a bfloat16 here: the bf16 update nearest to 0 - p overshoots past -p, and
    # p + (0 - p) rounded to bf16 lands at -2**-9. One bf16 step back lands at 2**-8 * 1.5.
    p = np.float32(1.005859375)
    assert float(p + np.float32(jnp.bfloat16(-p))) < 0
    params = {"w": jnp.asarray([p, 0.0], jnp.float32)}
    tx = jaxcons.constrain({"w": jaxcons.NonNeg()})
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = tx.update(
            {"w": jnp.asarray([-2.0, -1.0], jnp.bfloat16)}, tx.init(params), params
        )
        new = np.asarray(optax.apply_updates(params, updates)["w"])
    assert updates["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(new, np.array([0.005859375, 0.0], np.float32))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=16),
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=16, max_size=16),
)
def test_nonneg_lands_nonnegative_for_float32_params_with_bfloat16_updates(p, u):
    # Any start: the correction's step needs only that the projection is in the box.
    params = {"w": jnp.asarray(p, jnp.float32)}
    updates_in = {"w": jnp.asarray(u[: len(p)], jnp.bfloat16)}
    tx = jaxcons.constrain({"w": jaxcons.NonNeg()})
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = tx.update(updates_in, tx.init(params), params)
        new = np.asarray(optax.apply_updates(params, updates)["w"])
    assert np.all(new >= 0), new
