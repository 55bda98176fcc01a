"""orbax round trips: `constrain`'s state (SpectralNorm vectors) and `jaxcons.flax.TrainState`.

A run restored from a checkpoint must continue bit for bit like the uninterrupted run.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state

import jaxcons
import jaxcons.flax
from jaxcons.constraints import MaxNorm, NonNeg, SpectralNorm
from jaxcons.flax import Constrained, TrainState, with_constraints
from jaxcons.regularizers import L2

X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        spectral = with_constraints(
            nn.initializers.lecun_normal(), constraint=SpectralNorm(0.8), regularizer=L2(0.01)
        )
        x = jnp.tanh(nn.Dense(6, kernel_init=spectral)(x))
        x = nn.Dense(
            3, kernel_init=with_constraints(nn.initializers.lecun_normal(), constraint=MaxNorm(0.5))
        )(x)
        scale = self.param("scale", with_constraints(nn.initializers.ones, NonNeg()), (1, 3))
        return x * scale


def loss(apply_fn, params, penalty_fn=None):
    value = jnp.mean((apply_fn({"params": params}, X) - Y) ** 2)
    return value if penalty_fn is None else value + penalty_fn(params)


@jax.jit
def step_jaxcons(state):
    grads = jax.grad(lambda p: loss(state.apply_fn, p, state.penalty))(state.params)
    return state.apply_gradients(grads=grads)


@jax.jit
def step_flax(state):
    return state.apply_gradients(grads=jax.grad(lambda p: loss(state.apply_fn, p))(state.params))


def save_and_restore(path, tree):
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)
        checkpointer.wait_until_finished()
        return checkpointer.restore(path, abstract)


def run(step, state, n):
    for _ in range(n):
        state = step(state)
    return state


def test_constrain_state_with_spectral_vectors_round_trips(tmp_path, adam, assert_trees_equal):
    params = {
        "kernel": jnp.asarray(np.random.default_rng(2).normal(size=(5, 4)), jnp.float32),
        "bias": jnp.zeros(4, jnp.float32),
    }
    tx = optax.chain(adam(0.1), jaxcons.constrain({"kernel": SpectralNorm(1.0), "bias": NonNeg()}))
    grad_fn = jax.grad(lambda p: jnp.sum(jnp.tanh(p["kernel"] @ jnp.ones(4) + p["bias"][0])))

    @jax.jit
    def step(carry):
        p, s = carry
        updates, s = tx.update(grad_fn(p), s, p)
        return optax.apply_updates(p, updates), s

    carry = run(step, (params, tx.init(params)), 3)
    restored = save_and_restore(tmp_path / "ckpt", carry)
    assert_trees_equal(restored, carry)
    constrain_state = restored[1][1]
    assert isinstance(constrain_state, jaxcons.ConstrainState)
    assert isinstance(constrain_state.constraint_states["kernel"], jaxcons.SpectralNormState)
    assert_trees_equal(run(step, restored, 4), run(step, carry, 4))


def test_jaxcons_train_state_round_trips_and_continues_bit_identically(
    tmp_path, adam, assert_trees_equal
):
    model = Net()
    params = model.init(jax.random.key(0), X)["params"]
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=adam(0.05),
        constraints={"Dense_0/bias": NonNeg()},
    )
    assert list(state.constraint_state.constraint_states) == ["Dense_0/kernel"]
    state = run(step_jaxcons, state, 3)
    restored = save_and_restore(tmp_path / "state", state)
    assert_trees_equal(restored, state)
    assert isinstance(restored.params["Dense_0"]["kernel"], Constrained)
    assert restored.params["Dense_0"]["kernel"].constraint == SpectralNorm(0.8)
    assert restored.constraints is state.constraints
    assert int(restored.step) == 3
    continued = run(step_jaxcons, restored, 5)
    uninterrupted = run(step_jaxcons, state, 5)
    assert_trees_equal(continued.params, uninterrupted.params)
    assert_trees_equal(continued.constraint_state, uninterrupted.constraint_state)
    assert_trees_equal(continued.opt_state, uninterrupted.opt_state)


def test_restoring_into_a_fresh_state_continues_bit_identically(tmp_path, adam, assert_trees_equal):
    # The usual resume: build a fresh state from the model, restore the saved leaves into it.
    model = Net()

    def fresh():
        return TrainState.create(
            apply_fn=model.apply,
            params=model.init(jax.random.key(0), X)["params"],
            tx=adam(0.05),
        )

    trained = run(step_jaxcons, fresh(), 4)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", trained)
        checkpointer.wait_until_finished()
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, fresh())
        restored = checkpointer.restore(tmp_path / "state", target)
    assert_trees_equal(run(step_jaxcons, restored, 3).params, run(step_jaxcons, trained, 3).params)


@pytest.mark.parametrize("checkpointer", [ocp.StandardCheckpointer, ocp.PyTreeCheckpointer])
def test_plain_flax_train_state_with_constrain_round_trips(
    tmp_path, checkpointer, adam, assert_trees_equal
):
    model = Net()
    params = nn.unbox(model.init(jax.random.key(0), X)["params"])
    rules = {"Dense_0/kernel": SpectralNorm(0.8), "**/bias": NonNeg()}
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optax.chain(adam(0.05), jaxcons.constrain(rules)),
    )
    state = run(step_flax, state, 2)
    with checkpointer() as ckptr:
        ckptr.save(tmp_path / "ckpt", state)
        if hasattr(ckptr, "wait_until_finished"):
            ckptr.wait_until_finished()
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        if checkpointer is ocp.PyTreeCheckpointer:
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
            restored = ckptr.restore(tmp_path / "ckpt", item=target, restore_args=restore_args)
        else:
            restored = ckptr.restore(tmp_path / "ckpt", target)
    assert_trees_equal(restored, state)
    assert_trees_equal(run(step_flax, restored, 3).params, run(step_flax, state, 3).params)
