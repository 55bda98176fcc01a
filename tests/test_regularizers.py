"""Behaviour of the built-in regularizers, their proximal operators and the registry.

Expected values are computed here with NumPy (in float64), never with the code under test.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxcons import regularizers
from jaxcons.regularizers import (
    L1,
    L1L2,
    L2,
    GroupLasso,
    OrthogonalRegularizer,
    Regularizer,
)

FLOAT_DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]
WITH_PROX = [L1(0.3), L2(0.7), L1L2(l1=0.3, l2=0.7), GroupLasso(0.3), GroupLasso(0.3, axis=1)]


def normal(size: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size)


def ref_orthogonal(x: np.ndarray, factor: float, mode: str) -> float:
    """The mean |cosine| over pairs i < j of rows (or columns), times factor, in float64."""
    v = np.asarray(x, np.float64)
    v = v if mode == "rows" else v.T
    n = v.shape[0]
    norms = np.linalg.norm(v, axis=1)
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            if norms[i] > 0 and norms[j] > 0:
                total += abs(v[i] @ v[j]) / (norms[i] * norms[j])
    return factor * total / (n * (n - 1) / 2)


def ref_group_lasso(x: np.ndarray, factor: float, axis) -> float:
    return factor * float(np.sum(np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=axis))))


# --- Values -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 4), (3, 7), (10,), (2, 3, 4)])
def test_l1_l2_l1l2_values(shape):
    x = normal(shape).astype(np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(L1(0.1)(jnp.asarray(x)), 0.1 * np.abs(x64).sum(), rtol=1e-6)
    np.testing.assert_allclose(L2(0.1)(jnp.asarray(x)), 0.1 * (x64**2).sum(), rtol=1e-6)
    np.testing.assert_allclose(
        L1L2(l1=0.1, l2=0.2)(jnp.asarray(x)),
        0.1 * np.abs(x64).sum() + 0.2 * (x64**2).sum(),
        rtol=1e-6,
    )


def test_documented_values():
    # The Keras documentation's examples, computed by hand.
    assert float(L2(2.0)(jnp.ones((5, 5)))) == 50.0
    assert float(L1(0.01)(jnp.ones((5, 5)))) == pytest.approx(0.25)
    assert float(L1L2(l1=0.01, l2=0.01)(2.0 * jnp.ones((5, 5)))) == pytest.approx(0.5 + 1.0)


@pytest.mark.parametrize("shape", [(4, 4), (3, 7), (7, 3), (2, 2), (16, 5)])
@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_values(shape, mode):
    x = normal(shape, seed=3).astype(np.float32)
    np.testing.assert_allclose(
        OrthogonalRegularizer(0.1, mode)(jnp.asarray(x)), ref_orthogonal(x, 0.1, mode), rtol=1e-5
    )


def test_orthogonal_extremes():
    eye = jnp.eye(4)
    assert float(OrthogonalRegularizer(1.0)(eye)) == 0.0
    # All rows parallel (some anti-parallel): every |cos| is 1.
    rows = jnp.array([[1.0, 2.0], [-2.0, -4.0], [0.5, 1.0]])
    np.testing.assert_allclose(OrthogonalRegularizer(0.3)(rows), 0.3, rtol=1e-6)
    # A single row (column) has no pairs: zero, where Keras divides by zero.
    assert float(OrthogonalRegularizer(1.0, "rows")(jnp.ones((1, 3)))) == 0.0
    assert float(OrthogonalRegularizer(1.0, "columns")(jnp.ones((3, 1)))) == 0.0


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((4, 3), 0),
        ((4, 3), 1),
        ((4, 3), -1),
        ((3, 3, 2, 5), (0, 1, 2)),
        ((3, 3, 2, 5), [0, 1]),
        ((6,), 0),
    ],
)
def test_group_lasso_values(shape, axis):
    x = normal(shape, seed=1).astype(np.float32)
    np_axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis
    np.testing.assert_allclose(
        GroupLasso(0.2, axis)(jnp.asarray(x)), ref_group_lasso(x, 0.2, np_axis), rtol=1e-6
    )


def test_group_lasso_groups_are_columns_of_a_dense_kernel_by_default():
    kernel = jnp.array([[3.0, 1.0, 0.0], [4.0, 1.0, 0.0]])  # column norms 5, sqrt(2), 0
    np.testing.assert_allclose(GroupLasso(1.0)(kernel), 5.0 + np.sqrt(2.0), rtol=1e-6)
    # axis=1: each row is a group (row norms sqrt(10), sqrt(17)).
    np.testing.assert_allclose(
        GroupLasso(1.0, axis=1)(kernel), np.sqrt(10.0) + np.sqrt(17.0), rtol=1e-6
    )


# Keras 3's own regularizer test cases, ported.


def test_keras_cases_zero_weights_and_zero_coefficients():
    zeros = jnp.zeros((4, 4))
    x = jnp.asarray(np.random.default_rng(0).random((4, 4)), jnp.float32)
    for reg in (L1(0.1), L2(0.1), L1L2(l1=0.1, l2=0.2)):
        assert float(reg(zeros)) == 0.0
    for reg in (L1(0.0), L2(0.0), L1L2()):
        assert float(reg(x)) == 0.0


def test_keras_cases_l1_symmetric_and_l1l2_reduces_to_each_part():
    ones = jnp.ones((4, 4))
    assert float(L1(0.1)(ones)) == float(L1(0.1)(-ones))
    x = jnp.asarray(np.random.default_rng(1).random((4, 4)), jnp.float32)
    assert float(L1L2(l1=0.1)(x)) == float(L1(0.1)(x))
    assert float(L1L2(l2=0.1)(x)) == float(L2(0.1)(x))


def test_keras_cases_l2_versus_l1_for_large_and_small_weights():
    large, small = 10.0 * jnp.ones((4, 4)), 0.1 * jnp.ones((4, 4))
    assert float(L2(1.0)(large)) > float(L1(1.0)(large))
    assert float(L2(1.0)(small)) < float(L1(1.0)(small))


# --- dtypes, pytrees, gradients -------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "reg", [L1(0.1), L2(0.1), L1L2(0.1, 0.1), OrthogonalRegularizer(0.1), GroupLasso(0.1)]
)
def test_low_precision_inputs_accumulate_in_float32(reg, dtype):
    x = normal((8, 6), seed=2).astype(np.float32)
    xd = jnp.asarray(x, dtype)
    value = reg(xd)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, reg(xd.astype(jnp.float32)), rtol=1e-6)
    g = jax.grad(reg)(xd)
    assert g.dtype == dtype
    assert np.all(np.isfinite(np.asarray(g, np.float32)))


def test_float16_sums_do_not_overflow():
    x = jnp.full((64, 64), 100.0, jnp.float16)  # sum of squares 4.1e7 > float16 max
    np.testing.assert_allclose(L2(1.0)(x), 4096 * 1e4, rtol=1e-6)


@pytest.mark.parametrize(
    ("reg", "x"),
    [
        (OrthogonalRegularizer(1.0, "rows"), jnp.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])),
        (OrthogonalRegularizer(1.0, "columns"), jnp.array([[1.0, 0.0, 2.0], [3.0, 0.0, 1.0]])),
        (OrthogonalRegularizer(1.0), jnp.zeros((3, 3))),
        (GroupLasso(1.0), jnp.array([[1.0, 0.0], [2.0, 0.0]])),
        (GroupLasso(1.0), jnp.zeros((3, 3))),
        (L1(1.0), jnp.zeros(3)),
    ],
)
def test_no_nan_value_or_gradient_at_zero_rows_columns_groups(reg, x):
    assert np.isfinite(float(reg(x)))
    g = np.asarray(jax.grad(reg)(x))
    assert np.all(np.isfinite(g))


def test_orthogonal_zero_row_counts_as_orthogonal():
    x = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]], np.float32)
    np.testing.assert_allclose(
        OrthogonalRegularizer(1.0)(jnp.asarray(x)), ref_orthogonal(x, 1.0, "rows"), rtol=1e-6
    )


def test_group_lasso_gradient_is_the_unit_group_direction():
    x = jnp.array([[3.0, 0.0], [4.0, 0.0]])
    np.testing.assert_allclose(jax.grad(GroupLasso(2.0))(x), [[1.2, 0.0], [1.6, 0.0]], rtol=1e-6)


def test_call_on_a_pytree_sums_the_floating_leaves():
    tree = {"a": jnp.ones((2, 2)), "b": [jnp.full(3, -2.0)], "step": jnp.array(7, jnp.int32)}
    assert float(L1(0.5)(tree)) == 0.5 * (4 + 6)
    assert float(L1(0.5)({"step": jnp.array(1, jnp.int32)})) == 0.0
    assert float(L2(1.0)(3.0)) == 9.0


def test_integer_array_is_a_type_error():
    with pytest.raises(
        TypeError, match="L1 acts on floating-point arrays; got an array of dtype int32"
    ):
        L1()(jnp.arange(3))


def test_base_regularizer_cannot_be_built_and_plain_subclass_works():
    with pytest.raises(TypeError, match=r"Regularizer .*defines no __call__\(self, x\)"):
        Regularizer()

    class Cubes(Regularizer):
        def __call__(self, x):
            return jnp.sum(x**3)

    assert float(Cubes()({"a": jnp.full(2, 2.0), "b": jnp.ones(1)})) == 17.0
    assert Cubes.prox is None


def test_jit_and_vmap():
    x = jnp.asarray(normal((5, 4)), jnp.float32)
    for reg in (L1(0.1), L2(0.2), OrthogonalRegularizer(0.1), GroupLasso(0.3)):
        np.testing.assert_allclose(jax.jit(reg)(x), reg(x), rtol=1e-6)
    batch = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(jax.vmap(L1(1.0))(batch), [L1(1.0)(x), L1(1.0)(2 * x)], rtol=1e-6)


# --- Proximal operators ----------------------------------------------------------------------


def test_l1_prox_is_soft_thresholding_with_exact_zeros():
    x = jnp.array([-1.0, -0.3, -0.2, 0.0, 0.1, 0.3, 2.0])
    y = L1(1.0).prox(x, 0.3)
    np.testing.assert_allclose(y, [-0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 1.7], rtol=1e-6)
    assert np.all(np.asarray(y)[1:6] == 0.0)


def test_l2_prox_is_shrinkage():
    x = jnp.array([[1.0, -2.0], [0.5, 4.0]])
    np.testing.assert_allclose(L2(0.5).prox(x, 0.1), np.asarray(x) / (1 + 2 * 0.1 * 0.5), rtol=1e-6)


def test_l1l2_prox_is_the_elastic_net():
    x = np.array([-1.0, -0.05, 0.5, 3.0])
    y = L1L2(l1=0.2, l2=0.5).prox(jnp.asarray(x, jnp.float32), 0.5)
    expected = np.sign(x) * np.maximum(np.abs(x) - 0.1, 0) / (1 + 2 * 0.5 * 0.5)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert float(y[1]) == 0.0


def test_group_lasso_prox_zeros_whole_groups():
    kernel = np.array([[3.0, 0.1, 1.0], [4.0, -0.1, 1.0]], np.float32)  # norms 5, .14, 1.41
    y = np.asarray(GroupLasso(1.0).prox(jnp.asarray(kernel), 1.0))
    np.testing.assert_allclose(y[:, 0], kernel[:, 0] * (1 - 1 / 5), rtol=1e-6)
    assert np.all(y[:, 1] == 0.0)
    np.testing.assert_allclose(y[:, 2], kernel[:, 2] * (1 - 1 / np.sqrt(2)), rtol=1e-6)
    # axis=1: rows are the groups.
    rows = np.asarray(GroupLasso(1.0, axis=1).prox(jnp.asarray(kernel.T), 1.0))
    assert np.all(rows[1] == 0.0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reg", WITH_PROX, ids=repr)
def test_prox_keeps_shape_and_dtype_and_is_jittable(reg, dtype):
    x = jnp.asarray(normal((4, 3)), dtype)
    y = jax.jit(reg.prox)(x, jnp.float32(0.1))
    assert y.shape == x.shape and y.dtype == dtype


def test_orthogonal_has_no_prox():
    assert OrthogonalRegularizer.prox is None


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(np.float32, (3, 4), elements=st.floats(-3, 3, width=32)),
    step=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**16),
)
def test_prox_minimises_the_proximal_objective(x, step, seed):
    rng = np.random.default_rng(seed)
    for reg in WITH_PROX:
        z = np.asarray(reg.prox(jnp.asarray(x), step), np.float64)

        def objective(v, reg=reg):
            return 0.5 * np.sum((v - x.astype(np.float64)) ** 2) + step * float(
                reg(jnp.asarray(v, jnp.float32))
            )

        best = objective(z)
        for scale in (1e-1, 1e-2):
            other = z + scale * rng.normal(size=z.shape)
            assert best <= objective(other) + 1e-4


# --- Property tests --------------------------------------------------------------------------

_magnitudes = st.one_of(st.just(0.0), st.floats(1e-2, 1e2))
_entries = st.builds(lambda m, s: m * s, _magnitudes, st.sampled_from([-1.0, 1.0]))
_matrices = hnp.arrays(np.float32, st.sampled_from([(3, 4), (5, 2), (6,)]), elements=_entries)
_scales = st.one_of(st.floats(-10, -0.1), st.floats(0.1, 10))


@settings(max_examples=25, deadline=None)
@given(x=_matrices, c=_scales)
def test_properties_nonnegative_zero_at_zero_and_homogeneous(x, c):
    xs = jnp.asarray(x)
    scaled = jnp.asarray(np.float32(c) * x)
    c32 = float(np.float32(c))
    for reg, degree in [(L1(0.3), 1), (GroupLasso(0.3), 1), (L2(0.3), 2), (L1L2(0.3, 0.0), 1)]:
        assert float(reg(xs)) >= 0.0
        assert float(reg(jnp.zeros_like(xs))) == 0.0
        np.testing.assert_allclose(reg(scaled), abs(c32) ** degree * reg(xs), rtol=1e-5, atol=0)
    if x.ndim == 2:
        reg = OrthogonalRegularizer(0.3)
        value = float(reg(xs))
        assert 0.0 <= value <= 0.3 * (1 + 1e-6)
        assert float(reg(jnp.zeros_like(xs))) == 0.0
        np.testing.assert_allclose(reg(scaled), value, rtol=1e-5, atol=1e-7)  # degree 0


# --- Validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [L1, L2])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), -np.float32(1.0)])
def test_factor_must_be_finite_and_nonnegative(cls, bad):
    name = cls.__name__.lower()
    problem = "finite" if not np.isfinite(bad) else ">= 0"
    with pytest.raises(ValueError, match=re.escape(f"{name} must be {problem}, got {bad!r}.")):
        cls(bad)


@pytest.mark.parametrize("bad", [True, "0.1", None, [0.1], np.ones(2), 1j])
def test_factor_must_be_a_real_scalar(bad):
    msg = f"l2 must be a real number, got {bad!r}."
    with pytest.raises(ValueError, match=re.escape(msg)):
        L1L2(l1=0.1, l2=bad)


def test_factor_error_names_the_argument():
    with pytest.raises(ValueError, match=re.escape("l1 must be >= 0, got -1.")):
        L1L2(l1=-1, l2=0.5)
    with pytest.raises(ValueError, match=re.escape("factor must be >= 0, got -2.")):
        OrthogonalRegularizer(factor=-2)
    with pytest.raises(ValueError, match=re.escape("factor must be finite, got inf.")):
        GroupLasso(factor=float("inf"))


def test_a_traced_factor_is_rejected_with_a_clear_message():
    msg = "l2 must be a concrete number when the object is built, got a traced value"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jax.jit(lambda f: L2(f)(jnp.ones(2)))(0.5)


def test_numpy_and_0d_factors_are_accepted():
    assert L1(np.float64(0.5)).l1 == 0.5
    assert L2(np.int64(2)).l2 == 2.0
    assert L1(np.array(0.25)).l1 == 0.25
    assert L2(jnp.float32(0.5)).l2 == 0.5
    assert L1(0).l1 == 0.0


def test_orthogonal_mode_validation():
    msg = "mode must be 'rows' or 'columns', got "
    with pytest.raises(ValueError, match=re.escape(msg + "'diag'.")):
        OrthogonalRegularizer(mode="diag")
    with pytest.raises(ValueError, match=re.escape(msg + "None.")):
        OrthogonalRegularizer(mode=None)


def test_orthogonal_rank_error_names_the_shape():
    msg = "OrthogonalRegularizer needs a rank-2 parameter; parameter '<array>' has shape (4, 4, 4)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        OrthogonalRegularizer(0.1)(jnp.ones((4, 4, 4)))
    msg = "parameter 'dense/bias' has shape (3,) (rank 1)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        OrthogonalRegularizer(0.1).check((3,), "dense/bias")


def test_group_lasso_axis_validation():
    msg = "axis must be an int, a non-empty list/tuple of ints, or None, got "
    for bad in ("0", [], [0, "1"], 1.0, True):
        with pytest.raises(ValueError, match=re.escape(msg + repr(bad))):
            GroupLasso(axis=bad)
    msg = "GroupLasso axis=2: axis 2 is out of range for parameter 'dense/kernel' of shape (3, 4)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        GroupLasso(axis=2).check((3, 4), "dense/kernel")
    msg = "GroupLasso axis=[0, -2] names axis 0 twice for parameter '<array>' of shape (3, 4)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        GroupLasso(axis=[0, -2])(jnp.ones((3, 4)))
    msg = "axis 0 is out of range for parameter '<array>' of shape () (rank 0)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        GroupLasso().prox(jnp.float32(1.0), 0.1)


# --- Configs, equality, registry ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reg", "config"),
    [
        (L1(0.01), {"l1": 0.01}),
        (L2(), {"l2": 0.01}),
        (L1L2(l1=1e-5, l2=1e-4), {"l1": 1e-5, "l2": 1e-4}),
        (L1L2(), {"l1": 0.0, "l2": 0.0}),
        (OrthogonalRegularizer(0.1, "columns"), {"factor": 0.1, "mode": "columns"}),
        (GroupLasso(0.3, axis=(0, 1, 2)), {"factor": 0.3, "axis": [0, 1, 2]}),
        (GroupLasso(), {"factor": 0.01, "axis": 0}),
    ],
)
def test_config_keeps_the_exact_python_floats_and_round_trips(reg, config):
    assert reg.get_config() == config
    assert type(reg).from_config(reg.get_config()) == reg
    payload = json.loads(json.dumps(regularizers.serialize(reg)))
    assert payload == {"class_name": type(reg).__name__, "config": config}
    back = regularizers.deserialize(payload)
    assert back == reg and type(back) is type(reg)
    assert regularizers.get(payload) == reg


def test_repr_eq_hash():
    assert repr(L1L2(l1=0.1, l2=0.2)) == "L1L2(l1=0.1, l2=0.2)"
    assert repr(GroupLasso(axis=[0, 1])) == "GroupLasso(factor=0.01, axis=[0, 1])"
    assert L1(0.1) == L1(0.1) and L1(0.1) != L1(0.2) and L1(0.1) != L2(0.1)
    assert hash(L2(0.5)) == hash(L2(0.5))
    assert len({L1(0.1), L1(0.1), L2(0.1)}) == 2


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        ("l1", L1(0.01)),
        ("l2", L2(0.01)),
        ("l1_l2", L1L2(l1=0.01, l2=0.01)),
        ("orthogonal_regularizer", OrthogonalRegularizer(0.01, "rows")),
        ("group_lasso", GroupLasso(0.01, 0)),
        ("L1", L1(0.01)),
        ("L1L2", L1L2(0.0, 0.0)),
        ("OrthogonalRegularizer", OrthogonalRegularizer()),
        ("GroupLasso", GroupLasso()),
    ],
)
def test_get_by_name(identifier, expected):
    got = regularizers.get(identifier)
    assert type(got) is type(expected) and got == expected
    assert regularizers.deserialize(identifier) == expected


def test_get_passes_objects_and_callables_through():
    reg = L1(0.3)
    assert regularizers.get(reg) is reg
    assert regularizers.get(None) is None

    def fn(x):
        return jnp.sum(x)

    assert regularizers.get(fn) is fn


def test_aliases_are_the_classes():
    assert regularizers.l1 is L1 and regularizers.l2 is L2 and regularizers.l1_l2 is L1L2
    assert regularizers.orthogonal_regularizer is OrthogonalRegularizer
    assert regularizers.group_lasso is GroupLasso
    assert regularizers.l1_l2() == L1L2(0.0, 0.0)


def test_unknown_identifier_names_it_and_lists_valid_names():
    with pytest.raises(ValueError) as info:
        regularizers.get("l1l2")
    match = re.fullmatch(
        r"Unknown regularizer identifier 'l1l2'\. Valid names: (.*); or register a custom class "
        r"with jaxcons\.regularizers\.register\.",
        str(info.value),
    )
    assert match is not None, str(info.value)
    builtins = {
        "GroupLasso",
        "L1",
        "L1L2",
        "L2",
        "OrthogonalRegularizer",
        "group_lasso",
        "l1",
        "l1_l2",
        "l2",
        "orthogonal_regularizer",
    }
    assert builtins <= set(match.group(1).split(", "))
    with pytest.raises(ValueError, match=re.escape("Unknown regularizer identifier 'Nope'.")):
        regularizers.deserialize({"class_name": "Nope", "config": {}})


def test_get_type_errors():
    with pytest.raises(TypeError, match=re.escape("got the class L1; call it first: L1().")):
        regularizers.get(L1)
    with pytest.raises(TypeError, match="Could not interpret regularizer identifier 3"):
        regularizers.get(3)


def test_serialize_errors():
    with pytest.raises(ValueError, match="only Regularizer subclasses can be serialized"):
        regularizers.serialize(lambda x: jnp.sum(x))

    class Unregistered(Regularizer):
        def __call__(self, x):
            return jnp.sum(x)

    with pytest.raises(ValueError, match="Unregistered is not registered"):
        regularizers.serialize(Unregistered())
    with pytest.raises(ValueError, match="must be a dict with 'class_name' and 'config' keys"):
        regularizers.deserialize({"config": {}})


@regularizers.register
class ScaledSquares(Regularizer):
    """The Keras documentation's ``L2Regularizer`` custom class."""

    def __init__(self, l2: float = 0.0):
        self.l2 = l2

    def __call__(self, x):
        return self.l2 * jnp.sum(jnp.square(x))

    def get_config(self):
        return {"l2": float(self.l2)}


def test_custom_registered_regularizer_round_trips():
    reg = ScaledSquares(0.5)
    assert float(reg(jnp.ones((5, 5)))) == 12.5
    payload = json.loads(json.dumps(regularizers.serialize(reg)))
    assert payload == {"class_name": "ScaledSquares", "config": {"l2": 0.5}}
    assert regularizers.get(payload) == reg
    assert regularizers.get("ScaledSquares") == ScaledSquares(0.0)


def test_register_rejects_non_regularizers_and_clashes():
    with pytest.raises(TypeError, match="Only subclasses of Regularizer can be registered"):
        regularizers.register(int)
    with pytest.raises(ValueError, match="'l1' is a built-in regularizer shortcut name"):

        @regularizers.register(name="l1")
        class Other(Regularizer):
            pass
