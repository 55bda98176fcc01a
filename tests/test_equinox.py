"""equinox models with jaxcons: rules over ``eqx.filter(model, eqx.is_array)``.

equinox stores a ``Linear`` weight as ``(out, in)`` (Keras and flax: ``(in, out)``), so each
unit's incoming weights are a row and Keras's per-unit ``axis=0`` is ``axis=1`` here; a
``Conv2d`` weight is ``(out, in, kh, kw)``, so a per-filter norm runs over ``axis=(1, 2, 3)``.
The oracles are NumPy in float64: the layer's own output (which row feeds which unit), row
and filter norms, and the projections written out.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons

RULES = {"**/weight": jaxcons.MaxNorm(1.0, axis=1), "**/bias": jaxcons.NonNeg()}


def params(model):
    return eqx.filter(model, eqx.is_array)


def np64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def np_max_norm_rows(w: np.ndarray, c: float) -> np.ndarray:
    """Each row of ``w`` with norm above ``c`` scaled to norm ``c`` (float64)."""
    w = np64(w)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return w * np.minimum(1.0, c / np.where(norms > 0, norms, 1.0))


EPS = float(np.finfo(np.float32).eps)


def assert_feasible(violations: dict[str, jax.Array]) -> None:
    """What `jaxcons.violations` reports for projected parameters: exactly 0 for `NonNeg`; for
    `MaxNorm(1.0)`, at most a few float32 ulps (a row scaled to norm 1 in float32 may have a
    computed norm an ulp above 1, which a second projection would move once more)."""
    for path, v in violations.items():
        if path.endswith("bias"):
            assert float(v) == 0.0, (path, v)
        else:
            assert float(v) <= 4 * EPS, (path, v)


def mlp(seed: int = 0, scale: float = 1.0) -> eqx.nn.MLP:
    """An MLP 8 -> 16 -> 16 -> 3, its weights and biases multiplied by ``scale``."""
    model = eqx.nn.MLP(8, 3, width_size=16, depth=2, key=jax.random.key(seed))
    arrays, static = eqx.partition(model, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(lambda a: a * scale, arrays), static)


def test_paths_of_filtered_models():
    key = jax.random.key(0)
    assert jaxcons.paths(params(mlp())) == [
        "layers/0/weight",
        "layers/0/bias",
        "layers/1/weight",
        "layers/1/bias",
        "layers/2/weight",
        "layers/2/bias",
    ]
    assert jaxcons.paths(params(eqx.nn.Linear(4, 3, key=key))) == ["weight", "bias"]
    assert jaxcons.paths(params(eqx.nn.Linear(4, 3, use_bias=False, key=key))) == ["weight"]
    assert jaxcons.paths(params(eqx.nn.Conv2d(3, 4, 3, key=key))) == ["weight", "bias"]
    # A Lambda holds no array: its index is simply absent.
    seq = eqx.nn.Sequential(
        [eqx.nn.Linear(4, 4, key=key), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(4, 2, key=key)]
    )
    assert jaxcons.paths(params(seq)) == [
        "layers/0/weight",
        "layers/0/bias",
        "layers/2/weight",
        "layers/2/bias",
    ]


def test_linear_weight_rows_are_each_units_incoming_weights():
    linear = eqx.nn.Linear(5, 3, key=jax.random.key(1))
    assert linear.weight.shape == (3, 5)  # (out, in)
    x = np.random.default_rng(0).normal(size=5).astype(np.float32)
    expected = np64(linear.weight) @ np64(x) + np64(linear.bias)  # Row i feeds unit i.
    np.testing.assert_allclose(np.asarray(linear(jnp.asarray(x))), expected, rtol=1e-5)


def test_max_norm_axis_1_bounds_each_units_incoming_weights():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 5)) * np.array([0.1, 0.3, 1.0, 2.0, 4.0, 8.0])[:, None]
    w = w.astype(np.float32)
    row_norms = np.linalg.norm(np64(w), axis=1)
    assert (row_norms < 1.0).any() and (row_norms > 1.0).any()
    projected = np.asarray(jaxcons.MaxNorm(1.0, axis=1)(jnp.asarray(w)))
    np.testing.assert_allclose(projected, np_max_norm_rows(w, 1.0), rtol=1e-6)
    assert np.linalg.norm(np64(projected), axis=1).max() <= 1.0 * (1 + 1e-6)
    # Rows inside the ball come back bit for bit.
    inside = row_norms <= 1.0
    np.testing.assert_array_equal(projected[inside], w[inside])
    # Keras's default, axis=0, bounds the columns here: rows are left above the bound.
    columns_bounded = np.asarray(jaxcons.MaxNorm(1.0)(jnp.asarray(w)))
    assert np.linalg.norm(np64(columns_bounded), axis=1).max() > 1.5


def test_conv2d_per_filter_norm_is_axes_1_2_3():
    conv = eqx.nn.Conv2d(3, 4, 3, key=jax.random.key(3))
    assert conv.weight.shape == (4, 3, 3, 3)  # (out, in, kh, kw)
    w = conv.weight * jnp.array([0.5, 2.0, 5.0, 10.0])[:, None, None, None]
    projected = jaxcons.MaxNorm(1.0, axis=(1, 2, 3))(w)
    flat = np64(w).reshape(4, -1)
    np.testing.assert_allclose(
        np64(projected).reshape(4, -1), np_max_norm_rows(flat, 1.0), rtol=1e-6
    )


def test_penalty_over_the_filtered_tree():
    model = mlp(seed=4)
    reg = {"**/weight": jaxcons.L2(1e-3), "**/bias": jaxcons.L1(1e-2)}
    expected = sum(
        1e-3 * np.sum(np64(layer.weight) ** 2) + 1e-2 * np.sum(np.abs(np64(layer.bias)))
        for layer in model.layers
    )
    np.testing.assert_allclose(float(jaxcons.penalty(params(model), reg)), expected, rtol=1e-6)


def test_violations_before_and_after_projection():
    model = mlp(seed=5, scale=4.0)
    before = jaxcons.violations(params(model), RULES)
    assert list(before) == jaxcons.paths(params(model))
    for i, layer in enumerate(model.layers):
        w, b = np64(layer.weight), np64(layer.bias)
        expected_w = np.abs(w - np_max_norm_rows(w, 1.0)).max()
        np.testing.assert_allclose(float(before[f"layers/{i}/weight"]), expected_w, rtol=1e-5)
        np.testing.assert_allclose(float(before[f"layers/{i}/bias"]), max(0.0, -b.min()))
        assert expected_w > 0 and b.min() < 0  # Both bind.
    after = jaxcons.violations(jaxcons.apply_constraints(params(model), RULES), RULES)
    assert_feasible(after)


def test_apply_constraints_then_combine_back_into_the_model():
    model = mlp(seed=6, scale=4.0)
    projected = jaxcons.apply_constraints(params(model), RULES)
    constrained = eqx.combine(projected, model)
    assert type(constrained) is eqx.nn.MLP
    assert constrained.activation is model.activation  # Non-array fields come from the model.
    for layer, original in zip(constrained.layers, model.layers, strict=True):
        np.testing.assert_allclose(
            np64(layer.weight), np_max_norm_rows(original.weight, 1.0), rtol=1e-6
        )
        np.testing.assert_array_equal(
            np.asarray(layer.bias), np.maximum(np.asarray(original.bias), 0)
        )
    # The combined model computes with the projected weights (NumPy forward pass).
    x = np.random.default_rng(7).normal(size=8)
    h = x
    for i, layer in enumerate(constrained.layers):
        h = np64(layer.weight) @ h + np64(layer.bias)
        if i < len(constrained.layers) - 1:
            h = np.maximum(h, 0.0)
    np.testing.assert_allclose(
        np.asarray(constrained(jnp.asarray(x, jnp.float32))), h, rtol=1e-5, atol=1e-6
    )
    # The original model is untouched.
    assert float(jaxcons.violations(params(model), RULES)["layers/0/weight"]) > 0


def test_training_with_filter_jit_keeps_every_constraint(adam):
    model = mlp(seed=8, scale=3.0)  # Starts outside the constraints.
    reg = {"**/weight": jaxcons.L2(1e-3)}
    tx = jaxcons.chain(adam(5e-2), constraints=RULES, regularizers=reg)
    opt_state = tx.init(params(model))
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=64))

    def loss_fn(model):
        logits = jax.vmap(model)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, params(model))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses, at_bound = [], 0
    for _ in range(15):
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))
        assert_feasible(jaxcons.violations(params(model), RULES))
        for layer in model.layers:
            norms = np.linalg.norm(np64(layer.weight), axis=1)
            assert norms.max() <= 1.0 * (1 + 1e-6)
            at_bound += int(np.sum(norms > 1.0 - 1e-5))
            assert np.asarray(layer.bias).min() >= 0.0
    assert at_bound > 0  # The bound binds.
    assert losses[-1] < losses[0]


def test_rules_written_for_flax_names_are_an_error_on_an_equinox_model():
    with pytest.raises(ValueError, match=r"'\*\*/kernel' matches no parameter\. Closest paths: "):
        jaxcons.apply_constraints(params(mlp()), {"**/kernel": jaxcons.MaxNorm(1.0, axis=1)})
