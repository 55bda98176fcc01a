"""Declared rules: `constraint_rules` / `regularizer_rules` over linen and nnx, combining."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcons
from jaxcons import penalty
from jaxcons.constraints import Clip, MaxNorm, NonNeg
from jaxcons.flax import Constrained, constraint_rules, regularizer_rules, with_constraints
from jaxcons.regularizers import L1, L2


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3, kernel_init=with_constraints(nn.initializers.ones, MaxNorm(1.0)))(x)
        x = nn.Dense(2, bias_init=with_constraints(nn.initializers.zeros, NonNeg(), L1(0.1)))(x)
        scale = self.param(
            "scale", with_constraints(nn.initializers.ones, regularizer="l2"), (1, 2)
        )
        return x * scale


def linen_variables():
    return Block().init(jax.random.key(0), jnp.ones((1, 2)))


def test_linen_rules_in_tree_order_with_unboxed_paths():
    params = linen_variables()["params"]
    assert constraint_rules(params) == [
        ("Dense_0/kernel", MaxNorm(1.0)),
        ("Dense_1/bias", NonNeg()),
    ]
    assert regularizer_rules(params) == [("Dense_1/bias", L1(0.1)), ("scale", L2(0.01))]
    assert [p for p, _ in constraint_rules(params)] == [
        p for p in jaxcons.paths(nn.unbox(params)) if p in ("Dense_0/kernel", "Dense_1/bias")
    ]


def test_linen_rules_are_relative_to_the_tree_given():
    variables = linen_variables()
    assert constraint_rules(variables)[0] == ("params/Dense_0/kernel", MaxNorm(1.0))
    # Rules from the variables do not fit the params tree: strict resolution says so.
    with pytest.raises(
        ValueError,
        match=r"constraint rule 'params/Dense_0/kernel' matches no parameter\. Closest paths: "
        r"'Dense_0/kernel'",
    ):
        jaxcons.apply_constraints(nn.unbox(variables["params"]), constraint_rules(variables))


def test_unboxed_trees_declare_nothing_and_say_so():
    params = nn.unbox(linen_variables()["params"])
    msg = "No parameter of this dict declares a {}. A pure tree"
    with pytest.raises(ValueError, match=re.escape(msg.format("constraint"))):
        constraint_rules(params)
    with pytest.raises(ValueError, match=re.escape(msg.format("regularizer"))):
        regularizer_rules(params)
    assert constraint_rules(params, {"**/bias": NonNeg()}) == [("**/bias", NonNeg())]


def test_declared_rules_work_with_constrain_apply_constraints_and_penalty():
    params = linen_variables()["params"]
    plain = nn.unbox(params)
    projected = jaxcons.apply_constraints(plain, constraint_rules(params))
    np.testing.assert_allclose(projected["Dense_0"]["kernel"], np.full((2, 3), 2**-0.5), rtol=1e-6)
    # The same rules resolve on the boxed tree (one box dropped per path).
    boxed = jaxcons.apply_constraints(params, constraint_rules(params))
    assert isinstance(boxed["Dense_0"]["kernel"], Constrained)
    np.testing.assert_array_equal(boxed["Dense_0"]["kernel"].value, projected["Dense_0"]["kernel"])
    np.testing.assert_allclose(penalty(plain, regularizer_rules(params)), 0.02, rtol=1e-6)
    np.testing.assert_allclose(penalty(params, regularizer_rules(params)), 0.02, rtol=1e-6)
    tx = optax.chain(optax.sgd(1.0), jaxcons.constrain(constraint_rules(params)))
    grads = jax.tree_util.tree_map(jnp.ones_like, plain)
    updates, _ = tx.update(grads, tx.init(plain), plain)
    new = optax.apply_updates(plain, updates)
    np.testing.assert_array_equal(new["Dense_1"]["bias"], np.zeros(2, np.float32))


def test_paths_with_glob_metacharacters_are_matched_exactly():
    params = {
        "w*": Constrained(jnp.ones(2), constraint=NonNeg()),
        "wx": jnp.full(2, -1.0),
        "re:a": Constrained(jnp.ones(2), constraint=Clip(0.0, 0.5)),
        "w?": Constrained(-jnp.ones(2), constraint=NonNeg()),
    }
    rules = constraint_rules(params)
    assert [p for p, _ in rules] == ["re:re:a", "re:w\\*", "re:w\\?"]
    out = jaxcons.apply_constraints(nn.unbox(params), rules)
    np.testing.assert_array_equal(out["wx"], np.full(2, -1.0, np.float32))
    np.testing.assert_array_equal(out["w?"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(out["re:a"], np.full(2, 0.5, np.float32))


def test_conflict_between_declared_and_explicit_is_an_error_naming_the_path():
    params = linen_variables()["params"]
    with pytest.raises(
        ValueError,
        match=r"Constraint declared on a parameter and given by an explicit rule too: "
        r"'Dense_0/kernel' \(declared MaxNorm\(max_value=1.0, axis=0\); explicit rule "
        r"'\*\*/kernel': NonNeg\(\)\)\. Say which wins with prefer='declared' or "
        r"prefer='explicit'\.",
    ):
        constraint_rules(params, {"**/kernel": NonNeg()})
    # An explicit None (an exemption) conflicts too: the user said two different things.
    with pytest.raises(
        ValueError,
        match=r"'Dense_1/bias' \(declared L1\(l1=0.1\); explicit rule "
        r"'Dense_1/bias': None\)",
    ):
        regularizer_rules(params, {"Dense_1/bias": None})
    with pytest.raises(ValueError, match="prefer must be None, 'declared' or 'explicit', got 'x'"):
        constraint_rules(params, prefer="x")


def test_callable_explicit_patterns_see_the_unboxed_leaf():
    params = linen_variables()["params"]
    seen = []

    def is_matrix(path, leaf):
        seen.append((path, type(leaf)))
        return leaf.ndim == 2

    with pytest.raises(
        ValueError,
        match=r"'Dense_0/kernel' \(declared MaxNorm.*'<callable "
        r"is_matrix>': NonNeg\(\)\)",
    ):
        constraint_rules(params, [(is_matrix, NonNeg())])
    assert [p for p, _ in seen] == ["Dense_0/kernel", "Dense_1/bias"]
    assert all(issubclass(t, jax.Array) for _, t in seen)


@pytest.mark.parametrize("prefer", ["declared", "explicit"])
def test_prefer_orders_the_rules(prefer):
    params = linen_variables()["params"]
    explicit = {"**/kernel": Clip(-0.1, 0.1)}
    rules = constraint_rules(params, explicit, prefer=prefer)
    declared = [("Dense_0/kernel", MaxNorm(1.0)), ("Dense_1/bias", NonNeg())]
    if prefer == "declared":
        assert rules == [*declared, ("**/kernel", Clip(-0.1, 0.1))]
    else:
        # The declared kernel rule loses to '**/kernel' on its only parameter: it is left out
        # rather than kept as a rule that never acts (strict resolution would reject it).
        assert rules == [("**/kernel", Clip(-0.1, 0.1)), ("Dense_1/bias", NonNeg())]
    out = jaxcons.apply_constraints(nn.unbox(params), rules)
    kernel = np.asarray(out["Dense_0"]["kernel"])
    expected = np.full((2, 3), 0.1 if prefer == "explicit" else 2**-0.5, np.float32)
    np.testing.assert_allclose(kernel, expected, rtol=1e-6)
    # float32 has no 0.1: the bounds round inward (to the float32 just below 0.1), so the result
    # matches the float64 clip to one float32 spacing and never leaves [-0.1, 0.1].
    clipped = np.asarray(out["Dense_1"]["kernel"], np.float64)
    w = np.asarray(nn.unbox(params)["Dense_1"]["kernel"], np.float64)
    np.testing.assert_allclose(clipped, np.clip(w, -0.1, 0.1), rtol=0, atol=1e-8)
    assert np.all(np.abs(clipped) <= 0.1)


def test_an_explicit_rule_equal_to_a_declaration_is_no_conflict():
    params = linen_variables()["params"]
    declared = constraint_rules(params)
    # Passing the declared rules again (what TrainState.create(constraints=constraint_rules(
    # variables)) does on a model that declares them) neither conflicts nor leaves a rule
    # that never acts.
    assert constraint_rules(params, declared) == declared
    state = jaxcons.flax.TrainState.create(
        apply_fn=None, params=params, tx=optax.sgd(0.1), constraints=declared
    )
    assert [r.pattern for r in state.constraints.entries] == ["Dense_0/kernel", "Dense_1/bias"]
    # A different value for the same parameter still is a conflict.
    with pytest.raises(ValueError, match=r"'Dense_0/kernel' \(declared MaxNorm"):
        constraint_rules(params, {"Dense_0/kernel": MaxNorm(2.0)})


def test_explicit_rules_are_coerced_and_returned_in_order():
    params = linen_variables()["params"]
    rules = regularizer_rules(params, [("**/kernel", "l1"), ("Dense_0/bias", None)])
    assert rules[-2:] == [("**/kernel", L1(0.01)), ("Dense_0/bias", None)]
    with pytest.raises(ValueError, match="nope"):
        regularizer_rules(params, {"**/kernel": "nope"})


# ----------------------------------------------------------------------------- nnx


class Custom(nnx.Variable):
    """A custom trainable variable type (the Q&A thread's add_weight)."""


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List(
            [
                nnx.Linear(2, 3, kernel_metadata={"constraint": MaxNorm(1.0)}, rngs=rngs),
                nnx.Linear(3, 2, bias_metadata={"regularizer": L2(0.5)}, rngs=rngs),
            ]
        )
        self.scale = nnx.Param(jnp.ones(2), constraint=NonNeg(), regularizer="l1")
        self.custom = Custom(jnp.full(2, 2.0), constraint=Clip(0.0, 1.0))

    def __call__(self, x):
        return self.layers[1](self.layers[0](x)) * self.scale[...] * self.custom[...]


def test_nnx_module_and_state_declarations(as_pure):
    model = NNXModel(nnx.Rngs(0))
    expected = [("custom", Clip(0.0, 1.0)), ("layers/0/kernel", MaxNorm(1.0)), ("scale", NonNeg())]
    assert constraint_rules(model) == expected
    assert constraint_rules(nnx.state(model)) == expected
    assert constraint_rules(nnx.state(model, nnx.Param)) == expected[1:]
    assert regularizer_rules(model) == [("layers/1/bias", L2(0.5)), ("scale", L1(0.01))]
    with pytest.raises(ValueError, match="No parameter of this State declares a constraint"):
        constraint_rules(as_pure(nnx.state(model)))


def test_nnx_rules_resolve_on_variables_and_on_pure_arrays_alike(as_pure):
    model = NNXModel(nnx.Rngs(0))
    state = nnx.state(model)
    rules = constraint_rules(model)
    out_vars = jaxcons.apply_constraints(state, rules)
    out_pure = jaxcons.apply_constraints(as_pure(state), rules)
    np.testing.assert_array_equal(out_vars["custom"][...], np.ones(2, np.float32))
    np.testing.assert_array_equal(out_pure["custom"], np.ones(2, np.float32))
    np.testing.assert_array_equal(
        out_vars["layers"][0]["kernel"][...], out_pure["layers"][0]["kernel"]
    )
    norms = np.linalg.norm(np.asarray(out_pure["layers"][0]["kernel"]), axis=0)
    assert np.all(norms <= 1.0 + 1e-6)
    p = nnx.state(model, nnx.Param)
    expected = 0.5 * float(jnp.sum(model.layers[1].bias[...] ** 2)) + 0.01 * 2.0
    np.testing.assert_allclose(penalty(p, regularizer_rules(model)), expected, rtol=1e-6)


def test_nnx_conflict_and_prefer():
    model = NNXModel(nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"'layers/0/kernel' \(declared MaxNorm\(max_value=1.0, "
        r"axis=0\); explicit rule 'layers/\*/kernel': NonNeg\(\)\)",
    ):
        constraint_rules(model, {"layers/*/kernel": NonNeg()})
    rules = constraint_rules(model, {"layers/*/kernel": NonNeg()}, prefer="explicit")
    assert rules[0] == ("layers/*/kernel", NonNeg())
