"""Declared constraints and regularizers just work: the transforms read them at init."""

from __future__ import annotations

import re

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

X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(1).normal(size=(16, 2)) * 10, jnp.float32)


class NNXModel(nnx.Module):
    def __init__(self, rngs, scale=-1.0):
        self.dense = nnx.Linear(
            3, 2, kernel_metadata={"constraint": jaxcons.MaxNorm(0.5)}, rngs=rngs
        )
        self.scale = nnx.Param(
            jnp.full((1, 2), scale), constraint=jaxcons.NonNeg(), regularizer=jaxcons.L2(1.0)
        )

    def __call__(self, x):
        return self.dense(x) * self.scale[...] + self.dense(x)


def _nnx_train(tx, steps=5, scale=-1.0):
    model = NNXModel(nnx.Rngs(0), scale)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(steps):
        step(model, optimizer)
    return model


def _assert_nnx_feasible(model):
    norms = np.linalg.norm(np.asarray(model.dense.kernel[...], np.float64), axis=0)
    assert norms.max() <= 0.5 * (1 + 1e-6), norms
    assert float(model.scale[...].min()) >= 0.0


def test_nnx_optimizer_with_constrain_and_no_rules_honours_declarations(adam):
    model = _nnx_train(optax.chain(adam(0.1), jaxcons.constrain()))
    _assert_nnx_feasible(model)


def test_nnx_optimizer_with_explicit_rules_still_honours_declarations(adam):
    # Before: rules for other parameters silently dropped the declared ones.
    model = _nnx_train(optax.chain(adam(0.1), jaxcons.constrain({"dense/bias": "non_neg"})))
    _assert_nnx_feasible(model)
    assert float(model.dense.bias[...].min()) >= 0.0


def test_jaxcons_chain_with_no_rules_honours_declared_constraints_and_regularizers():
    chained = _nnx_train(
        jaxcons.chain(optax.sgd(0.01), declared_regularizers="chain"), steps=2, scale=2.0
    )
    by_hand = _nnx_train(
        optax.chain(jaxcons.regularize(), optax.sgd(0.01), jaxcons.constrain()), steps=2, scale=2.0
    )
    unregularized = _nnx_train(optax.chain(optax.sgd(0.01), jaxcons.constrain()), 2, 2.0)
    _assert_nnx_feasible(chained)
    np.testing.assert_array_equal(chained.scale[...], by_hand.scale[...])
    # The declared L2(1.0) pulls scale down by 0.01 * 2 * scale per step: ~0.08 over 2 steps.
    gap = np.asarray(unregularized.scale[...]) - np.asarray(chained.scale[...])
    np.testing.assert_allclose(gap, 0.0796, rtol=0.05)


def test_linen_with_flax_own_train_state_honours_boxes(adam):
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            scale = self.param(
                "scale",
                jaxcons.flax.with_constraints(nn.initializers.ones, constraint="non_neg"),
                (1, 2),
            )
            return nn.Dense(2)(x) * scale

    model = Model()
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=model.init(jax.random.key(0), X)["params"],
        tx=optax.chain(adam(0.5), jaxcons.constrain()),
    )

    def loss(params, apply_fn):
        return jnp.sum(apply_fn({"params": params}, X))

    for _ in range(3):
        state = state.apply_gradients(grads=jax.grad(loss)(state.params, state.apply_fn))
    assert float(nn.unbox(state.params)["scale"].min()) >= 0.0


@pytest.mark.parametrize("rules", [None, {}, []])
def test_constrain_without_rules_or_declarations_is_an_error(rules):
    params = {"kernel": jnp.ones((2, 2))}
    msg = "jaxcons.constrain has no constraint rules and no parameter declares a constraint"
    tx = jaxcons.constrain() if rules is None else jaxcons.constrain(rules)
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.init(params)


def test_regularize_and_penalty_without_rules_or_declarations_are_errors():
    params = {"kernel": jnp.ones((2, 2))}
    msg = "has no regularizer rules and no parameter declares a regularizer"
    with pytest.raises(ValueError, match="jaxcons.regularize " + re.escape(msg)):
        jaxcons.regularize().init(params)
    with pytest.raises(ValueError, match="jaxcons.penalty " + re.escape(msg)):
        jaxcons.penalty(params)


def test_a_pure_dict_has_lost_its_declarations_and_says_so():
    model = NNXModel(nnx.Rngs(0))
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    msg = "No parameter of this dict declares a constraint. A pure tree (nnx.to_pure_dict"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.flax.constraint_rules(pure)
    assert jaxcons.flax.constraint_rules(model) == [
        ("dense/kernel", jaxcons.MaxNorm(0.5)),
        ("scale", jaxcons.NonNeg()),
    ]


def test_penalty_and_apply_constraints_read_declarations():
    model = NNXModel(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    np.testing.assert_allclose(jaxcons.penalty(state), 2.0, rtol=1e-6)  # 1.0 * sum(scale ** 2)
    assert list(jaxcons.penalties(state)) == ["scale"]
    projected = jaxcons.apply_constraints(state)
    assert float(projected["scale"][...].min()) == 0.0
    assert set(jaxcons.violations(state)) == {"dense/kernel", "scale"}


def test_declared_and_explicit_rules_combine_as_in_constraint_rules(adam):
    model = NNXModel(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    with pytest.raises(ValueError, match=r"'dense/kernel' \(declared MaxNorm"):
        jaxcons.constrain({"**/kernel": jaxcons.MaxNorm(2.0)}).init(state)
    # An equal explicit rule is no conflict; prefer= decides a different one.
    jaxcons.constrain({"dense/kernel": jaxcons.MaxNorm(0.5)}).init(state)
    wide = jaxcons.apply_constraints(state, {"**/kernel": jaxcons.MaxNorm(2.0)}, prefer="explicit")
    norms = np.linalg.norm(np.asarray(wide["dense"]["kernel"][...]), axis=0)
    assert norms.max() <= 2.0 * (1 + 1e-6) and norms.max() > 0.5


def test_a_transform_initialised_on_another_model_is_an_error():
    tx = jaxcons.constrain()
    tx.init(nnx.state(NNXModel(nnx.Rngs(0)), nnx.Param))
    tx.init(nnx.state(NNXModel(nnx.Rngs(1)), nnx.Param))  # The same declarations: fine.
    other = nnx.Linear(2, 2, kernel_metadata={"constraint": "unit_norm"}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="initialised on a tree that declares other constraints"):
        tx.init(nnx.state(other, nnx.Param))
