"""`jaxcons.constrain` (the optax transform) and `jaxcons.apply_constraints`."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcons
from jaxcons.constraints import MaxNorm

NONNEG = jaxcons.NonNeg()
CLIP = jaxcons.Clip(-0.5, 0.5)


def _params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(rng.normal(size=(3, 4)), dtype),
                "bias": jnp.asarray(rng.normal(size=(4,)), dtype),
            },
            "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), dtype)},
        }
    }


def _grads(params, seed=1, scale=3.0):
    """Random "gradients" like ``params`` (numpy-drawn; under jit, a fixed constant)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), params
    )


def _add(a, b):
    return jax.tree_util.tree_map(lambda x, y: x + y, a, b)


def _col_norms(w):
    return np.sqrt(np.sum(np.square(np.asarray(w, np.float64)), axis=0))


# --- constrain: params + updates is the projection of params + incoming updates ---------------


@pytest.mark.parametrize(
    "rules",
    [
        {"**/kernel": NONNEG, "**/bias": CLIP},
        [("params/head/*", CLIP), ("**", NONNEG)],
        {"**": lambda w: jnp.clip(w, 0.0, 1.0)},
    ],
    ids=["mapping", "sequence", "callable"],
)
def test_constrain_lands_on_the_projection_for_boxes(rules, assert_trees_equal):
    params, raw = _params(), _grads(_params())
    tx = jaxcons.constrain(rules)
    updates, _ = tx.update(raw, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    expected = jaxcons.apply_constraints(_add(params, raw), rules)
    for p, t, got, want in zip(
        *(jax.tree_util.tree_leaves(x) for x in (params, updates, new, expected)), strict=True
    ):
        p, t, got, want = (np.asarray(x) for x in (p, t, got, want))
        # Where the plain delta P(x) - p lands on P(x), the result is P(x) bit for bit.
        reachable = (p + (want - p)) == want
        np.testing.assert_array_equal(got[reachable], want[reachable])
        # Elsewhere no float32 delta lands on P(x) exactly: the result is one step of the
        # delta's spacing away, on the feasible side (feasibility is checked below).
        assert np.all(np.abs(got - want) <= np.spacing(np.abs(t)))
    # A box projection leaves a feasible point unchanged, so feasible == fixed point.
    assert_trees_equal(jaxcons.apply_constraints(new, rules), new)


def test_constrain_max_norm_lands_on_the_projection_within_ulps(assert_trees_equal):
    params, raw = _params(), _grads(_params())
    rules = {"**/kernel": MaxNorm(1.0), "**/bias": NONNEG}
    tx = jaxcons.constrain(rules)
    updates, _ = tx.update(raw, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    expected = jaxcons.apply_constraints(_add(params, raw), rules)
    for path in ("Dense_0", "head"):
        got = new["params"][path]["kernel"]
        np.testing.assert_allclose(got, expected["params"][path]["kernel"], rtol=1e-6, atol=1e-7)
        assert np.all(_col_norms(got) <= 1.0 + 4 * np.finfo(np.float32).eps)
    assert_trees_equal(new["params"]["Dense_0"]["bias"], expected["params"]["Dense_0"]["bias"])


def test_untouched_leaves_keep_their_updates(assert_trees_equal):
    params, raw = _params(), _grads(_params())
    tx = jaxcons.constrain({"params/head/kernel": NONNEG})
    updates, _ = tx.update(raw, tx.init(params), params)
    assert_trees_equal(updates["params"]["Dense_0"], raw["params"]["Dense_0"])


def test_updates_that_stay_feasible_are_unchanged(assert_trees_equal):
    params = {"w": jnp.array([0.25, 0.0, 0.5])}
    raw = {"w": jnp.array([0.25, 0.125, -0.5])}  # lands on [0.5, 0.125, 0.0]: all feasible
    tx = jaxcons.constrain({"w": jaxcons.Clip(0.0, 1.0)})
    updates, _ = tx.update(raw, tx.init(params), params)
    assert_trees_equal(updates, raw)


def test_missing_params_is_a_value_error():
    params = _params()
    tx = jaxcons.constrain({"**": NONNEG})
    with pytest.raises(
        ValueError,
        match=re.escape(
            "jaxcons.constrain needs the current params: call "
            "tx.update(updates, state, params) (optax.chain passes them on)."
        ),
    ):
        tx.update(params, tx.init(params))


def test_state_is_an_empty_constrain_state_for_stateless_constraints():
    params = _params()
    state = jaxcons.constrain({"**": NONNEG}).init(params)
    assert isinstance(state, jaxcons.ConstrainState)
    assert state.constraint_states == {}


def test_constraint_names_and_configs_are_accepted():
    params = {"w": jnp.array([-1.0, 2.0])}
    for value in ("non_neg", "NonNeg", {"class_name": "NonNeg", "config": {}}):
        tx = jaxcons.constrain({"w": value})
        updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        np.testing.assert_array_equal(
            optax.apply_updates(params, updates)["w"], np.array([0.0, 2.0], np.float32)
        )


def test_unknown_constraint_name_is_rejected_when_built():
    with pytest.raises(ValueError, match=re.escape("Unknown constraint identifier 'non_negative'")):
        jaxcons.constrain({"w": "non_negative"})


def test_rules_object_with_names_is_coerced():
    # `Rules` built by hand with a name (not a constraint object) is coerced by `constrain`.
    params = {"w": jnp.array([-1.0, 2.0])}
    tx = jaxcons.constrain(jaxcons.Rules({"w": "non_neg"}))
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    np.testing.assert_array_equal(
        optax.apply_updates(params, updates)["w"], np.array([0.0, 2.0], np.float32)
    )


def test_int_and_masked_leaves_pass_through_constrain():
    params = {"w": jnp.array([1.0, -1.0]), "count": jnp.array(3, jnp.int32)}
    incoming = {"w": jnp.array([-2.0, 0.5]), "count": jnp.array(-7, jnp.int32)}
    tx = jaxcons.constrain({"**": NONNEG})
    updates, _ = tx.update(incoming, tx.init(params), params)
    assert updates["count"] is incoming["count"]
    np.testing.assert_array_equal(
        optax.apply_updates(params, updates)["w"], np.array([0.0, 0.0], np.float32)
    )


def test_python_float_param_leaf():
    params = {"scale": 1.5}
    tx = jaxcons.constrain({"scale": jaxcons.Clip(0.0, 1.0)})
    updates, _ = tx.update({"scale": jnp.float32(0.25)}, tx.init(params), params)
    assert float(optax.apply_updates(params, updates)["scale"]) == 1.0


# --- jit, retracing, optax combinators ----------------------------------------------------------


def _run(tx, params, steps=3, grad_fn=None):
    traces = []

    @jax.jit
    def step(params, state, i):
        traces.append(None)
        grads = _grads(params, scale=3.0) if grad_fn is None else grad_fn(params, i)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, jnp.asarray(i))
    return params, state, len(traces)


def _assert_feasible(params):
    for path in ("Dense_0", "head"):
        assert np.all(np.asarray(params["params"][path]["kernel"]) >= 0)
    bias = np.asarray(params["params"]["Dense_0"]["bias"])
    assert np.all((bias >= -0.5) & (bias <= 0.5))


def test_jit_without_retracing(adam):
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    tx = optax.chain(adam(0.5), jaxcons.constrain(rules))
    params, _, traces = _run(tx, _params(), steps=4)
    assert traces == 1
    _assert_feasible(params)


def test_jit_matches_eager(assert_trees_equal):
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    params, raw = _params(), _grads(_params())
    tx = jaxcons.constrain(rules)
    state = tx.init(params)
    eager, _ = tx.update(raw, state, params)
    jitted, _ = jax.jit(tx.update)(raw, state, params)
    assert_trees_equal(eager, jitted)


def test_inside_optax_masked(assert_trees_equal):
    params = _params()
    kernels = jaxcons.mask(params, "**/kernel")
    # The inner rules only see kernels: a rule for the masked-out biases would never act, so it
    # is a strict error; strict=False accepts it.
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    with pytest.raises(ValueError, match=r"rule '\*\*/bias' matches no parameter: .*masked out"):
        optax.masked(optax.chain(optax.sgd(1.0), jaxcons.constrain(rules)), kernels).init(params)
    inner = optax.chain(optax.sgd(1.0), jaxcons.constrain(rules, strict=False))
    tx = optax.masked(inner, kernels)
    raw = _grads(params)
    updates, _ = tx.update(raw, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["params"]["head"]["kernel"]) >= 0)
    # The bias is outside the mask: its raw gradient passes through untouched.
    assert_trees_equal(updates["params"]["Dense_0"]["bias"], raw["params"]["Dense_0"]["bias"])
    params, _, traces = _run(tx, params)
    assert traces == 1
    assert np.all(np.asarray(params["params"]["Dense_0"]["kernel"]) >= 0)


def test_inside_optax_chain_after_clipping_and_decay():
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.add_decayed_weights(1e-2),
        optax.sgd(1.0),
        jaxcons.constrain(rules),
    )
    params, _, traces = _run(tx, _params())
    assert traces == 1
    _assert_feasible(params)


def test_inside_multi_steps(standard_promotion, assert_trees_equal):
    params = _params()
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    tx = optax.MultiSteps(optax.chain(optax.sgd(1.0), jaxcons.constrain(rules)), every_k_schedule=2)
    g1, g2 = _grads(params, seed=1), _grads(params, seed=2)
    state = tx.init(params)
    # MultiSteps's update divides by its int32 step counter, which strict promotion rejects.
    with standard_promotion():
        u1, state = tx.update(g1, state, params)
    mid = optax.apply_updates(params, u1)
    assert_trees_equal(mid, params)  # no step yet: zero updates
    with standard_promotion():
        u2, state = tx.update(g2, state, mid)
    new = optax.apply_updates(mid, u2)
    mean_grad = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, g1, g2)
    expected = jaxcons.apply_constraints(
        jax.tree_util.tree_map(lambda p, g: p - g, params, mean_grad), rules
    )
    for got, want in zip(
        jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    _assert_feasible(new)
    with standard_promotion():
        params, _, traces = _run(tx, _params(), steps=4)
    assert traces == 1
    _assert_feasible(params)


def test_inside_apply_if_finite(assert_trees_equal):
    params = _params()
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    tx = optax.apply_if_finite(optax.chain(optax.sgd(1.0), jaxcons.constrain(rules)), 2)
    state = tx.init(params)
    bad = jax.tree_util.tree_map(lambda g: g.at[0].set(jnp.nan), _grads(params))
    updates, state = tx.update(bad, state, params)
    assert_trees_equal(optax.apply_updates(params, updates), params)
    assert int(state.notfinite_count) == 1
    updates, state = tx.update(_grads(params), state, params)
    _assert_feasible(optax.apply_updates(params, updates))
    assert int(state.notfinite_count) == 0


def test_after_inject_hyperparams_adam(adam):
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    tx = optax.chain(optax.inject_hyperparams(adam)(learning_rate=0.5), jaxcons.constrain(rules))
    params, state, traces = _run(tx, _params())
    assert traces == 1
    _assert_feasible(params)
    assert float(state[0].hyperparams["learning_rate"]) == 0.5


def test_inside_inject_hyperparams():
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}

    def make(learning_rate):
        return optax.chain(optax.sgd(learning_rate), jaxcons.constrain(rules))

    tx = optax.inject_hyperparams(make)(learning_rate=optax.linear_schedule(1.0, 0.1, 3))
    params, state, traces = _run(tx, _params())
    assert traces == 1
    _assert_feasible(params)
    assert isinstance(state.inner_state[1], jaxcons.ConstrainState)


def test_flax_train_state(adam):
    model = nn.Dense(3)
    variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    tx = optax.chain(adam(0.5), jaxcons.constrain({"**/kernel": NONNEG, "**/bias": CLIP}))
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    x, y = jnp.ones((8, 4)), -jnp.ones((8, 3))

    @jax.jit
    def train_step(state):
        def loss(params):
            return jnp.mean(jnp.square(state.apply_fn({"params": params}, x) - y))

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for _ in range(3):
        state = train_step(state)
    assert int(state.step) == 3
    assert np.all(np.asarray(state.params["kernel"]) >= 0)
    bias = np.asarray(state.params["bias"])
    assert np.all((bias >= -0.5) & (bias <= 0.5))
    assert np.any(bias == -0.5)  # the target pulls the bias down to its bound


# --- exact feasibility through apply_updates -----------------------------------------------


def test_adversarial_clip_stays_exactly_feasible():
    # p + (P(x) - p) in float32: 1.0 - (-16777218.0) = 16777219 rounds to 16777220, and
    # -16777218 + 16777220 = 2.0 > 1: the naive update leaves the box.
    p = jnp.array([-16777218.0], jnp.float32)
    naive = p + (jnp.float32(1.0) - p)
    assert float(naive[0]) == 2.0
    params = {"w": p}
    tx = jaxcons.constrain({"w": jaxcons.Clip(-1e8, 1.0)})
    updates, _ = tx.update({"w": jnp.array([1e9], jnp.float32)}, tx.init(params), params)
    new = optax.apply_updates(params, updates)["w"]
    assert new.dtype == jnp.float32
    assert -1e8 <= float(new[0]) <= 1.0


def test_adversarial_clip_lower_bound():
    p = jnp.array([16777218.0], jnp.float32)
    params = {"w": p}
    tx = jaxcons.constrain({"w": jaxcons.Clip(-1.0, 1e8)})
    updates, _ = tx.update({"w": jnp.array([-1e9], jnp.float32)}, tx.init(params), params)
    new = float(optax.apply_updates(params, updates)["w"][0])
    assert -1.0 <= new <= 1e8


def test_clip_stays_feasible_for_bf16_params_with_float32_updates(standard_promotion):
    # optax.adam(..., mu_dtype=jnp.float32) on bf16 params gives float32 updates, which
    # optax.apply_updates adds in float32 and rounds to bf16.
    params = {"w": jnp.array([0.423828125], jnp.bfloat16)}
    tx = jaxcons.constrain({"w": jaxcons.Clip(-0.3, 0.7)})
    with standard_promotion():
        updates, _ = tx.update({"w": jnp.array([-4.0], jnp.float32)}, tx.init(params), params)
        new = optax.apply_updates(params, updates)["w"]
    assert new.dtype == jnp.bfloat16
    # -0.3 is not a bf16: the lower bound rounds inward, to -0.298828125 (the bf16 nearest
    # to -0.3 is -0.30078125, outside the box), and 0.7 to 0.69921875 (the nearest anyway).
    assert float(new[0]) >= -0.3, float(new[0])
    # The float32 delta is exact here, so the result is the projection itself.
    assert float(new[0]) == -0.298828125


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-4.0, 4.0, width=16), min_size=1, max_size=16),
    st.lists(st.floats(-1e4, 1e4, width=32), min_size=16, max_size=16),
    st.floats(-2.0, 0.0, width=16),
    st.floats(0.0, 2.0, width=16),
)
def test_bf16_params_with_float32_updates_stay_in_the_box(standard_promotion, p, u, lo, width):
    lo_b = float(jnp.bfloat16(lo))
    hi_b = float(jnp.bfloat16(lo_b + width))
    c = jaxcons.Clip(lo_b, max(hi_b, lo_b))
    params = {"w": c(jnp.asarray(p, jnp.bfloat16))}  # Start feasible.
    incoming = {"w": jnp.asarray(u[: len(p)], jnp.float32)}
    tx = jaxcons.constrain({"w": c})
    with standard_promotion():
        updates, _ = tx.update(incoming, tx.init(params), params)
        new = np.asarray(optax.apply_updates(params, updates)["w"], np.float32)
    assert new.min() >= c.elementwise_bounds[0] and new.max() <= c.elementwise_bounds[1]


def test_rules_object_keeps_its_own_strictness():
    params = {"w": jnp.array([1.0, -1.0])}
    lenient = jaxcons.Rules({"w": jaxcons.NonNeg(), "typo": jaxcons.NonNeg()}, strict=False)
    tx = jaxcons.constrain(lenient)  # strict=None: the Rules' own setting.
    tx.init(params)
    np.testing.assert_array_equal(
        jaxcons.apply_constraints(params, lenient)["w"], np.array([1.0, 0.0], np.float32)
    )
    with pytest.raises(ValueError, match="constraint rule 'typo' matches no parameter"):
        jaxcons.constrain(lenient, strict=True).init(params)
    with pytest.raises(ValueError, match="regularizer rule 'typo' matches no parameter"):
        jaxcons.penalty(params, jaxcons.Rules({"typo": jaxcons.L1()}), strict=True)


_f32 = st.floats(-3e7, 3e7, width=32, allow_subnormal=False)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(_f32, _f32), min_size=1, max_size=8),
    st.floats(-1e8, 1e8, width=32),
    st.floats(0.0, 1e8, width=32),
)
def test_clip_and_nonneg_stay_exactly_feasible(pairs, lo, width):
    hi = float(np.float32(lo + width))
    hi = max(hi, lo)
    start = np.array([p for p, _ in pairs], np.float32)
    step = np.array([u for _, u in pairs], np.float32) * np.float32(64.0)
    for c, a, b in ((jaxcons.Clip(lo, hi), lo, hi), (NONNEG, 0.0, np.inf)):
        # Feasibility is kept from a feasible start (apply_constraints at initialisation).
        params = jaxcons.apply_constraints({"w": jnp.asarray(start)}, {"w": c})
        tx = jaxcons.constrain({"w": c})
        updates, _ = tx.update({"w": jnp.asarray(step)}, tx.init(params), params)
        new = np.asarray(optax.apply_updates(params, updates)["w"])
        assert np.all((new >= a) & (new <= b)), (new, a, b)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_is_kept(dtype):
    params = _params(dtype=dtype)
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    tx = optax.chain(optax.sgd(1.0), jaxcons.constrain(rules))
    raw = _grads(params)
    updates, _ = tx.update(raw, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    for leaf in jax.tree_util.tree_leaves((updates, new)):
        assert leaf.dtype == dtype
    _assert_feasible(new)
    params, _, traces = _run(tx, params)
    assert traces == 1
    assert params["params"]["head"]["kernel"].dtype == dtype
    _assert_feasible(params)


def test_bf16_max_norm_keeps_dtype():
    params = {"kernel": 4 * jnp.ones((3, 2), jnp.bfloat16)}
    tx = optax.chain(optax.sgd(0.1), jaxcons.constrain({"kernel": MaxNorm(1.0)}))
    updates, _ = tx.update(params, tx.init(params), params)
    new = optax.apply_updates(params, updates)["kernel"]
    assert updates["kernel"].dtype == new.dtype == jnp.bfloat16
    assert np.all(_col_norms(new.astype(jnp.float32)) <= 1.0 + 3 * 2.0**-8)


# --- errors from a constraint's check() --------------------------------------------------------


def test_check_rejects_a_shape_at_init():
    params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2))}}}
    msg = (
        "MaxNorm axis=3: axis 3 is out of range for parameter 'params/Dense_0/kernel' of "
        "shape (3, 2) (rank 2)."
    )
    tx = jaxcons.constrain({"**/kernel": MaxNorm(axis=3)})
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.init(params)
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.apply_constraints(params, {"**/kernel": MaxNorm(axis=3)})


def test_check_rejects_a_shape_at_update():
    # init on one structure, update on another: the check runs when the new one is resolved.
    tx = jaxcons.constrain({"**/kernel": MaxNorm(axis=-3)})
    good = {"kernel": jnp.ones((2, 3, 2))}
    tx.init(good)
    bad = {"kernel": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match=re.escape("MaxNorm axis=-3: axis -3 is out of range")):
        tx.update(bad, jaxcons.ConstrainState({}), bad)


def test_strict_error_from_constrain():
    tx = jaxcons.constrain({"**/kernal": NONNEG})
    with pytest.raises(
        ValueError,
        match=re.escape("constraint rule '**/kernal' matches no parameter. Closest paths: "),
    ):
        tx.init(_params())
    loose = jaxcons.constrain({"**/kernal": NONNEG, "**/bias": CLIP}, strict=False)
    params = _params()
    updates, _ = loose.update(_grads(params), loose.init(params), params)
    bias = np.asarray(optax.apply_updates(params, updates)["params"]["Dense_0"]["bias"])
    assert np.all(np.abs(bias) <= 0.5)


def test_non_mapping_rules_are_a_type_error():
    with pytest.raises(TypeError, match=re.escape("constraint rules must be a mapping")):
        jaxcons.constrain(NONNEG)
    with pytest.raises(TypeError, match=re.escape("constraint rules must be a mapping")):
        jaxcons.apply_constraints(_params(), NONNEG)


def test_non_callable_constraint_is_rejected():
    with pytest.raises(
        TypeError,
        match=re.escape(
            "Could not interpret constraint identifier 3 of type int: expected None, a name, "
            "a config dict, a Constraint or a callable."
        ),
    ):
        jaxcons.constrain({"**": 3})


# --- apply_constraints --------------------------------------------------------------------------


def test_apply_constraints_is_the_exact_projection():
    params = _params()
    out = jaxcons.apply_constraints(params, {"**/kernel": NONNEG, "**/bias": CLIP})
    np.testing.assert_array_equal(
        out["params"]["head"]["kernel"],
        np.maximum(np.asarray(params["params"]["head"]["kernel"]), 0),
    )
    np.testing.assert_array_equal(
        out["params"]["Dense_0"]["bias"],
        np.clip(np.asarray(params["params"]["Dense_0"]["bias"]), -0.5, 0.5),
    )


def test_apply_constraints_max_norm():
    w = jnp.array([[3.0, 0.3], [4.0, 0.4]])
    out = jaxcons.apply_constraints({"kernel": w}, {"kernel": MaxNorm(1.0)})["kernel"]
    np.testing.assert_allclose(out, np.array([[0.6, 0.3], [0.8, 0.4]], np.float32), rtol=1e-6)
    # The in-range column comes back bit for bit.
    np.testing.assert_array_equal(out[:, 1], w[:, 1])


def test_apply_constraints_untouched_leaves_are_the_same_objects():
    params = {"a": jnp.ones(2), "b": -jnp.ones(2), "i": jnp.array([-1], jnp.int32)}
    out = jaxcons.apply_constraints(params, {"b": NONNEG})
    assert out["a"] is params["a"]
    assert out["i"] is params["i"]
    np.testing.assert_array_equal(out["b"], np.zeros(2, np.float32))


def test_apply_constraints_int_leaves_pass_through_a_broad_rule():
    params = {"w": jnp.array([-1.0]), "step": jnp.array([-1], jnp.int32), "none": None}
    out = jaxcons.apply_constraints(params, {"**": NONNEG})
    assert out["step"] is params["step"]
    assert out["none"] is None
    np.testing.assert_array_equal(out["w"], np.zeros(1, np.float32))


def test_apply_constraints_under_jit(assert_trees_equal):
    rules = {"**/kernel": NONNEG, "**/bias": CLIP}
    params = _params()
    assert_trees_equal(
        jax.jit(lambda p: jaxcons.apply_constraints(p, rules))(params),
        jaxcons.apply_constraints(params, rules),
    )


def test_apply_constraints_strict_error():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "constraint rule 'params/Dense_1/kernel' matches no parameter. Closest paths: "
            "'params/Dense_0/kernel'"
        ),
    ):
        jaxcons.apply_constraints(_params(), {"params/Dense_1/kernel": NONNEG})


def test_nnx_optimizer_init_on_variables_update_on_arrays():
    from flax import nnx

    from jaxcons import SpectralNorm

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])

        def __call__(self, x):
            return self.layers[1](jnp.tanh(self.layers[0](x)))

    model = MLP(nnx.Rngs(0))
    rules = {"layers/0/kernel": MaxNorm(0.5), "**/kernel": SpectralNorm(0.5, 3), "**/bias": CLIP}
    tx = optax.chain(optax.sgd(1.0), jaxcons.constrain(rules))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = jnp.ones((8, 3)), 5 * jnp.ones((8, 2))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(jnp.square(m(x) - y)))(model)
        optimizer.update(model, grads)

    for _ in range(3):
        step(model, optimizer)
    first = np.asarray(model.layers[0].kernel[...])
    assert np.all(_col_norms(first) <= 0.5 * (1 + 4 * np.finfo(np.float32).eps))
    second = np.asarray(model.layers[1].kernel[...], np.float64)
    # Power iteration (3 warm-started iterations a step) estimates sigma from below.
    assert np.linalg.norm(second, 2) <= 0.5 * 1.01
    for layer in model.layers:
        bias = np.asarray(layer.bias[...])
        assert np.all((bias >= -0.5) & (bias <= 0.5))
    # The spectral-norm state was created under the same path at init (on Variables) as the
    # update (on raw arrays) looked it up.
    is_state = lambda s: isinstance(s, jaxcons.ConstrainState)  # noqa: E731
    states = [
        s for s in jax.tree_util.tree_leaves(optimizer.opt_state, is_leaf=is_state) if is_state(s)
    ]
    assert len(states) == 1
    assert list(states[0].constraint_states) == ["layers/1/kernel"]


# --- the scratch buffer (constrain's CPU speed-up) -----------------------------------------------


@pytest.mark.parametrize("bad", ["yes", 1, 0])
def test_scratch_argument_is_validated(bad):
    msg = re.escape(f"scratch must be True, False or None, got {bad!r}")
    with pytest.raises(ValueError, match=msg):
        jaxcons.constrain({"w": jaxcons.NonNeg()}, scratch=bad)


def test_scratch_buffers_only_for_constraints_that_need_a_reduction():
    params = {
        "k": jnp.ones((3, 2), jnp.bfloat16),
        "b": jnp.ones(2),
        "c": jnp.ones(2),
        "free": jnp.ones(2),
    }
    rules = {"k": MaxNorm(1.0), "b": jaxcons.NonNeg(), "c": jaxcons.Clip(0.0, 1.0)}
    on = jaxcons.constrain(rules, scratch=True).init(params)
    assert set(on.scratch) == {"k"}
    assert on.scratch["k"].shape == (3, 2) and on.scratch["k"].dtype == jnp.bfloat16
    assert jaxcons.constrain(rules, scratch=False).init(params).scratch == {}
    # The default is off on every backend: the state holds no arrays for stateless rules.
    default = jaxcons.constrain(rules).init(params)
    assert default == jaxcons.ConstrainState(constraint_states={}, scratch={})
    assert jax.tree_util.tree_leaves(jax.jit(jaxcons.constrain(rules).init)(params)) == []
    # A one-field ConstrainState still builds (the scratch field has a default).
    assert jaxcons.ConstrainState({}).scratch == {}


def _donated_steps(scratch, steps=4):
    params = {"k": jax.random.normal(jax.random.key(0), (256, 128)) * 3.0}
    tx = optax.chain(optax.sgd(0.5), jaxcons.constrain({"k": MaxNorm(1.0)}, scratch=scratch))

    def step(params, state):
        grads = jax.tree.map(lambda p: jnp.cos(p), params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step, donate_argnums=(0, 1))
    state = tx.init(params)
    compiled = jitted.lower(params, state).compile()
    first_scratch = state[1].scratch.get("k")
    for _ in range(steps):
        params, state = jitted(params, state)
    return params, first_scratch, compiled.memory_analysis()


def test_scratch_on_and_off_agree_and_the_buffer_is_donated():
    on, first_on, mem_on = _donated_steps(True)
    off, first_off, mem_off = _donated_steps(False)
    assert first_off is None and first_on.is_deleted()  # Donated, so reused in place.
    np.testing.assert_allclose(on["k"], off["k"], rtol=2e-7, atol=0)
    norms = np.linalg.norm(np.asarray(on["k"], np.float64), axis=0)
    assert norms.max() <= 1.0 + 8 * np.finfo(np.float32).eps
    # Structure, not timing: with the scratch, x = p + u has donated memory to live in.
    assert mem_on.temp_size_in_bytes < mem_off.temp_size_in_bytes


def test_box_correction_never_lands_further_outside():
    # From an infeasible p far larger than a narrow box, no float32 update lands inside; the
    # correction must keep the landing closest to the box (the plain difference lands on 0.0,
    # a one-ulp nudge of it would land on 8.0).
    params = {"w": jnp.array([1e8], jnp.float32)}
    tx = jaxcons.constrain({"w": jaxcons.Clip(0.25, 0.75)})
    updates, _ = tx.update({"w": jnp.array([0.0], jnp.float32)}, tx.init(params), params)
    landed = float(optax.apply_updates(params, updates)["w"][0])
    assert landed == 0.0
