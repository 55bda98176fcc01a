"""`jaxcons.chain`: each transform in its place, and its arguments validated."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons

RULES = {"**/kernel": jaxcons.MaxNorm(1.0), "**/bias": jaxcons.NonNeg()}
REG = {"**/kernel": jaxcons.L2(0.05)}
PROX = {"**/kernel": jaxcons.L1(0.5)}


def _params():
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "bias": jnp.asarray(rng.uniform(0.1, 1.0, size=3), jnp.float32),
        }
    }


def _grads():
    # Pushes every bias negative and every kernel column long.
    return {"dense": {"kernel": -jnp.ones((4, 3)), "bias": jnp.full(3, 5.0)}}


def _run(tx, steps=3):
    params = _params()
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(_grads(), state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_chain_is_the_four_parts_in_their_order():
    got = _run(
        jaxcons.chain(
            optax.sgd(0.1), constraints=RULES, regularizers=REG, proximal=PROX, learning_rate=0.1
        )
    )
    by_hand = _run(
        optax.chain(
            jaxcons.regularize(REG),
            optax.sgd(0.1),
            jaxcons.proximal(PROX, 0.1),
            jaxcons.constrain(RULES),
        )
    )
    jax.tree.map(np.testing.assert_array_equal, got, by_hand)
    assert float(got["dense"]["bias"].min()) >= 0.0
    assert float(np.linalg.norm(got["dense"]["kernel"], axis=0).max()) <= 1.0 + 1e-6


def test_the_order_chain_prevents_fails_silently_by_hand():
    # The projection before the optimizer is undone by its step: biases end up negative.
    wrong = _run(optax.chain(jaxcons.constrain(RULES), optax.sgd(0.1)))
    assert float(wrong["dense"]["bias"].min()) < 0.0
    right = _run(jaxcons.chain(optax.sgd(0.1), constraints=RULES))
    assert float(right["dense"]["bias"].min()) >= 0.0


def test_chain_state_is_the_same_with_or_without_rules_of_each_kind():
    # regularize and constrain are always there (declared rules must never be lost); without
    # rules or declarations they pass updates through and keep no arrays.
    state = jaxcons.chain(optax.sgd(0.1), regularizers=REG).init(_params())
    assert len(state) == 3  # regularize, sgd, constrain
    assert isinstance(state[0], optax.EmptyState)
    assert state[-1] == jaxcons.ConstrainState(constraint_states={}, scratch={})
    got = _run(jaxcons.chain(optax.sgd(0.1), regularizers=REG))
    by_hand = _run(optax.chain(jaxcons.regularize(REG), optax.sgd(0.1)))
    jax.tree.map(np.testing.assert_array_equal, got, by_hand)
    state = jaxcons.chain(optax.sgd(0.1), constraints=RULES).init(_params())
    assert isinstance(state[-1], jaxcons.ConstrainState)


def test_chain_under_jit_with_adam(adam):
    tx = jaxcons.chain(adam(1e-1), constraints=RULES, regularizers=REG)
    params = _params()
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(_grads(), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(5):
        params, state = step(params, state)
    assert float(params["dense"]["bias"].min()) >= 0.0


@pytest.mark.parametrize(
    ("optimizer", "hint"),
    [
        (optax.adam, "(an optimizer factory such as optax.adam must be called: optax.adam(1e-3))"),
        (RULES, "(rules go in constraints=, regularizers= or proximal=)"),
        (3, ""),
    ],
)
def test_chain_needs_a_gradient_transformation(optimizer, hint):
    msg = "jaxcons.chain needs an optax.GradientTransformation as its first argument, got"
    with pytest.raises(TypeError, match=re.escape(msg) + ".*" + re.escape(hint)):
        jaxcons.chain(optimizer, constraints=RULES)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"proximal": PROX}, "jaxcons.chain(proximal=...) needs learning_rate="),
        (
            {"constraints": RULES, "learning_rate": 0.1},
            "jaxcons.chain got learning_rate=0.1 but no proximal rules",
        ),
    ],
)
def test_chain_validates_its_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.chain(optax.sgd(0.1), **kwargs)


def test_chain_without_rules_needs_declarations():
    tx = jaxcons.chain(optax.sgd(0.1))
    msg = "jaxcons.chain has no constraint or regularizer rules and no parameter declares"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.init(_params())


def test_chain_passes_strict_and_scratch_on():
    params = _params()
    with pytest.raises(ValueError, match="constraint rule 'nope' matches no parameter"):
        jaxcons.chain(optax.sgd(0.1), constraints={"nope": jaxcons.NonNeg()}).init(params)
    loose = jaxcons.chain(optax.sgd(0.1), constraints={"nope": jaxcons.NonNeg()}, strict=False)
    loose.init(params)
    state = jaxcons.chain(optax.sgd(0.1), constraints=RULES, scratch=True).init(params)
    assert set(state[-1].scratch) == {"dense/kernel"}
