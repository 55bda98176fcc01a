"""Parity with Keras 3 (JAX backend): same penalty values, and the documented differences."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxcons import (  # noqa: E402
    activity_penalty,
    penalties,
    penalty,
    regularizers,
)
from jaxcons.regularizers import L1, L1L2, L2, OrthogonalRegularizer  # noqa: E402

pytestmark = pytest.mark.keras

SHAPES = [(4, 4), (3, 7), (7, 3), (16, 5), (1, 6)]


def random(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def keras_value(reg, x: jax.Array) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(reg(x))))


def test_backend_is_jax():
    assert keras.backend.backend() == "jax"


@pytest.mark.parametrize("shape", [*SHAPES, (10,), (2, 3, 4)])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (L1(0.1), lambda: keras.regularizers.L1(0.1)),
        (L2(0.3), lambda: keras.regularizers.L2(0.3)),
        (L1L2(l1=0.1, l2=0.2), lambda: keras.regularizers.L1L2(l1=0.1, l2=0.2)),
        (L1L2(l1=0.0, l2=0.05), lambda: keras.regularizers.L1L2(l1=0.0, l2=0.05)),
        (L1(), lambda: keras.regularizers.L1()),
        (L2(), lambda: keras.regularizers.L2()),
    ],
    ids=["l1", "l2", "l1l2", "l1l2-only-l2", "l1-default", "l2-default"],
)
def test_elementwise_regularizers_match_keras(ours, theirs, shape):
    x = random(shape, seed=len(shape))
    np.testing.assert_allclose(float(ours(x)), keras_value(theirs(), x), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:-1])
@pytest.mark.parametrize("mode", ["rows", "columns"])
@pytest.mark.parametrize("factor", [0.01, 0.5])
def test_orthogonal_matches_keras(shape, mode, factor):
    x = random(shape, seed=7)
    theirs = keras.regularizers.OrthogonalRegularizer(factor=factor, mode=mode)
    np.testing.assert_allclose(
        float(OrthogonalRegularizer(factor, mode)(x)), keras_value(theirs, x), rtol=1e-5
    )


def test_orthogonal_zero_column_same_value_but_finite_gradient():
    x = random((5, 4), seed=2).at[:, 1].set(0.0)
    ours = OrthogonalRegularizer(0.1, "columns")
    theirs = keras.regularizers.OrthogonalRegularizer(0.1, "columns")
    np.testing.assert_allclose(float(ours(x)), keras_value(theirs, x), rtol=1e-5)
    assert np.isnan(np.asarray(jax.grad(theirs)(x))).any()  # Keras: NaN gradient.
    assert np.isfinite(np.asarray(jax.grad(ours)(x))).all()


def test_orthogonal_single_row_is_zero_where_keras_is_nan():
    x = random((1, 6))
    assert np.isnan(keras_value(keras.regularizers.OrthogonalRegularizer(0.1), x))
    assert float(OrthogonalRegularizer(0.1)(x)) == 0.0


def test_configs_match_keras_up_to_float32_rounding():
    pairs = [
        (L1(0.01), keras.regularizers.L1(0.01)),
        (L2(0.01), keras.regularizers.L2(0.01)),
        (L1L2(l1=0.1, l2=0.2), keras.regularizers.L1L2(l1=0.1, l2=0.2)),
        (
            OrthogonalRegularizer(0.01, "columns"),
            keras.regularizers.OrthogonalRegularizer(0.01, "columns"),
        ),
    ]
    for ours, theirs in pairs:
        a, b = ours.get_config(), theirs.get_config()
        assert a.keys() == b.keys()
        for k, v in a.items():
            if isinstance(v, float):
                assert v == pytest.approx(b[k], rel=1e-7)
            else:
                assert v == b[k]
    # Keras stores L1's factor as a float32 tensor; we keep the Python float given.
    assert keras.regularizers.L1(0.01).get_config()["l1"] != 0.01
    assert L1(0.01).get_config()["l1"] == 0.01


def test_keras_configs_load_into_jaxcons():
    for theirs in (
        keras.regularizers.L2(0.3),
        keras.regularizers.L1L2(l1=0.1, l2=0.2),
        keras.regularizers.OrthogonalRegularizer(0.1, "rows"),
    ):
        payload = {"class_name": type(theirs).__name__, "config": theirs.get_config()}
        ours = regularizers.deserialize(payload)
        x = random((4, 3))
        np.testing.assert_allclose(float(ours(x)), keras_value(theirs, x), rtol=1e-5)


def test_string_identifiers_follow_the_keras_documentation():
    # The documentation promises 'l1_l2' -> L1L2(0.01, 0.01); Keras 3 rejects that string and
    # maps 'l1l2' to a zero penalty. jaxcons gives the documented regularizer.
    with pytest.raises(ValueError, match="Could not interpret regularizer identifier"):
        keras.regularizers.get("l1_l2")
    zero = keras.regularizers.get("l1l2")
    assert (zero.l1, zero.l2) == (0.0, 0.0)
    assert regularizers.get("l1_l2") == L1L2(l1=0.01, l2=0.01)
    for name, key in (("l1", "l1"), ("l2", "l2"), ("orthogonal_regularizer", "factor")):
        theirs, ours = keras.regularizers.get(name), regularizers.get(name)
        assert type(theirs).__name__ == type(ours).__name__
        assert ours.get_config()[key] == 0.01
        assert theirs.get_config()[key] == pytest.approx(0.01)


def test_documented_layer_losses_example():
    """Dense(5), kernel 'ones', kernel L1(0.01), activity L2(0.01), input 2 * ones((5, 5))."""
    layer = keras.layers.Dense(
        5,
        kernel_initializer="ones",
        kernel_regularizer=keras.regularizers.L1(0.01),
        activity_regularizer=keras.regularizers.L2(0.01),
    )
    inputs = 2.0 * np.ones((5, 5), np.float32)
    with jax.numpy_rank_promotion("allow"):  # Keras's Dense adds the bias by broadcasting.
        layer(inputs)
    keras_total = float(np.sum([np.asarray(loss) for loss in layer.losses]))

    params = {"kernel": jnp.ones((5, 5)), "bias": jnp.zeros(5)}
    outputs = jnp.asarray(inputs) @ params["kernel"] + params["bias"][None, :]
    kernel_term = penalty(params, {"kernel": L1(0.01)})
    activity_term = activity_penalty(L2(0.01), outputs)
    assert float(kernel_term) == pytest.approx(0.25)
    assert float(activity_term) == pytest.approx(5.0)
    assert penalties(params, {"kernel": L1(0.01)}) == {"kernel": pytest.approx(0.25)}
    np.testing.assert_allclose(float(kernel_term + activity_term), keras_total, rtol=1e-6)
    assert keras_total == pytest.approx(5.25)


def test_callable_regularizer_like_keras():
    def l1_reg(weight_matrix):  # The Keras documentation's plain-function regularizer.
        return 0.01 * keras.ops.sum(keras.ops.absolute(weight_matrix))

    layer = keras.layers.Dense(5, kernel_initializer="ones", kernel_regularizer=l1_reg)
    with jax.numpy_rank_promotion("allow"):  # Keras's Dense adds the bias by broadcasting.
        layer(np.ones((5, 5), np.float32))
    keras_total = float(np.sum([np.asarray(loss) for loss in layer.losses]))
    ours = penalty({"kernel": jnp.ones((5, 5)), "bias": jnp.zeros(5)}, {"kernel": l1_reg})
    np.testing.assert_allclose(float(ours), keras_total, rtol=1e-6)
