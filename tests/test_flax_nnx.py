"""nnx: declared metadata, `nnx.Optimizer` with `jaxcons.constrain`, activity regularization."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcons
import jaxcons.flax
import jaxcons.flax.nnx
from jaxcons import penalty
from jaxcons.constraints import MaxNorm, NonNeg, SpectralNorm
from jaxcons.flax import constraint_rules, regularizer_rules
from jaxcons.regularizers import L1, L2

X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(1).normal(size=(16, 2)), jnp.float32)


class MLP(nnx.Module):
    def __init__(self, rngs, kernel_metadata=None):
        meta = kernel_metadata or {}
        self.layers = nnx.List(
            [
                nnx.Linear(3, 8, kernel_metadata=meta, rngs=rngs),
                nnx.Linear(8, 2, rngs=rngs),
            ]
        )
        self.scale = nnx.Param(jnp.ones((1, 2)), constraint=NonNeg(), regularizer=L1(0.01))

    def __call__(self, x):
        return self.layers[1](jnp.tanh(self.layers[0](x))) * self.scale[...]


def mse(model):
    return jnp.mean((model(X) - Y) ** 2)


def make_step(loss):
    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    return step


def run(step, model, optimizer, n):
    return [float(step(model, optimizer)) for _ in range(n)]


def test_optimizer_with_constrain_on_nnx_paths(adam):
    model = MLP(nnx.Rngs(0))
    rules = {"layers/0/kernel": MaxNorm(0.3), "layers/*/bias": NonNeg(), "scale": NonNeg()}
    optimizer = nnx.Optimizer(
        model, optax.chain(adam(0.05), jaxcons.constrain(rules)), wrt=nnx.Param
    )
    losses = run(make_step(mse), model, optimizer, 20)
    assert losses[-1] < losses[0]
    norms = np.linalg.norm(np.asarray(model.layers[0].kernel[...], np.float64), axis=0)
    assert np.all(norms <= 0.3 * (1 + 4 * np.finfo(np.float32).eps))
    assert np.max(norms) > 0.29  # The bound is active.
    for bias in (model.layers[0].bias[...], model.layers[1].bias[...]):
        assert np.all(np.asarray(bias) >= 0.0)
    assert np.any(np.asarray(model.layers[1].bias[...]) == 0.0)


def test_optimizer_with_declared_rules_and_penalty(adam):
    model = MLP(nnx.Rngs(0), kernel_metadata={"constraint": MaxNorm(0.3), "regularizer": L2(0.1)})
    optimizer = nnx.Optimizer(
        model,
        optax.chain(adam(0.05), jaxcons.constrain(constraint_rules(model))),
        wrt=nnx.Param,
    )
    reg_rules = regularizer_rules(model)
    assert reg_rules == [("layers/0/kernel", L2(0.1)), ("scale", L1(0.01))]

    def loss(model):
        return mse(model) + penalty(nnx.state(model, nnx.Param), reg_rules)

    kernel0 = np.asarray(model.layers[0].kernel[...], np.float64)
    expected = 0.1 * np.sum(kernel0**2) + 0.01 * 2.0
    np.testing.assert_allclose(loss(model) - mse(model), expected, rtol=1e-5)
    run(make_step(loss), model, optimizer, 10)
    norms = np.linalg.norm(np.asarray(model.layers[0].kernel[...], np.float64), axis=0)
    assert np.all(norms <= 0.3 * (1 + 4 * np.finfo(np.float32).eps))
    assert np.all(np.asarray(model.scale[...]) >= 0.0)


def test_optimizer_init_on_variables_and_update_on_arrays_use_the_same_paths():
    model = MLP(nnx.Rngs(0))
    rules = {"layers/0/kernel": SpectralNorm(0.5, n_power_iterations=3)}
    optimizer = nnx.Optimizer(
        model, optax.chain(optax.sgd(0.1), jaxcons.constrain(rules)), wrt=nnx.Param
    )
    # init saw nnx Variables; the state is keyed by the same path update resolves on arrays.
    cstate = optimizer.opt_state[1]
    assert list(cstate.constraint_states) == ["layers/0/kernel"]
    u0 = np.asarray(cstate.constraint_states["layers/0/kernel"].u[...])
    run(make_step(mse), model, optimizer, 5)
    u5 = np.asarray(optimizer.opt_state[1].constraint_states["layers/0/kernel"].u[...])
    assert u5.shape == u0.shape == (8,) and not np.array_equal(u0, u5)
    sigma = np.linalg.svd(np.asarray(model.layers[0].kernel[...], np.float64), compute_uv=False)
    assert sigma[0] <= 0.5 * (1 + 1e-3)
    assert int(optimizer.step[...]) == 5


def test_masks_for_nnx_optimizer_are_built_from_pure_trees_or_callables(as_pure):
    # nnx.Optimizer's init sees Variables and its update pure arrays: a mask built from the
    # (non-pure) nnx.state would not match the update's tree. Build it from the pure state,
    # or pass a callable, which optax evaluates on the tree it is given each time.
    model = MLP(nnx.Rngs(0))
    pure_mask = jaxcons.mask(as_pure(nnx.state(model, nnx.Param)), "**/bias")
    for mask in (pure_mask, lambda p: jaxcons.mask(p, "**/bias")):
        model = MLP(nnx.Rngs(0))
        tx = optax.chain(
            optax.masked(optax.set_to_zero(), mask),
            optax.sgd(0.5),
            jaxcons.constrain({"**/kernel": MaxNorm(0.2)}),
        )
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        kernel = np.asarray(model.layers[1].kernel[...])
        run(make_step(mse), model, optimizer, 2)
        np.testing.assert_array_equal(model.layers[0].bias[...], np.zeros(8, np.float32))
        assert not np.array_equal(model.layers[1].kernel[...], kernel)
        norms = np.linalg.norm(np.asarray(model.layers[1].kernel[...]), axis=0)
        assert np.all(norms <= 0.2 * (1 + 1e-6))


# ----------------------------------------------------------------------------- activity


class KerasDocsModel(nnx.Module):
    """Keras's docs example: Dense(5), kernel ones + L1(0.01), activity L2(0.01)."""

    def __init__(self, rngs):
        self.dense = nnx.Linear(
            5,
            5,
            kernel_init=nnx.initializers.ones,
            kernel_metadata={"regularizer": L1(0.01)},
            rngs=rngs,
        )
        self.activity = jaxcons.flax.nnx.ActivityRegularization(L2(0.01))

    def __call__(self, x):
        return self.activity(self.dense(x))


def test_keras_docs_example_totals_5_25():
    model = KerasDocsModel(nnx.Rngs(0))
    assert float(jaxcons.flax.activity_losses(model)) == 0.0  # Nothing recorded yet.
    y = model(2.0 * jnp.ones((5, 5), jnp.float32))
    np.testing.assert_array_equal(y, np.full((5, 5), 10.0, np.float32))
    activity = jaxcons.flax.activity_losses(model)
    weights = penalty(nnx.state(model, nnx.Param), regularizer_rules(model))
    np.testing.assert_allclose(activity, 5.0, rtol=1e-6)
    np.testing.assert_allclose(weights, 0.25, rtol=1e-6)
    np.testing.assert_allclose(activity + weights, 5.25, rtol=1e-6)
    np.testing.assert_allclose(
        jaxcons.flax.activity_losses(nnx.state(model, jaxcons.flax.nnx.ActivityLoss)),
        5.0,
        rtol=1e-6,
    )
    np.testing.assert_allclose(jaxcons.flax.activity_losses(nnx.state(model)), 5.0, rtol=1e-6)


def test_activity_loss_is_differentiable_and_not_a_param():
    model = KerasDocsModel(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5)), jnp.float32)

    def loss(model):
        model(x)
        return jaxcons.flax.activity_losses(model)

    grads = nnx.grad(loss)(model)
    kernel = np.asarray(model.dense.kernel[...], np.float64)
    y = np.asarray(x, np.float64) @ kernel + np.asarray(model.dense.bias[...], np.float64)
    expected = np.asarray(x, np.float64).T @ (2 * 0.01 * y) / 4
    np.testing.assert_allclose(grads["dense"]["kernel"][...], expected, rtol=1e-5)
    assert "activity" not in nnx.state(grads)
    assert jaxcons.paths(nnx.state(model, nnx.Param)) == ["dense/bias", "dense/kernel"]


def test_activity_loss_records_the_latest_call_without_retracing():
    layer = jaxcons.flax.nnx.ActivityRegularization("l1")

    @nnx.jit
    def forward(layer, x):
        return layer(x)

    for scale in (1.0, 2.0, 3.0):
        forward(layer, scale * jnp.ones((2, 3), jnp.float32))
        np.testing.assert_allclose(jaxcons.flax.activity_losses(layer), 0.01 * 3 * scale, rtol=1e-6)
    assert isinstance(layer.loss, jaxcons.flax.nnx.ActivityLoss)


@pytest.mark.parametrize("name", ["nope"])
def test_activity_regularization_rejects_unknown_regularizers(name):
    with pytest.raises(ValueError, match="nope"):
        jaxcons.flax.nnx.ActivityRegularization(name)


def test_activity_losses_rejects_a_pure_state(as_pure):
    model = KerasDocsModel(nnx.Rngs(0))
    model(2.0 * jnp.ones((5, 5), jnp.float32))
    assert float(jaxcons.flax.activity_losses(nnx.state(model))) > 0
    with pytest.raises(ValueError, match="cannot tell activity losses apart in a pure nnx State"):
        jaxcons.flax.activity_losses(as_pure(nnx.state(model)))
