"""Norms that stay finite at zero, and the dtype they accumulate in."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["accumulation_dtype", "safe_norm"]


def accumulation_dtype(dtype: Any, *others: Any) -> np.dtype:
    """The dtype norms and penalties are computed in: ``dtype`` for floats of >= 32 bits,
    float32 otherwise (bfloat16 and float16 parameters are never summed in their own dtype).
    With several dtypes (a parameter and its update), the widest of their results."""
    if others:
        return max((accumulation_dtype(d) for d in (dtype, *others)), key=lambda d: d.itemsize)
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits >= 32:
        return dtype
    return np.dtype(jnp.float32)


def safe_norm(x: jax.Array, axes: Any) -> jax.Array:
    """Euclidean norms of ``x`` over ``axes`` (kept as size-1 dimensions).

    Exactly 0 for zero vectors, with a zero (not NaN) gradient there: both the ``sqrt`` and its
    argument are guarded (the "double where").
    """
    sq = jnp.sum(jnp.square(x), axis=axes, keepdims=True)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1)), 0)


def inward_bounds(
    lower: float | None, upper: float | None, dtype: Any
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The box ``[lower, upper]`` as scalars of ``dtype``, rounded inward for narrow floats.

    For bfloat16 and float16 a bound that the dtype cannot represent is rounded towards the
    inside of the box (``0.3`` becomes the bf16 just below it), so a clipped value never lies
    outside the box in exact arithmetic. Wider dtypes round to nearest, as ``jnp.clip`` does.
    """
    dtype = np.dtype(dtype)
    narrow = jnp.finfo(dtype).bits < 32

    def cast(bound: float | None, toward: float) -> np.ndarray | None:
        if bound is None:
            return None
        value = np.asarray(bound, dtype)
        if narrow and float(value) != bound and (float(value) - bound) * toward < 0:
            value = np.nextafter(value, np.asarray(toward * np.inf, dtype))
        return value

    return cast(lower, 1.0), cast(upper, -1.0)
