"""`penalty`, `penalties` and `activity_penalty`: rules, strictness, jit/grad, dtypes, errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons
from jaxcons import Rules, activity_penalty, penalties, penalty
from jaxcons.regularizers import L1, L1L2, L2, GroupLasso, OrthogonalRegularizer


def make_params() -> dict:
    rng = np.random.default_rng(0)
    return {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
            },
            "Dense_1": {
                "kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
            },
        },
        "step": jnp.array(3, jnp.int32),
    }


def np_leaf(params, *keys) -> np.ndarray:
    leaf = params["params"]
    for k in keys:
        leaf = leaf[k]
    return np.asarray(leaf, np.float64)


def test_penalty_sums_first_matching_rule_per_leaf():
    params = make_params()
    rules = {
        "params/Dense_1/kernel": L1(0.2),  # more specific first: wins for Dense_1
        "**/kernel": L2(0.1),
        "**/bias": L1(0.05),
    }
    expected = (
        0.1 * np.sum(np_leaf(params, "Dense_0", "kernel") ** 2)
        + 0.2 * np.sum(np.abs(np_leaf(params, "Dense_1", "kernel")))
        + 0.05 * np.sum(np.abs(np_leaf(params, "Dense_0", "bias")))
        + 0.05 * np.sum(np.abs(np_leaf(params, "Dense_1", "bias")))
    )
    np.testing.assert_allclose(penalty(params, rules), expected, rtol=1e-6)
    got = penalties(params, rules)
    assert list(got) == [
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "params/Dense_1/bias",
        "params/Dense_1/kernel",
    ]
    np.testing.assert_allclose(
        got["params/Dense_1/kernel"],
        0.2 * np.sum(np.abs(np_leaf(params, "Dense_1", "kernel"))),
        rtol=1e-6,
    )
    np.testing.assert_allclose(sum(float(v) for v in got.values()), expected, rtol=1e-6)


def test_none_exempts_and_names_configs_and_callables_are_accepted():
    params = make_params()
    rules = [
        ("params/Dense_0/bias", None),
        ("**/bias", "l1"),
        ("params/Dense_0/kernel", {"class_name": "L2", "config": {"l2": 0.5}}),
        ("**/kernel", lambda x: jnp.sum(x)),
    ]
    got = penalties(params, rules)
    assert set(got) == {"params/Dense_1/bias", "params/Dense_0/kernel", "params/Dense_1/kernel"}
    np.testing.assert_allclose(
        got["params/Dense_1/bias"],
        0.01 * np.sum(np.abs(np_leaf(params, "Dense_1", "bias"))),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        got["params/Dense_0/kernel"],
        0.5 * np.sum(np_leaf(params, "Dense_0", "kernel") ** 2),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        got["params/Dense_1/kernel"], np.sum(np_leaf(params, "Dense_1", "kernel")), rtol=1e-5
    )


def test_regex_and_callable_patterns():
    params = make_params()
    by_regex = penalty(params, {r"re:params/Dense_\d/kernel": L1(1.0)})
    by_callable = penalty(params, {lambda path, leaf: leaf.ndim == 2: L1(1.0)})
    expected = sum(np.abs(np_leaf(params, d, "kernel")).sum() for d in ("Dense_0", "Dense_1"))
    np.testing.assert_allclose(by_regex, expected, rtol=1e-6)
    np.testing.assert_allclose(by_callable, expected, rtol=1e-6)


def test_no_governed_leaf_gives_a_float32_zero():
    value = penalty(make_params(), {"params/Dense_0/kernel": None})
    assert value.shape == () and value.dtype == jnp.float32 and float(value) == 0.0
    assert penalties(make_params(), {"params/Dense_0/kernel": None}) == {}


def test_strict_rule_matching_nothing_names_it_and_closest_paths():
    msg = "regularizer rule '**/kernal' matches no parameter. Closest paths: "
    with pytest.raises(ValueError, match=re.escape(msg)):
        penalty(make_params(), {"**/kernel": L2(), "**/kernal": L1()})
    with pytest.raises(ValueError, match=re.escape("'params/Dense_0/kernel'")):
        penalties(make_params(), {"params/Dense_0/kernal": L1()})
    # The integer step counter is never regularized: a rule matching only it is an error.
    msg = "regularizer rule 'step' matches no parameter: it matches only leaves that are not"
    with pytest.raises(ValueError, match=re.escape(msg)):
        penalty(make_params(), {"step": L1()})


def test_non_strict_allows_rules_matching_nothing():
    params = make_params()
    value = penalty(params, {"**/kernal": L1(), "params/Dense_0/bias": L1(1.0)}, strict=False)
    np.testing.assert_allclose(value, np.abs(np_leaf(params, "Dense_0", "bias")).sum(), rtol=1e-6)


def test_check_hook_errors_name_the_parameter_path():
    msg = (
        "OrthogonalRegularizer needs a rank-2 parameter; parameter 'params/Dense_0/bias' has "
        "shape (3,) (rank 1)"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        penalty(make_params(), {"**": OrthogonalRegularizer()})
    msg = "GroupLasso axis=1: axis 1 is out of range for parameter 'params/Dense_0/bias'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        penalties(make_params(), {"**/kernel": GroupLasso(axis=1), "**/bias": GroupLasso(axis=1)})


def test_orthogonal_on_kernels_only():
    params = make_params()
    value = penalty(params, {"**/kernel": OrthogonalRegularizer(0.1), "**": None})
    assert np.isfinite(float(value)) and float(value) > 0


def test_non_scalar_regularizer_output_is_an_error():
    def not_summed(x):
        return jnp.abs(x)

    msg = "for parameter 'params/Dense_0/bias' returned an array of shape (3,); a regularizer "
    with pytest.raises(ValueError, match=re.escape(msg + "must return a scalar (sum it).")):
        penalty(make_params(), {"params/Dense_0/bias": not_summed})
    with pytest.raises(ValueError, match=re.escape("for a layer's outputs returned an array")):
        activity_penalty(not_summed, jnp.ones((2, 3)))


def test_jit_and_grad_match_the_closed_form_and_do_not_retrace():
    params = make_params()
    rules = {"**/kernel": L2(0.1), "**/bias": L1(0.05)}
    traces = []

    @jax.jit
    def f(p):
        traces.append(1)
        return penalty(p, rules)

    np.testing.assert_allclose(f(params), penalty(params, rules), rtol=1e-6)
    grads = jax.grad(lambda p: penalty(p, rules))({k: v for k, v in params.items() if k != "step"})
    np.testing.assert_allclose(
        grads["params"]["Dense_0"]["kernel"],
        0.2 * np_leaf(params, "Dense_0", "kernel"),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        grads["params"]["Dense_1"]["bias"],
        0.05 * np.sign(np_leaf(params, "Dense_1", "bias")),
        rtol=1e-6,
    )
    for k in range(3):
        shifted = jax.tree_util.tree_map(lambda x, k=k: x + k, params)
        f(shifted)
    assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_give_a_float32_penalty(dtype):
    params = {"w": jnp.full((8, 8), 3.0, dtype), "b": jnp.ones(2, jnp.float32)}
    value = penalty(params, {"w": L2(1.0), "b": L1(1.0)})
    assert value.dtype == jnp.float32
    assert float(value) == 64 * 9 + 2
    assert penalties(params, {"w": L2(1.0)})["w"].dtype == jnp.float32
    assert jax.grad(penalty)(params, {"w": L2(1.0)})["w"].dtype == dtype


def test_low_precision_callable_result_is_upcast():
    value = penalty({"w": jnp.ones(3, jnp.bfloat16)}, {"w": lambda x: jnp.sum(x)})
    assert value.dtype == jnp.float32 and float(value) == 3.0


def test_masked_nodes_pass_through():
    params = {"a": jnp.ones(2), "b": optax.MaskedNode()}
    assert float(penalty(params, {"*": L1(1.0)})) == 2.0


def test_prebuilt_rules_and_reresolution_for_a_new_structure():
    rules = Rules({"**/kernel": "l2"}, coerce=jaxcons.regularizers.get, kind="regularizer")
    assert rules.entries[0].value == L2(0.01)
    np.testing.assert_allclose(penalty({"kernel": jnp.ones(3)}, rules), 0.03, rtol=1e-6)
    np.testing.assert_allclose(penalty({"a": {"kernel": jnp.ones(4)}}, rules), 0.04, rtol=1e-6)


def test_unknown_regularizer_name_in_rules():
    with pytest.raises(ValueError, match=re.escape("Unknown regularizer identifier 'l3'.")):
        penalty(make_params(), {"**": "l3"})


# --- activity_penalty ----------------------------------------------------------------------


def test_activity_penalty_keras_documentation_example():
    kernel, bias = jnp.ones((5, 5)), jnp.zeros(5)
    inputs = 2.0 * jnp.ones((5, 5))
    outputs = inputs @ kernel + bias[None, :]  # every output is 10
    assert float(activity_penalty(L2(0.01), outputs)) == pytest.approx(0.01 * 25 * 100 / 5)
    total = penalty({"kernel": kernel, "bias": bias}, {"kernel": L1(0.01)}) + activity_penalty(
        L2(0.01), outputs
    )
    assert float(total) == pytest.approx(5.25)


def test_activity_penalty_is_independent_of_batch_size():
    row = jnp.asarray(np.random.default_rng(0).normal(size=(1, 7)), jnp.float32)
    one = activity_penalty(L1L2(0.1, 0.2), row)
    many = activity_penalty(L1L2(0.1, 0.2), jnp.tile(row, (32, 1)))
    np.testing.assert_allclose(many, one, rtol=1e-5)


def test_activity_penalty_pytrees_names_none_scalars_and_empty_batches():
    outputs = {"a": jnp.full((4, 2), 2.0), "b": [jnp.ones((2, 3))], "n": jnp.ones(3, jnp.int32)}
    # a: 0.01 * (8 * 4) / 4 = 0.08; b: 0.01 * 6 / 2 = 0.03 (the integer leaf is skipped).
    assert float(activity_penalty("l2", outputs)) == pytest.approx(0.11)
    assert float(activity_penalty(None, outputs)) == 0.0
    assert float(activity_penalty(L2(1.0), jnp.float32(3.0))) == 9.0  # no batch axis: undivided
    assert float(activity_penalty(L2(1.0), jnp.ones((0, 3)))) == 0.0
    assert activity_penalty(L2(1.0), jnp.ones((2, 2), jnp.bfloat16)).dtype == jnp.float32


def test_activity_penalty_under_jit_and_grad():
    y = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
    g = jax.jit(jax.grad(lambda o: activity_penalty(L2(0.5), o)))(y)
    np.testing.assert_allclose(g, np.asarray(y) / 4, rtol=1e-6)
