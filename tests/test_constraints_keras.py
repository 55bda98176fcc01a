"""Parity with Keras 3 (JAX backend) for MaxNorm, MinMaxNorm, NonNeg and UnitNorm.

Keras rescales by ``desired / (n + 1e-7)``, jaxcons by ``desired / n`` (and not at all when a
vector is feasible), so they differ by Keras's epsilon, a relative ``1e-7 / n``: that gap is
checked for every norm, and ``rtol=1e-5`` where norms are ``>= 1.1e-2`` (at ``n = 1e-2``
exactly the epsilon alone is ``1e-5``, and float32 rounding tips it over). jaxcons is also
compared with the exact value (NumPy, float64) everywhere.
"""

from __future__ import annotations

import keras  # KERAS_BACKEND=jax is set by the root conftest.py.
import numpy as np
import pytest

from jaxcons.constraints import MaxNorm, MinMaxNorm, NonNeg, UnitNorm

pytestmark = pytest.mark.keras

SHAPES_AND_AXES = [
    ((12,), 0),
    ((7, 5), 0),
    ((7, 5), 1),
    ((7, 5), -1),
    ((7, 5), [0, 1]),
    ((3, 4, 6), [-1, -3]),
    ((3, 3, 4, 6), [0, 1, 2]),
    ((3, 3, 4, 6), -1),
    ((3, 3, 4, 6), (1, 2)),
]

# (ours, Keras's, the exact new norm as a function of the old norm n), each given the axis.
CASES = {
    "max_norm_2": (
        lambda axis: MaxNorm(2.0, axis),
        lambda axis: keras.constraints.MaxNorm(2.0, axis),
        lambda n: np.minimum(n, 2.0),
    ),
    "max_norm_0.3": (
        lambda axis: MaxNorm(0.3, axis),
        lambda axis: keras.constraints.MaxNorm(0.3, axis),
        lambda n: np.minimum(n, 0.3),
    ),
    "min_max_norm": (
        lambda axis: MinMaxNorm(0.5, 1.5, 1.0, axis),
        lambda axis: keras.constraints.MinMaxNorm(0.5, 1.5, 1.0, axis),
        lambda n: np.clip(n, 0.5, 1.5),
    ),
    "min_max_norm_rate": (
        lambda axis: MinMaxNorm(0.5, 1.5, 0.3, axis),
        lambda axis: keras.constraints.MinMaxNorm(0.5, 1.5, 0.3, axis),
        lambda n: 0.3 * np.clip(n, 0.5, 1.5) + 0.7 * n,
    ),
    "unit_norm": (
        lambda axis: UnitNorm(axis),
        lambda axis: keras.constraints.UnitNorm(axis),
        lambda n: np.ones_like(n),
    ),
}


def random_tensor(shape: tuple[int, ...], axis, seed: int) -> np.ndarray:
    """Normal entries, the vectors along ``axis`` scaled by factors spread over [1e-4, 1e2]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    factor_shape = [1 if (d in axes or d - len(shape) in axes) else s for d, s in enumerate(shape)]
    count = int(np.prod(factor_shape))
    factors = np.geomspace(1e-4, 1e2, count) if count > 1 else np.ones(1)
    return (w * rng.permutation(factors).reshape(factor_shape)).astype(np.float32)


def np_norms(w: np.ndarray, axis) -> np.ndarray:
    w = w.astype(np.float64)
    return np.sqrt(np.sum(w * w, axis=tuple(np.atleast_1d(axis)), keepdims=True))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AND_AXES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
def test_norm_constraints_match_keras(case, shape, axis, seed):
    ours_factory, keras_factory, desired = CASES[case]
    w = random_tensor(shape, axis, seed)
    ours = np.asarray(ours_factory(axis)(w))
    theirs = np.asarray(keras_factory(axis)(w))
    assert ours.shape == theirs.shape == w.shape
    assert ours.dtype == theirs.dtype == np.float32
    n = np_norms(w, axis)
    big = np.broadcast_to(n >= 1.1e-2, w.shape)
    assert big.any()
    np.testing.assert_allclose(ours[big], theirs[big], rtol=1e-5, atol=0)
    # All norms: the gap is Keras's epsilon, a relative 1e-7 / n, plus float32 rounding.
    gap = np.abs(ours.astype(np.float64) / theirs - 1)
    np.testing.assert_array_less(gap, np.broadcast_to(1e-7 / n + 1e-6, w.shape))
    # Everywhere, small norms included (where Keras's epsilon dominates): the exact value.
    exact = w.astype(np.float64) * (desired(n) / n)
    np.testing.assert_allclose(ours, exact, rtol=2e-6, atol=0)


@pytest.mark.parametrize("shape", [(5,), (4, 6), (3, 3, 2, 4)])
def test_non_neg_matches_keras(shape):
    w = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    theirs = np.asarray(keras.constraints.NonNeg()(w))
    np.testing.assert_array_equal(np.asarray(NonNeg()(w)), theirs)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (MaxNorm(1.5, [0, 1, 2]), keras.constraints.MaxNorm(1.5, [0, 1, 2])),
        (MinMaxNorm(0.1, 2.0, 0.5, -1), keras.constraints.MinMaxNorm(0.1, 2.0, 0.5, -1)),
        (UnitNorm(1), keras.constraints.UnitNorm(1)),
        (NonNeg(), keras.constraints.NonNeg()),
    ],
    ids=lambda c: type(c).__name__,
)
def test_config_matches_keras(ours, theirs):
    assert ours.get_config() == theirs.get_config()
    rebuilt = type(theirs).from_config(ours.get_config())
    assert rebuilt.get_config() == ours.get_config()
    assert type(ours).from_config(theirs.get_config()) == ours


def test_default_configs_match_keras():
    for ours, theirs in [
        (MaxNorm(), keras.constraints.MaxNorm()),
        (MinMaxNorm(), keras.constraints.MinMaxNorm()),
        (UnitNorm(), keras.constraints.UnitNorm()),
    ]:
        assert ours.get_config() == theirs.get_config()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("max_norm", MaxNorm),
        ("min_max_norm", MinMaxNorm),
        ("non_neg", NonNeg),
        ("unit_norm", UnitNorm),
    ],
)
def test_shortcut_names_match_keras(name, cls):
    import jaxcons

    assert type(keras.constraints.get(name)).__name__ == cls.__name__
    assert type(jaxcons.constraints.get(name)) is cls


def test_feasible_vectors_keras_rescales_and_jaxcons_keeps():
    w = np.array([[0.3, 0.0], [0.4, 0.5]], np.float32)  # Column norms 0.5 and 0.5.
    theirs = np.asarray(keras.constraints.MaxNorm(1.0)(w))
    ours = np.asarray(MaxNorm(1.0)(w))
    assert not np.array_equal(theirs, w)  # Keras multiplies by n / (n + 1e-7).
    assert ours.tobytes() == w.tobytes()
