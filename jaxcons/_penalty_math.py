"""Pure math of the built-in regularizers: penalty values and proximal operators.

Every penalty accumulates in at least float32 (bf16/f16 inputs are upcast for the reduction,
f32 and f64 are kept) and returns a scalar of that dtype. Every proximal operator returns an
array of its input's shape and dtype. Zero rows, columns and groups give finite values and
gradients (the square roots and divisions are guarded on both sides of a ``where``).

References:
  Parikh and Boyd, "Proximal Algorithms", Foundations and Trends in Optimization 1(3), 2014.
  Yuan and Lin, "Model selection and estimation in regression with grouped variables",
  JRSS B 68(1), 2006.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxcons._numerics import accumulation_dtype, safe_norm

__all__ = [
    "add_penalties",
    "group_lasso_penalty",
    "l1_penalty",
    "l2_penalty",
    "orthogonal_penalty",
    "prox_group_lasso",
    "prox_l1_l2",
]

Axes = tuple[int, ...]


def add_penalties(values: Sequence[jax.typing.ArrayLike]) -> jax.Array:
    """Sums scalar penalties in the widest of their accumulation dtypes (0.0 in f32 if none).

    Explicit casts keep this valid under ``jax_numpy_dtype_promotion="strict"``.
    """
    arrays = [jnp.asarray(v) for v in values]
    dtype = max(
        (accumulation_dtype(a.dtype) for a in arrays),
        key=lambda d: d.itemsize,
        default=np.dtype(jnp.float32),
    )
    total = jnp.zeros((), dtype)
    for a in arrays:
        total = total + a.astype(dtype)
    return total


def _upcast(x: jax.Array) -> jax.Array:
    return x.astype(accumulation_dtype(x.dtype))


def l1_penalty(x: jax.Array, l1: float) -> jax.Array:
    """``l1 * sum(|x|)``."""
    return l1 * jnp.sum(jnp.abs(_upcast(x)))


def l2_penalty(x: jax.Array, l2: float) -> jax.Array:
    """``l2 * sum(x ** 2)``."""
    x = _upcast(x)
    return l2 * jnp.sum(x * x)


def _gram_sharding(x: jax.Array) -> P | None:
    """``P()`` for an array on an ``Explicit`` mesh (where a contraction of sharded operands
    must name its output sharding), ``None`` (the compiler decides) otherwise."""
    mesh = jax.typeof(x).sharding.mesh
    return P() if AxisType.Explicit in getattr(mesh, "axis_types", ()) else None


def orthogonal_penalty(x: jax.Array, factor: float, mode: Literal["rows", "columns"]) -> jax.Array:
    """``factor`` times the mean of ``|cos|`` over all pairs ``i < j`` of rows (or columns).

    .. math:: R(X) = \\frac{f}{\\binom{n}{2}} \\sum_{i < j}
       \\frac{|\\langle x_i, x_j \\rangle|}{\\|x_i\\| \\, \\|x_j\\|}

    A zero row (column) counts as orthogonal to every other one; with fewer than two rows
    (columns) there are no pairs and the penalty is 0 (Keras divides by zero and returns NaN).
    """
    v = _upcast(x)
    if mode == "columns":
        v = v.T
    n = v.shape[0]
    if n < 2:
        return jnp.zeros((), v.dtype)
    sq = jnp.sum(v * v, axis=1, keepdims=True)
    nonzero = sq > 0
    unit = jnp.where(nonzero, v * jax.lax.rsqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
    # Every pair of rows meets here: a kernel sharded along the rows is gathered (on an
    # Explicit mesh the contraction must be told so: the Gram matrix is replicated).
    gram = jnp.matmul(
        unit, unit.T, precision=jax.lax.Precision.HIGHEST, out_sharding=_gram_sharding(unit)
    )
    upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
    total = jnp.sum(jnp.where(upper, jnp.abs(gram), 0.0))
    return factor * total / (n * (n - 1) / 2)


def group_lasso_penalty(x: jax.Array, factor: float, axes: Axes) -> jax.Array:
    """``factor`` times the sum of the Euclidean norms taken over ``axes`` (one per group)."""
    return factor * jnp.sum(safe_norm(_upcast(x), axes))


def prox_l1_l2(x: jax.Array, step: jax.typing.ArrayLike, l1: float, l2: float) -> jax.Array:
    """The proximal operator of ``step * (l1 * sum|z| + l2 * sum z^2)`` (the elastic net).

    .. math:: \\operatorname{prox}(x) = \\frac{\\operatorname{sign}(x)
       \\max(|x| - s\\,\\ell_1, 0)}{1 + 2 s\\,\\ell_2}

    Soft-thresholding by ``step * l1`` gives exact zeros wherever ``|x| <= step * l1``; the
    shrinkage ``1 / (1 + 2 * step * l2)`` follows. A zero factor skips its part, so ``l1 = l2 =
    0`` returns ``x`` unchanged.
    """
    y = _upcast(x)
    s = jnp.asarray(step, y.dtype)
    if l1 != 0:
        t = s * l1
        y = jnp.where(jnp.abs(y) <= t, 0.0, y - jnp.sign(y) * t)
    if l2 != 0:
        y = y / (1.0 + 2.0 * l2 * s)
    return y.astype(x.dtype)


def prox_group_lasso(
    x: jax.Array, step: jax.typing.ArrayLike, factor: float, axes: Axes
) -> jax.Array:
    """The proximal operator of ``step * factor * sum_g ||z_g||``: block soft-thresholding.

    .. math:: \\operatorname{prox}(x)_g = \\max\\Big(0, 1 - \\frac{s f}{\\|x_g\\|}\\Big) x_g

    A group whose norm is at most ``step * factor`` becomes exactly zero as a whole.
    """
    y = _upcast(x)
    t = jnp.asarray(step, y.dtype) * factor
    norm = safe_norm(y, axes)
    keep = norm > t
    scale = jnp.where(keep, 1.0 - t / jnp.where(keep, norm, 1.0), 0.0)
    return (y * scale).astype(x.dtype)
