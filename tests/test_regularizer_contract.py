"""The regularizer contract: every regularizer through the same checks, driven by one table.

Each row names a regularizer, the shape it is tried on, and an independent NumPy float64 oracle
of its penalty. The checks: the oracle's value; ``jit`` against eager; every floating dtype gives
a finite scalar in the accumulation dtype; the penalty is ``>= 0`` (true of every row); a pytree
call is the sum over its leaves; gradients are finite, at zero too; ``prox`` is the minimiser of
``1/2 |z - x|^2 + s R(z)`` (no perturbation of it does better, by the oracle), and
``serialize``/``deserialize`` round-trips. `test_the_table_covers_every_public_regularizer`
fails when a public class has no row.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcons
from jaxcons import regularizers

DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]


def _l1(f):
    return lambda x: f * np.sum(np.abs(x))


def _l2(f):
    return lambda x: f * np.sum(np.square(x))


def _group_lasso(f, axis):
    return lambda x: f * np.sum(np.sqrt(np.sum(np.square(x), axis=axis)))


def _nuclear(f):
    return lambda x: f * np.sum(np.linalg.svd(x.reshape(-1, x.shape[-1]), compute_uv=False))


def _orthogonal(f, mode):
    def oracle(x):
        v = x if mode == "rows" else x.T
        n = v.shape[0]
        norms = np.linalg.norm(v, axis=1)
        total = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                if norms[i] > 0 and norms[j] > 0:
                    total += abs(v[i] @ v[j]) / (norms[i] * norms[j])
        return f * total / (n * (n - 1) / 2)

    return oracle


class Cubes(jaxcons.Regularizer):
    """A custom subclass: the sum of |x|^3 (no prox)."""

    def __call__(self, x):
        return jnp.sum(jnp.abs(x) ** 3)


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    make: Callable[[], Any]
    shape: tuple[int, ...]
    oracle: Callable[[np.ndarray], float]
    serializable: bool = True
    builtin: bool = True  # Built-ins sum in the accumulation dtype (float32 for half types).


ROWS = [
    Row("l1", lambda: jaxcons.L1(0.05), (4, 3), _l1(0.05)),
    Row("l2", lambda: jaxcons.L2(0.1), (4, 3), _l2(0.1)),
    Row("l1_l2", lambda: jaxcons.L1L2(0.05, 0.1), (4, 3), lambda x: _l1(0.05)(x) + _l2(0.1)(x)),
    Row(
        "orthogonal_rows",
        lambda: jaxcons.OrthogonalRegularizer(0.3),
        (4, 3),
        _orthogonal(0.3, "rows"),
    ),
    Row(
        "orthogonal_columns",
        lambda: jaxcons.OrthogonalRegularizer(0.3, "columns"),
        (4, 3),
        _orthogonal(0.3, "columns"),
    ),
    Row("group_lasso", lambda: jaxcons.GroupLasso(0.2, axis=0), (4, 3), _group_lasso(0.2, 0)),
    Row(
        "group_lasso_conv",
        lambda: jaxcons.GroupLasso(0.2, axis=(0, 1, 2)),
        (3, 3, 2, 4),
        _group_lasso(0.2, (0, 1, 2)),
    ),
    Row("nuclear_norm", lambda: jaxcons.NuclearNorm(0.1), (4, 3), _nuclear(0.1)),
    Row(
        "nuclear_norm_per_head",
        lambda: jaxcons.NuclearNorm(0.1, batch_axes=1),
        (4, 2, 3),
        lambda x: sum(_nuclear(0.1)(x[:, h, :]) for h in range(x.shape[1])),
    ),
    Row(
        "custom_subclass",
        Cubes,
        (4, 3),
        lambda x: float(np.sum(np.abs(x) ** 3)),
        serializable=False,
        builtin=False,
    ),
]
param_rows = pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])


def _x(row, seed=0):
    return np.random.default_rng(seed).normal(size=row.shape)


def test_the_table_covers_every_public_regularizer():
    public = {
        n
        for n in regularizers.__all__
        if isinstance(getattr(regularizers, n), type) and n == getattr(regularizers, n).__name__
    } - {"Regularizer"}
    covered = {type(row.make()).__name__ for row in ROWS}
    missing = sorted(public - covered)
    assert not missing, f"add a Row for {missing} to ROWS in tests/test_regularizer_contract.py"


@param_rows
def test_value_matches_the_numpy_oracle(row):
    x = _x(row)
    got = row.make()(jnp.asarray(x, jnp.float32))
    want = row.oracle(np.asarray(np.float32(x), np.float64))
    np.testing.assert_allclose(float(got), want, rtol=2e-6, atol=1e-7)


@param_rows
def test_jit_matches_eager(row):
    x = jnp.asarray(_x(row), jnp.float32)
    r = row.make()
    np.testing.assert_allclose(float(jax.jit(r)(x)), float(r(x)), rtol=1e-6)


@param_rows
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_every_dtype_gives_a_finite_nonnegative_float32_scalar(row, dtype):
    value = row.make()(jnp.asarray(_x(row), dtype))
    assert value.shape == ()
    assert value.dtype == (jnp.float32 if row.builtin else dtype)
    assert np.isfinite(float(value)) and float(value) >= 0.0


@param_rows
def test_nonnegative_and_zero_at_zero(row):
    r = row.make()
    for seed in range(5):
        assert float(r(jnp.asarray(_x(row, seed), jnp.float32))) >= 0.0
    assert float(r(jnp.zeros(row.shape, jnp.float32))) == 0.0


@param_rows
def test_a_pytree_is_the_sum_over_its_leaves(row):
    r = row.make()
    a, b = jnp.asarray(_x(row, 1), jnp.float32), jnp.asarray(_x(row, 2), jnp.float32)
    tree = {"a": a, "b": [b], "step": jnp.asarray(3, jnp.int32)}
    np.testing.assert_allclose(float(r(tree)), float(r(a)) + float(r(b)), rtol=1e-6)


@param_rows
def test_gradients_are_finite_at_zero_and_elsewhere(row):
    r = row.make()
    for x in (jnp.zeros(row.shape, jnp.float32), jnp.asarray(_x(row), jnp.float32)):
        g = jax.grad(r)(x)
        assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))


PROX_ROWS = [row for row in ROWS if row.make().prox is not None]


def test_rows_without_prox_are_refused_by_proximal():
    for row in ROWS:
        if row in PROX_ROWS:
            continue
        params = {"w": jnp.ones(row.shape, jnp.float32)}
        with pytest.raises(ValueError, match=r"has no proximal operator \(prox\)"):
            jaxcons.proximal({"w": row.make()}, 0.1).init(params)
    assert len(PROX_ROWS) >= 6


@pytest.mark.parametrize("row", PROX_ROWS, ids=[r.id for r in PROX_ROWS])
@pytest.mark.parametrize("step", [0.1, 1.0])
def test_prox_minimises_the_proximal_objective(row, step):
    r = row.make()
    x = np.asarray(np.float32(_x(row) * 0.5), np.float64)
    z = np.asarray(r.prox(jnp.asarray(x, jnp.float32), step), np.float64)
    assert z.shape == x.shape

    def objective(v):
        return 0.5 * np.sum(np.square(v - x)) + step * row.oracle(v)

    best = objective(z)
    rng = np.random.default_rng(3)
    for scale in (1e-3, 1e-2, 1e-1):
        for _ in range(20):
            assert best <= objective(z + scale * rng.normal(size=z.shape)) + 1e-6


@param_rows
def test_serialize_round_trips(row):
    r = row.make()
    if not row.serializable:
        with pytest.raises(ValueError, match="is not registered"):
            regularizers.serialize(r)
        return
    config = regularizers.serialize(r)
    json.dumps(config)
    assert regularizers.deserialize(config) == r
    assert regularizers.get(config) == r
