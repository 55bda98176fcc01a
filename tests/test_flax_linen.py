"""linen: `with_constraints` boxes, `jaxcons.flax.TrainState`, activity regularization."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT
from flax.training import train_state

import jaxcons
import jaxcons.flax
from jaxcons import penalty
from jaxcons.constraints import Clip, MaxNorm, NonNeg, SpectralNorm
from jaxcons.flax import Constrained, TrainState, with_constraints
from jaxcons.regularizers import L1, L2

X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)


class Counted(jaxcons.StatefulConstraint):
    """A stateful test constraint: NonNeg, counting its projections in its state."""

    elementwise_bounds = (0.0, None)

    def __call__(self, w):
        return jnp.maximum(w, jnp.zeros((), w.dtype))

    def init(self, w):
        return jnp.zeros((), jnp.int32)

    def project(self, w, state):
        return self(w), state + 1


class Net(nn.Module):
    """Dense -> scale; the kernel and scale declare constraints, the kernel a regularizer."""

    kernel_init: Any = with_constraints(
        nn.initializers.lecun_normal(), constraint=MaxNorm(0.5), regularizer=L2(0.1)
    )

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, kernel_init=self.kernel_init)(x)
        scale = self.param(
            "scale", with_constraints(nn.initializers.ones, constraint=NonNeg()), (1, 4)
        )
        return h * scale


def init_params() -> Any:
    return Net().init(jax.random.key(0), X)["params"]


def loss_fn(apply_fn, params):
    return jnp.mean((apply_fn({"params": params}, X) - 1.0) ** 2)


def grads_of(state) -> Any:
    return jax.grad(lambda p: loss_fn(state.apply_fn, p))(state.params)


def column_norms(w: jax.Array) -> np.ndarray:
    return np.sqrt(np.sum(np.asarray(w, np.float64) ** 2, axis=0))


# ----------------------------------------------------------------------------- boxes


def test_box_survives_init_and_apply_unboxes():
    params = init_params()
    box = params["scale"]
    assert isinstance(box, Constrained)
    assert box.constraint == NonNeg() and box.regularizer is None
    kernel = params["Dense_0"]["kernel"]
    assert kernel.constraint == MaxNorm(0.5) and kernel.regularizer == L2(0.1)
    plain = nn.unbox(params)
    expected = (np.asarray(X) @ np.asarray(plain["Dense_0"]["kernel"])) * np.asarray(plain["scale"])
    np.testing.assert_allclose(Net().apply({"params": params}, X), expected, rtol=1e-6)
    assert jaxcons.paths(params) == ["Dense_0/bias", "Dense_0/kernel", "scale"]


def test_box_survives_jit_and_grad():
    params = init_params()
    out = jax.jit(lambda p: jax.tree_util.tree_map(lambda x: 2 * x, p))(params)
    assert isinstance(out["scale"], Constrained) and out["scale"].constraint == NonNeg()
    np.testing.assert_array_equal(out["scale"].value, 2 * params["scale"].value)
    grads = jax.grad(lambda p: loss_fn(Net().apply, p))(params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def test_with_constraints_looks_up_names_and_rejects_unknown_ones():
    box = with_constraints(nn.initializers.zeros, constraint="non_neg", regularizer="l1")(
        jax.random.key(0), (2,)
    )
    assert box.constraint == NonNeg() and box.regularizer == L1(0.01)
    with pytest.raises(ValueError, match="non_negative"):
        with_constraints(nn.initializers.zeros, constraint="non_negative")


def test_box_refuses_stacking_by_lifted_transforms():
    class Layer(nn.Module):
        @nn.compact
        def __call__(self, c, _):
            w = self.param("w", with_constraints(nn.initializers.ones, constraint=NonNeg()), (3,))
            return c * w, None

    scanned = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    with pytest.raises(
        ValueError,
        match=r"constraint=NonNeg\(\), regularizer=None\) cannot be stacked by a lifted "
        r"transform \(nn.scan / nn.vmap adding axis 0\)",
    ):
        scanned().init(jax.random.key(0), jnp.ones(3), None)
    box = Constrained(jnp.ones((2, 3)), constraint=NonNeg())
    with pytest.raises(ValueError, match="adding axis 1"):
        box.remove_axis(1, {})


@pytest.mark.parametrize("order", ["constraints_outside", "partitioning_outside"])
def test_box_composes_with_partitioning(order):
    init = nn.initializers.ones
    if order == "constraints_outside":
        kernel_init = with_constraints(nn.with_partitioning(init, (None, "model")), NonNeg())
    else:
        kernel_init = nn.with_partitioning(with_constraints(init, NonNeg()), (None, "model"))
    model = nn.Dense(2, kernel_init=kernel_init)
    params = model.init(jax.random.key(0), X)["params"]
    assert jaxcons.flax.constraint_rules(params) == [("kernel", NonNeg())]
    specs = nn.get_partition_spec(params)
    assert specs == {
        "bias": jax.sharding.PartitionSpec(),
        "kernel": jax.sharding.PartitionSpec(None, "model"),
    }
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(1.0))
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    new = state.apply_gradients(grads=grads)
    assert jax.tree_util.tree_structure(new.params) == jax.tree_util.tree_structure(params)
    np.testing.assert_array_equal(nn.unbox(new.params)["kernel"], np.zeros((3, 2), np.float32))
    np.testing.assert_array_equal(nn.unbox(new.params)["bias"], -np.ones(2, np.float32))


# ----------------------------------------------------------------------------- TrainState


def test_train_state_uses_declared_constraints_exactly():
    params = init_params()
    state = TrainState.create(apply_fn=Net().apply, params=params, tx=optax.sgd(5.0))
    assert [r.pattern for r in state.constraints.entries] == [
        "Dense_0/kernel",
        "scale",
    ]
    for _ in range(3):
        state = state.apply_gradients(grads=grads_of(state))
    plain = nn.unbox(state.params)
    assert np.all(np.asarray(plain["scale"]) >= 0.0)
    assert np.min(plain["scale"]) == 0.0  # The step pushed some entries below zero.
    norms = column_norms(plain["Dense_0"]["kernel"])
    assert np.all(norms <= 0.5 * (1 + 4 * np.finfo(np.float32).eps))
    assert isinstance(state.params["scale"], Constrained)
    assert int(state.step) == 3


def test_train_state_step_is_projection_of_tx_step():
    params = {"w": jnp.array([0.5, -0.25, 2.0, 0.75], jnp.float32)}
    grads = {"w": jnp.array([1.0, 1.0, -1.0, -0.5], jnp.float32)}
    state = TrainState.create(
        apply_fn=None, params=params, tx=optax.sgd(1.0), constraints={"w": Clip(0.0, 1.0)}
    )
    new = state.apply_gradients(grads=grads)
    np.testing.assert_array_equal(new.params["w"], np.array([0.0, 0.0, 1.0, 1.0], np.float32))


def test_train_state_nonneg_clip_exactly_feasible_after_rounding():
    # p + (P(x) - p) rounds out of the box for these values; the state must land inside.
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.uniform(1e3, 2e3, size=256), jnp.float32)
    g = jnp.asarray(-rng.uniform(1e3, 3e3, size=256), jnp.float32)
    state = TrainState.create(
        apply_fn=None,
        params={"a": p, "b": p},
        tx=optax.sgd(1.0),
        constraints={"a": NonNeg(), "b": Clip(0.1, 1.0)},
    )
    new = state.apply_gradients(grads={"a": -g, "b": -g})
    assert np.all(np.asarray(new.params["a"]) >= 0.0)
    assert np.all(np.asarray(new.params["b"]) >= np.float32(0.1))
    assert np.all(np.asarray(new.params["b"]) <= np.float32(1.0))


def test_train_state_matches_plain_flax_train_state_with_constrain(adam, assert_trees_equal):
    params = nn.unbox(init_params())
    rules = {"Dense_0/kernel": MaxNorm(0.5), "scale": NonNeg()}
    ours = TrainState.create(apply_fn=Net().apply, params=params, tx=adam(0.1), constraints=rules)
    plain = train_state.TrainState.create(
        apply_fn=Net().apply,
        params=params,
        tx=optax.chain(adam(0.1), jaxcons.constrain(rules)),
    )
    step_ours = jax.jit(lambda s: s.apply_gradients(grads=grads_of(s)))
    step_plain = jax.jit(lambda s: s.apply_gradients(grads=grads_of(s)))
    for _ in range(4):
        ours, plain = step_ours(ours), step_plain(plain)
    assert_trees_equal(ours.params, plain.params)
    assert np.all(np.asarray(plain.params["scale"]) >= 0.0)


def test_train_state_keeps_stateful_constraint_state():
    params = {"w": jnp.array([1.0, -1.0], jnp.float32), "v": jnp.ones(2, jnp.float32)}
    state = TrainState.create(
        apply_fn=None, params=params, tx=optax.sgd(0.5), constraints={"w": Counted()}
    )
    assert list(state.constraint_state.constraint_states) == ["w"]
    assert int(state.constraint_state.constraint_states["w"]) == 0
    step = jax.jit(lambda s, g: s.apply_gradients(grads=g))
    grads = {"w": jnp.ones(2, jnp.float32), "v": jnp.ones(2, jnp.float32)}
    for _ in range(3):
        state = step(state, grads)
    assert int(state.constraint_state.constraint_states["w"]) == 3
    np.testing.assert_array_equal(state.params["w"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(state.params["v"], np.full(2, -0.5, np.float32))


def test_train_state_spectral_norm_state_advances():
    w = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)) * 3.0, jnp.float32)
    state = TrainState.create(
        apply_fn=None,
        params={"kernel": w},
        tx=optax.sgd(1e-3),
        constraints={"kernel": SpectralNorm(1.0, n_power_iterations=30)},
    )
    u0 = state.constraint_state.constraint_states["kernel"].u
    state = state.apply_gradients(grads={"kernel": jnp.zeros_like(w)})
    u1 = state.constraint_state.constraint_states["kernel"].u
    assert u1.shape == u0.shape == (4,) and not np.array_equal(u0, u1)
    sigma = np.linalg.svd(np.asarray(state.params["kernel"], np.float64), compute_uv=False)[0]
    np.testing.assert_allclose(sigma, 1.0, rtol=1e-4)


def test_train_state_penalty_and_penalties():
    params = init_params()
    state = TrainState.create(
        apply_fn=Net().apply, params=params, tx=optax.sgd(0.1), regularizers={"scale": L1(0.5)}
    )
    plain = nn.unbox(params)
    kernel = np.asarray(plain["Dense_0"]["kernel"], np.float64)
    expected = 0.1 * np.sum(kernel**2) + 0.5 * 4.0
    np.testing.assert_allclose(state.penalty(params), expected, rtol=1e-6)
    np.testing.assert_allclose(state.penalty(plain), expected, rtol=1e-6)
    assert set(state.penalties(params)) == {"Dense_0/kernel", "scale"}
    np.testing.assert_allclose(state.penalties(params)["scale"], 2.0, rtol=1e-6)
    grads = jax.grad(state.penalty)(params)
    assert isinstance(grads["Dense_0"]["kernel"], Constrained)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"].value, 0.2 * kernel, rtol=1e-6)
    np.testing.assert_array_equal(grads["Dense_0"]["bias"], np.zeros(4, np.float32))


def test_train_state_without_rules_is_plain_flax(assert_trees_equal):
    params = nn.unbox(init_params())
    ours = TrainState.create(apply_fn=Net().apply, params=params, tx=optax.sgd(0.1))
    theirs = train_state.TrainState.create(apply_fn=Net().apply, params=params, tx=optax.sgd(0.1))
    assert len(ours.constraints) == 0 and len(ours.regularizers) == 0
    assert float(ours.penalty(params)) == 0.0
    ours, theirs = (
        ours.apply_gradients(grads=grads_of(ours)),
        theirs.apply_gradients(grads=grads_of(theirs)),
    )
    assert_trees_equal(ours.params, theirs.params)


def test_train_state_create_validates_rules():
    params = init_params()
    with pytest.raises(ValueError, match="constraint rule 'Dense_0/kernal' matches no parameter"):
        TrainState.create(
            apply_fn=None,
            params=params,
            tx=optax.sgd(0.1),
            constraints={"Dense_0/kernal": NonNeg()},
        )
    with pytest.raises(ValueError, match="regularizer rule 'params/\\*\\*' matches no parameter"):
        TrainState.create(
            apply_fn=None, params=params, tx=optax.sgd(0.1), regularizers={"params/**": L2(0.1)}
        )
    with pytest.raises(ValueError, match=r"'Dense_0/kernel' \(declared MaxNorm"):
        TrainState.create(
            apply_fn=None, params=params, tx=optax.sgd(0.1), constraints={"**/kernel": NonNeg()}
        )
    with pytest.raises(ValueError, match="prefer must be None, 'declared' or 'explicit'"):
        TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1), prefer="mine")
    state = TrainState.create(
        apply_fn=None,
        params=params,
        tx=optax.sgd(0.1),
        constraints={"nothing": NonNeg()},
        strict=False,
    )
    assert len(state.constraints) == 3


@pytest.mark.parametrize("prefer", ["declared", "explicit"])
def test_train_state_prefer_decides_which_rule_wins(prefer):
    params = init_params()
    state = TrainState.create(
        apply_fn=Net().apply,
        params=params,
        tx=optax.sgd(0.1),
        constraints={"**/kernel": Clip(-0.01, 0.01)},
        prefer=prefer,
    )
    new = state.apply_gradients(grads=grads_of(state))
    kernel = np.asarray(nn.unbox(new.params)["Dense_0"]["kernel"])
    if prefer == "explicit":
        assert np.max(np.abs(kernel)) <= 0.01
    else:
        assert np.max(np.abs(kernel)) > 0.01
        assert np.all(column_norms(kernel) <= 0.5 * (1 + 4 * np.finfo(np.float32).eps))


def test_train_state_under_jit_keeps_boxes(adam):
    state = TrainState.create(apply_fn=Net().apply, params=init_params(), tx=adam(0.05))

    @jax.jit
    def train_step(state):
        def full_loss(p):
            return loss_fn(state.apply_fn, p) + state.penalty(p)

        loss, grads = jax.value_and_grad(full_loss)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for _ in range(6):
        state, loss = train_step(state)
        losses.append(float(loss))
        if len(losses) == 2:  # flax's step goes from a Python 0 to an array: one retrace.
            compiled = train_step._cache_size()
    assert losses[-1] < losses[0]
    assert state.params["Dense_0"]["kernel"].regularizer == L2(0.1)
    assert train_step._cache_size() == compiled


def test_train_state_accepts_frozen_dict_params():
    params = flax.core.freeze(init_params())
    state = TrainState.create(apply_fn=Net().apply, params=params, tx=optax.sgd(5.0))
    assert [r.pattern for r in state.constraints.entries] == ["Dense_0/kernel", "scale"]
    state = state.apply_gradients(grads=grads_of(state))
    assert isinstance(state.params, flax.core.FrozenDict)
    assert np.min(state.params["scale"].value) == 0.0


def test_train_state_rejects_overwrite_with_gradient():
    params = {"params": {"w": jnp.ones(2)}}
    state = TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1))
    grads = {"params": {"w": jnp.ones(2)}, OVERWRITE_WITH_GRADIENT: {}}
    with pytest.raises(ValueError, match="does not support '_overwrite_with_gradient'"):
        state.apply_gradients(grads=grads)


# ----------------------------------------------------------------------------- activity


class KerasDocsModel(nn.Module):
    """Keras's docs example: Dense(5), kernel ones + L1(0.01), activity L2(0.01)."""

    @nn.compact
    def __call__(self, x):
        kernel_init = with_constraints(nn.initializers.ones, regularizer=L1(0.01))
        x = nn.Dense(5, kernel_init=kernel_init)(x)
        return jaxcons.flax.ActivityRegularization(L2(0.01))(x)


def test_keras_docs_example_totals_5_25():
    model = KerasDocsModel()
    x = 2.0 * jnp.ones((5, 5), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    assert set(variables) == {"params"}  # Nothing recorded at init.
    y, collections = model.apply({"params": variables["params"]}, x, mutable=["losses"])
    np.testing.assert_array_equal(y, np.full((5, 5), 10.0, np.float32))
    activity = jaxcons.flax.activity_losses(collections)
    weights = penalty(variables["params"], jaxcons.flax.regularizer_rules(variables["params"]))
    np.testing.assert_allclose(activity, 5.0, rtol=1e-6)
    np.testing.assert_allclose(weights, 0.25, rtol=1e-6)
    np.testing.assert_allclose(activity + weights, 5.25, rtol=1e-6)


def test_activity_regularization_records_every_call_and_has_gradient():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            act = jaxcons.flax.ActivityRegularization("l1")
            return act(act(x) * 2.0)

    x = jnp.asarray([[1.0, -2.0], [3.0, 0.5]], jnp.float32)
    _, collections = Twice().apply({}, x, mutable=["losses"])
    recorded = collections["losses"]["ActivityRegularization_0"]["activity_regularization"]
    assert len(recorded) == 2
    np.testing.assert_allclose(
        jaxcons.flax.activity_losses(collections), 0.01 * (6.5 + 13.0) / 2, rtol=1e-6
    )

    def total(x):
        return jaxcons.flax.activity_losses(Twice().apply({}, x, mutable=["losses"])[1])

    np.testing.assert_allclose(jax.grad(total)(x), 0.01 * 3 / 2 * np.sign(x), rtol=1e-6)


def test_activity_regularization_rejects_unknown_regularizers_at_init():
    with pytest.raises(ValueError, match="nope"):
        jaxcons.flax.ActivityRegularization("nope").init(jax.random.key(0), X)


def test_activity_losses_of_a_model_without_activity_layers_is_zero():
    _, collections = nn.Dense(2).apply(
        nn.Dense(2).init(jax.random.key(0), X), X, mutable=["losses"]
    )
    assert collections == {}
    assert float(jaxcons.flax.activity_losses(collections)) == 0.0
    with pytest.raises(ValueError, match=r"got a mapping with keys \['params'\]"):
        jaxcons.flax.activity_losses({"params": {"w": jnp.ones(2)}})


def test_train_state_create_reaches_every_option_of_constrain():
    params = init_params()  # Dense_0/kernel declares MaxNorm(0.5), scale declares a Clip.

    def create(**kwargs):
        return TrainState.create(apply_fn=Net().apply, params=params, tx=optax.sgd(0.1), **kwargs)

    # Portable by default: no arrays in the state of a stateless rule set.
    assert jax.tree_util.tree_leaves(create().constraint_state) == []
    # The CPU scratch buffer, opted into: one buffer for the norm-bounded kernel only.
    assert set(create(scratch=True).constraint_state.scratch) == {"Dense_0/kernel"}
    with pytest.raises(ValueError, match="scratch must be True, False or None, got 'yes'"):
        create(scratch="yes")
