"""A declared regularizer counts once, whichever documented path a user follows.

The case that counted twice: ``jaxcons.chain(opt)`` as the tx of ``nnx.Optimizer`` added the
gradient of the declared regularizers, and the docs also put ``jaxcons.penalty(...)`` in the
loss. With ``L2(0.5)`` on a parameter of ones and ``sgd(1.0)``, one count moves it by
``-lr * 2 * 0.5 * 1 = -1``, to exactly 0; two counts moved it to -1.

Declared regularizers are loss terms (as in Keras); ``jaxcons.chain`` must be told
``declared_regularizers="loss"`` (the loss adds them) or ``"chain"`` (it adds their gradient),
and without either it refuses parameters that declare one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import jaxcons
import jaxcons.flax


class Scaled(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones(3), regularizer=jaxcons.L2(0.5))

    def __call__(self):
        return self.w[...]


def _nnx_step(tx, loss_has_penalty):
    model = Scaled()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss(m):
        data = 0.0 * jnp.sum(m())  # A data term with zero gradient: only the penalty moves w.
        return data + (jaxcons.penalty(nnx.state(m, nnx.Param)) if loss_has_penalty else 0.0)

    optimizer.update(model, nnx.grad(loss)(model))
    return np.asarray(model.w[...])


def test_nnx_optimizer_with_chain_and_penalty_in_the_loss_counts_once():
    np.testing.assert_array_equal(
        _nnx_step(jaxcons.chain(optax.sgd(1.0), declared_regularizers="loss"), True), 0.0
    )


def test_nnx_optimizer_with_chain_adding_the_gradient_counts_once():
    np.testing.assert_array_equal(
        _nnx_step(jaxcons.chain(optax.sgd(1.0), declared_regularizers="chain"), False), 0.0
    )


def test_nnx_optimizer_with_a_plain_optimizer_and_penalty_in_the_loss_counts_once():
    np.testing.assert_array_equal(_nnx_step(optax.sgd(1.0), True), 0.0)


def test_both_explicit_paths_together_count_twice_as_the_docs_warn():
    # Only two explicit choices combine the paths; the docs warn against it.
    np.testing.assert_array_equal(
        _nnx_step(jaxcons.chain(optax.sgd(1.0), declared_regularizers="chain"), True), -1.0
    )


def test_chain_refuses_declared_regularizers_until_told_where_they_count():
    with pytest.raises(
        ValueError,
        match=r"jaxcons.chain: the parameters declare regularizers \(w\), and declared "
        r"regularizers count once\. Say where: declared_regularizers='loss' .* or "
        r"declared_regularizers='chain'",
    ):
        nnx.Optimizer(Scaled(), jaxcons.chain(optax.sgd(1.0)), wrt=nnx.Param)


def test_declared_regularizers_must_be_loss_chain_or_none():
    with pytest.raises(
        ValueError,
        match=r"declared_regularizers must be None, 'loss' or 'chain', got 'both'",
    ):
        jaxcons.chain(optax.sgd(1.0), declared_regularizers="both")


class LinenScaled(nn.Module):
    @nn.compact
    def __call__(self):
        init = jaxcons.flax.with_constraints(nn.initializers.ones, regularizer=jaxcons.L2(0.5))
        return self.param("w", init, (3,))


def _linen_loss(apply_fn, params, penalty):
    data = 0.0 * jnp.sum(apply_fn({"params": params}))
    return data + (penalty(params) if penalty is not None else 0.0)


def test_flax_train_state_with_chain_and_penalty_in_the_loss_counts_once():
    model = LinenScaled()
    params = model.init(jax.random.key(0))["params"]
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=jaxcons.chain(optax.sgd(1.0), declared_regularizers="loss"),
    )
    grads = jax.grad(lambda p: _linen_loss(state.apply_fn, p, jaxcons.penalty))(state.params)
    state = state.apply_gradients(grads=grads)
    np.testing.assert_array_equal(nn.unbox(state.params)["w"], 0.0)


def test_jaxcons_train_state_with_state_penalty_counts_once():
    model = LinenScaled()
    state = jaxcons.flax.TrainState.create(
        apply_fn=model.apply,
        params=model.init(jax.random.key(0))["params"],
        tx=jaxcons.chain(optax.sgd(1.0), declared_regularizers="loss"),
    )
    grads = jax.grad(lambda p: _linen_loss(state.apply_fn, p, state.penalty))(state.params)
    state = state.apply_gradients(grads=grads)
    np.testing.assert_array_equal(nn.unbox(state.params)["w"], 0.0)


def test_explicit_regularizer_rules_in_chain_count_once_and_ignore_declarations():
    # Explicit rules are counted by the chain; with "loss" the declared L2 is not added too.
    model = Scaled()
    tx = jaxcons.chain(
        optax.sgd(1.0), regularizers={"w": jaxcons.L2(0.25)}, declared_regularizers="loss"
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    optimizer.update(model, nnx.grad(lambda m: 0.0 * jnp.sum(m()))(model))
    np.testing.assert_array_equal(np.asarray(model.w[...]), 0.5)  # 1 - 1.0 * 2 * 0.25.
