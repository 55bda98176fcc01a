"""The Stiefel manifold's numerics: Gram matrices of a kernel on its own shape, Newton-Schulz
steps towards the polar factor, and the projection onto the tangent space."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxcons._src.linalg import HIGHEST, is_explicit
from jaxcons._src.numerics import accumulation_dtype


def _lead(w: jax.Array) -> tuple[int, ...]:
    return tuple(range(w.ndim - 1))


def _tall(shape: tuple[int, ...]) -> bool:
    """Whether the ``(rows, out)`` view has at least as many rows as columns (orthonormal
    columns); otherwise its rows are orthonormal."""
    return math.prod(shape[:-1]) >= shape[-1]


def gram(x: jax.Array) -> jax.Array:
    """The smaller Gram matrix of the ``(rows, out)`` view: ``X^T X`` (``(out, out)``) for a
    tall view, ``X X^T`` (shaped ``shape[:-1] * 2``) for a wide one.

    A contraction of the kernel with itself on its own shape (no reshape), so a kernel sharded
    along the contracted axes is reduced where it lives: the result is an all-reduce of the
    small Gram matrix. On an Explicit mesh the Gram matrix is replicated.
    """
    out_sharding = P() if is_explicit(x) else None
    axes = _lead(x) if _tall(x.shape) else (x.ndim - 1,)
    return jnp.tensordot(x, x, axes=(axes, axes), precision=HIGHEST, out_sharding=out_sharding)


def times_gram(x: jax.Array, a: jax.Array) -> jax.Array:
    """``X A`` (tall view, ``A`` of ``(out, out)``) or ``A X`` (wide view), on ``x``'s shape and
    sharding."""
    out_sharding = jax.typeof(x).sharding.spec if is_explicit(x) else None
    if _tall(x.shape):
        return jnp.tensordot(x, a, axes=1, precision=HIGHEST, out_sharding=out_sharding)
    n = x.ndim - 1
    return jnp.tensordot(a, x, axes=n, precision=HIGHEST, out_sharding=out_sharding)


def identity_like_gram(x: jax.Array) -> jax.Array:
    if _tall(x.shape):
        return jnp.eye(x.shape[-1], dtype=x.dtype)
    rows = math.prod(x.shape[:-1])
    return jnp.eye(rows, dtype=x.dtype).reshape(x.shape[:-1] * 2)


def gram_deviation(w: jax.Array, scale: float) -> jax.Array:
    """``max |G / scale^2 - I|`` for the smaller Gram matrix ``G`` of ``w``: how far its columns
    (rows, for a wide kernel) are from orthonormal, times ``scale``."""
    x = w.astype(accumulation_dtype(w.dtype)) / scale
    return jnp.max(jnp.abs(gram(x) - identity_like_gram(x)))


# `newton_schulz` divides the kernel by its estimated largest singular value (over ``scale``)
# beyond this: the iteration diverges above sqrt(3), and the estimate is a lower bound.
NEWTON_SCHULZ_GUARD = 1.5


def newton_schulz(
    w: jax.Array, scale: float, n_iterations: int, sigma: jax.Array | None = None
) -> jax.Array:
    """``n_iterations`` Newton-Schulz (Bjorck-Bowie) steps towards ``scale`` times the polar
    factor of ``w``.

    .. math:: X_0 = W / s, \\qquad X_{k+1} = \\tfrac12 X_k (3 I - X_k^\\top X_k), \\qquad
       P(W) \\approx s X_n

    (``X_{k+1} = (3 I - X_k X_k^\\top) X_k / 2`` for a wide kernel: the same map, with the
    smaller Gram matrix). Each singular value follows ``x -> x (3 - x^2) / 2``: an error
    ``e = x - 1`` becomes about ``-1.5 e^2``, so a kernel that was on the set one step ago
    converges in a few steps. The iteration converges for singular values of ``W / s`` in
    ``(0, sqrt(3))`` and diverges above: given ``sigma``, an estimate of the largest singular
    value of ``w``, ``X_0`` is divided by ``sigma / s`` where that exceeds
    `NEWTON_SCHULZ_GUARD` (the polar factor is unchanged; the singular values then approach 1
    from below). Only matrix products: two per step, on the kernel's own shape.
    """
    x = w.astype(accumulation_dtype(w.dtype)) / scale
    if sigma is not None:
        ratio = sigma.astype(x.dtype) / scale
        large = ratio > NEWTON_SCHULZ_GUARD
        x = x / jnp.where(large, ratio, 1)
    for _ in range(n_iterations):
        x = 1.5 * x - 0.5 * times_gram(x, gram(x))
    return (scale * x).astype(w.dtype)


def stiefel_tangent(w: jax.Array, g: jax.Array, scale: float) -> jax.Array:
    """The orthogonal projection of ``g`` onto the tangent space at ``w`` of the scaled Stiefel
    manifold ``{W : W^T W = s^2 I}`` (``W W^T = s^2 I`` for a wide kernel).

    .. math:: P_W(G) = G - W \\operatorname{sym}(W^\\top G) / s^2, \\qquad
       \\operatorname{sym}(A) = \\tfrac12 (A + A^\\top)

    The tangent space is ``{Z : W^T Z + Z^T W = 0}`` and the normal space
    ``{W S : S symmetric}``: with ``W^T W = s^2 I``, ``W^T P_W(G)`` is the skew part of
    ``W^T G`` and ``G - P_W(G)`` lies in the normal space. For a wide kernel
    ``P_W(G) = G - \\operatorname{sym}(G W^\\top) W / s^2``.
    """
    dtype = accumulation_dtype(w.dtype, g.dtype)
    x, y = w.astype(dtype), g.astype(dtype)
    tall = _tall(w.shape)
    out_sharding = P() if is_explicit(x) else None
    axes = _lead(x) if tall else (x.ndim - 1,)
    cross = jnp.tensordot(x, y, axes=(axes, axes), precision=HIGHEST, out_sharding=out_sharding)
    n = cross.ndim // 2
    perm = tuple(range(n, 2 * n)) + tuple(range(n))
    sym = (cross + jnp.transpose(cross, perm)) / (2 * scale * scale)
    return (y - times_gram(x, sym)).astype(g.dtype)
