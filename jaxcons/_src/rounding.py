"""Bounds on floating-point rounding error: unit roundoffs, Higham's ``gamma_k``, directed
rounding of scalars, exact scaling by powers of two.

Every function here returns an upper bound on an exact quantity from computed ones, under
IEEE round-to-nearest arithmetic (Higham, "Accuracy and Stability of Numerical Algorithms",
2nd ed., SIAM 2002, chapters 2 and 3).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def unit_roundoff(dtype: Any) -> float:
    """``u = 2^-p`` for a dtype of ``p`` significand bits: 2^-24 for float32."""
    return 2.0 ** -(np.finfo(dtype).nmant + 1)


def gamma(k: int, u: float) -> float:
    """Higham's ``gamma_k = k u / (1 - k u)``, ``inf`` where ``k u >= 1/2``: a sum of ``k``
    terms (or a dot product of length ``k``) computed in any order is within
    ``gamma_k * sum |terms|`` of the exact one (Higham, Accuracy and Stability of Numerical
    Algorithms, 2nd ed., Lemma 3.1 and eq. 3.5)."""
    ku = k * u
    return math.inf if ku >= 0.5 else ku / (1 - ku)


def up(x: jax.Array) -> jax.Array:
    """The next float above ``x``: an upper bound on the exact value of the rounded-to-nearest
    operation that produced ``x`` (one correctly rounded operation is off by at most half an
    ulp)."""
    return jnp.nextafter(x, jnp.asarray(jnp.inf, x.dtype))


def pow2(k: jax.Array, dtype: Any) -> jax.Array:
    """``2**k`` exactly, built from its bits, for an integer ``k`` clipped to the normal range of
    ``dtype`` (``jnp.ldexp`` goes through ``2.0 ** k``, whose accuracy is the backend's)."""
    info = np.finfo(dtype)
    itype = jnp.int32 if np.dtype(dtype).itemsize == 4 else jnp.int64
    k = jnp.minimum(jnp.maximum(k, info.minexp), info.maxexp - 1).astype(itype)
    bits = (k + (info.maxexp - 1)) << info.nmant
    return jax.lax.bitcast_convert_type(bits, dtype)


def times_pow2(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x * 2**k`` for an integer ``k`` with ``|k| <= 2 * maxexp``, in two exact steps (exact
    where neither step underflows or overflows)."""
    half = k // 2
    return x * pow2(half, x.dtype) * pow2(k - half, x.dtype)


def magnitude_bits(x: jax.Array) -> jax.Array:
    """The bits of ``|x|`` as integers (monotone in ``|x|``), read without floating-point
    arithmetic, so subnormal numbers are seen even where arithmetic flushes them to 0."""
    itype = jnp.int32 if x.dtype.itemsize == 4 else jnp.int64
    sign = np.iinfo(itype).max  # All bits but the sign bit.
    return jax.lax.bitcast_convert_type(x, itype) & sign


def sum_bound(total: jax.Array, length: int, u: float) -> jax.Array:
    """An upper bound on an exact sum of ``length`` nonnegative terms, each a correctly rounded
    product, whose computed sum (any order) is ``total``: the computed sum is at least
    ``(1 - gamma_{length+1})`` times the exact one, and ``1 / (1 - g) <= 1 + 2 g`` for
    ``g <= 1/2``."""
    return up(total * (1 + 2 * gamma(length + 1, u)))


def max_row_sum(a_abs: jax.Array, u: float) -> jax.Array:
    """An upper bound on the largest row sum of the nonnegative square matrix ``a_abs``, which
    bounds its spectral radius (and its spectral norm when it is symmetric)."""
    return sum_bound(jnp.max(jnp.sum(a_abs, axis=1)), a_abs.shape[1], u)
