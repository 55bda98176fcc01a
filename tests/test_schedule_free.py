"""Schedule-free optimizers: constraints hold for the params users evaluate."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import ScheduleFreeState, schedule_free_adamw, schedule_free_eval_params

import jaxcons

RULES = {"k": jaxcons.MaxNorm(1.0), "b": jaxcons.NonNeg()}


def _start():
    rng = np.random.default_rng(0)
    params = {
        "k": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
        "b": jnp.asarray(rng.uniform(0, 1, size=4), jnp.float32),
    }
    return jaxcons.apply_constraints(params, RULES)  # A feasible start.


TARGET = {
    "k": jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)) * 10, jnp.float32),
    "b": -jnp.ones(4),
}


def _train(tx, standard_promotion, steps=150):
    params = _start()
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: sum(jnp.sum((p[n] - TARGET[n]) ** 2) for n in p))(params)
        with standard_promotion():  # optax's schedule-free mixes int32 counts and floats.
            updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    worst = {"k": 0.0, "b": 0.0}
    for _ in range(steps):
        params, state = step(params, state)
        sf = next(s for s in state if isinstance(s, ScheduleFreeState))
        x = schedule_free_eval_params(sf, params)
        worst["k"] = max(worst["k"], np.linalg.norm(np.asarray(x["k"], np.float64), axis=0).max())
        worst["b"] = min(worst["b"], float(np.asarray(x["b"]).min()))
    return worst, params, sf


def test_by_hand_the_evaluated_params_leave_the_set(standard_promotion):
    # The problem jaxcons.chain solves: constrain after the optimizer projects y, not x.
    tx = optax.chain(schedule_free_adamw(0.1), jaxcons.constrain(RULES))
    worst, params, _ = _train(tx, standard_promotion)
    assert np.linalg.norm(np.asarray(params["k"]), axis=0).max() <= 1.0 + 1e-6
    assert worst["k"] > 2.0


def test_jaxcons_chain_keeps_the_evaluated_params_feasible(standard_promotion):
    tx = jaxcons.chain(schedule_free_adamw(0.1), constraints=RULES)
    worst, params, sf = _train(tx, standard_promotion)
    assert worst["k"] <= 1.0 + 1e-6, worst
    assert worst["b"] >= -1e-6, worst
    # The params (y) and the base iterate (z) are feasible too, and the bound binds.
    for tree in (params, sf.z):
        norms = np.linalg.norm(np.asarray(tree["k"], np.float64), axis=0)
        assert norms.max() <= 1.0 + 1e-6 and norms.max() > 0.9
        assert float(np.asarray(tree["b"]).min()) >= -1e-6


def test_schedule_free_inside_another_wrapper_is_an_error():
    tx = jaxcons.chain(optax.chain(optax.clip(1.0), schedule_free_adamw(0.1)), constraints=RULES)
    msg = "the optimizer wraps a schedule-free optimizer inside another transform"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.init(_start())


def test_schedule_free_with_proximal_is_an_error():
    tx = jaxcons.chain(
        schedule_free_adamw(0.1),
        constraints=RULES,
        proximal={"k": jaxcons.L1(0.1)},
        learning_rate=0.1,
    )
    msg = "proximal steps and tangent projections are not supported with a schedule-free"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.init(_start())
