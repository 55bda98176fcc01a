"""Pure math of the matrix constraints: projections through the SVD or the eigendecomposition,
the polar factor and its Newton-Schulz iteration, and the tangent spaces of the Stiefel manifold.

Every function takes one kernel ``w`` and returns an array of its shape and dtype, computed in
at least float32 (`accumulation_dtype`). Kernels of rank > 2 are viewed as the matrix
``(prod(shape[:-1]), shape[-1])``, as `SpectralNorm` views them (`as_matrix`); `psd` is the
exception, acting on the last two axes and batched over the others.

Exactness: where the input already lies in the set, the projection returns it bit for bit,
through a `jnp.where` on a scalar (or per-matrix) predicate. The decompositions are fed a fixed
matrix with distinct singular values wherever their result is not used (zero or feasible
inputs), so values and gradients stay finite there: the derivative of `jnp.linalg.svd` and
`jnp.linalg.eigh` divides by differences of singular values (eigenvalues), and is undefined
where they coincide.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxcons._numerics import accumulation_dtype
from jaxcons._projections import as_matrix

__all__ = [
    "check_matrix",
    "clip_singular_values",
    "gram_deviation",
    "NEWTON_SCHULZ_GUARD",
    "newton_schulz",
    "nuclear_ball",
    "nuclear_norm",
    "polar",
    "project_psd",
    "prox_nuclear_norm",
    "stiefel_tangent",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def check_matrix(owner: str, shape: tuple[int, ...], path: str) -> None:
    """Raises ``ValueError`` for a parameter of rank < 2, naming ``owner``, the path and shape."""
    if len(shape) < 2:
        where = f"parameter {path!r}" if path else "the array"
        raise ValueError(
            f"{owner} acts on kernels of rank >= 2 (viewed as (prod(shape[:-1]), shape[-1]) "
            f"matrices), but {where} has shape {tuple(shape)}. Match only kernels "
            "(e.g. '**/kernel')."
        )


def _explicit(x: jax.Array) -> bool:
    """Whether ``x`` is traced on a mesh in ``Explicit`` axis mode (contractions over sharded
    axes must then name their output sharding)."""
    if not isinstance(x, jax.core.Tracer):
        return False
    return AxisType.Explicit in getattr(jax.typeof(x).sharding.mesh, "axis_types", ())


def _like(y: jax.Array, w: jax.Array) -> jax.Array:
    """``y`` (shape of ``w``) reshaped and cast like ``w``, resharded like it on an Explicit
    mesh (the decompositions run on the replicated matrix there)."""
    y = y.reshape(w.shape).astype(w.dtype)
    if _explicit(w):
        y = jax.sharding.reshard(y, jax.typeof(w).sharding.spec)
    return y


def _distinct_spectrum(shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """A fixed ``(..., rows, cols)`` matrix with singular values ``1, 2, ..., min(rows, cols)``."""
    rows, cols = shape[-2:]
    eye = jnp.eye(rows, cols, dtype=dtype) * jnp.arange(1, cols + 1, dtype=dtype)[None, :]
    return jnp.broadcast_to(eye, shape)


def _svd(matrix: jax.Array, unused: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The thin SVD of ``matrix``, or of a fixed well-conditioned matrix where ``unused``."""
    safe = jnp.where(unused, _distinct_spectrum(matrix.shape, matrix.dtype), matrix)
    return jnp.linalg.svd(safe, full_matrices=False)


def _compose(u: jax.Array, s: jax.Array, vh: jax.Array) -> jax.Array:
    """``u @ diag(s) @ vh`` in full precision."""
    return jnp.matmul(u * s[None, :], vh, precision=_HIGHEST)


def clip_singular_values(w: jax.Array, min_value: float, max_value: float) -> jax.Array:
    """The nearest matrix (Frobenius) whose singular values lie in ``[min_value, max_value]``.

    .. math:: P(W) = U \\operatorname{clip}(\\Sigma, a, b) V^\\top
       \\quad\\text{for } W = U \\Sigma V^\\top

    (von Neumann's trace inequality makes clipping the singular values optimal). ``w`` itself
    is returned when every singular value already lies in the interval.
    """
    matrix = as_matrix(w)
    zero = jnp.all(matrix == 0)
    u, s, vh = _svd(matrix, zero)
    # A zero matrix stays zero: with min_value > 0 it has no unique projection (see the class).
    keep = zero | jnp.all((s >= min_value) & (s <= max_value))
    projected = _compose(u, jnp.clip(s, min_value, max_value), vh)
    return jnp.where(keep, w, _like(projected, w))


def _simplex_threshold(s: jax.Array, radius: float) -> jax.Array:
    """``tau >= 0`` with ``sum(max(s - tau, 0)) == radius``, for ``s >= 0`` sorted descending
    with ``sum(s) > radius > 0`` (Duchi et al., 2008, on an already sorted vector)."""
    k = jnp.arange(1, s.shape[0] + 1, dtype=s.dtype)
    cumulative = jnp.cumsum(s)
    support = jnp.sum(s - (cumulative - radius) / k > 0)
    return (cumulative[support - 1] - radius) / support.astype(s.dtype)


def nuclear_ball(w: jax.Array, radius: float) -> jax.Array:
    """The projection onto the nuclear-norm ball ``sum(singular values) <= radius``.

    .. math:: P(W) = U \\max(\\Sigma - \\tau, 0) V^\\top, \\qquad
       \\tau \\text{ such that } \\textstyle\\sum_i \\max(\\sigma_i - \\tau, 0) = r

    The singular values are projected onto the L1 ball of radius ``r`` (they are non-negative,
    so this is the simplex threshold). ``w`` itself is returned when its nuclear norm is at
    most ``radius``.
    """
    matrix = as_matrix(w)
    zero = jnp.all(matrix == 0)
    u, s, vh = _svd(matrix, zero)
    feasible = zero | (jnp.sum(s) <= radius)
    tau = _simplex_threshold(s, radius)
    projected = _compose(u, jnp.maximum(s - tau, 0), vh)
    return jnp.where(feasible, w, _like(projected, w))


def nuclear_norm(x: jax.Array) -> jax.Array:
    """The sum of the singular values of ``x`` viewed as a matrix, in >= float32.

    Its gradient is ``U V^T`` (``diag(U^T dX V)`` needs no division by singular-value gaps,
    so it is finite everywhere; at a rank-deficient matrix it is one subgradient).
    """
    return jnp.sum(jnp.linalg.svd(as_matrix(x), compute_uv=False))


def prox_nuclear_norm(x: jax.Array, threshold: jax.typing.ArrayLike) -> jax.Array:
    """The proximal operator of ``threshold * ||.||_*``: singular-value soft thresholding.

    .. math:: \\operatorname{prox}(X) = U \\max(\\Sigma - t, 0) V^\\top

    Every singular value at most ``t`` becomes exactly zero, so the result has rank equal to
    the number of singular values above ``t`` (Cai, Candès and Shen, 2010).
    """
    matrix = as_matrix(x)
    zero = jnp.all(matrix == 0)
    u, s, vh = _svd(matrix, zero)
    t = jnp.asarray(threshold, matrix.dtype)
    projected = _compose(u, jnp.maximum(s - t, 0), vh)
    return jnp.where(zero, x, _like(projected, x))


def project_psd(w: jax.Array, min_eigenvalue: float) -> jax.Array:
    """The nearest symmetric matrix with eigenvalues ``>= min_eigenvalue``, over the last two
    axes (batched over the others).

    .. math:: P(W) = Q \\max(\\Lambda, c) Q^\\top \\quad\\text{for }
       \\tfrac12 (W + W^\\top) = Q \\Lambda Q^\\top

    Symmetrizing is the orthogonal projection onto symmetric matrices, which contain the set.
    Every matrix that is already exactly symmetric with eigenvalues ``>= c`` comes back bit
    for bit.
    """
    x = w.astype(accumulation_dtype(w.dtype))
    if _explicit(w):
        x = jax.sharding.reshard(x, P())
    sym = (x + jnp.swapaxes(x, -1, -2)) / 2
    zero = jnp.all(x == 0, axis=(-2, -1), keepdims=True)
    safe = jnp.where(zero, _distinct_spectrum(x.shape, x.dtype), sym)
    lam, q = jnp.linalg.eigh(safe, symmetrize_input=False)
    symmetric = jnp.all(x == jnp.swapaxes(x, -1, -2), axis=(-2, -1), keepdims=True)
    lam_min = jnp.min(lam, axis=-1)[..., None, None]
    feasible = symmetric & (zero & (min_eigenvalue <= 0) | ~zero & (lam_min >= min_eigenvalue))
    clipped = jnp.maximum(lam, min_eigenvalue)
    projected = jnp.matmul(q * clipped[..., None, :], jnp.swapaxes(q, -1, -2), precision=_HIGHEST)
    projected = (projected + jnp.swapaxes(projected, -1, -2)) / 2  # Exactly symmetric.
    # A zero matrix with min_eigenvalue > 0 projects to c * I.
    identity = min_eigenvalue * jnp.eye(x.shape[-1], dtype=x.dtype)
    projected = jnp.where(zero, identity, projected)
    return jnp.where(feasible, w, _like(projected, w))


def _lead(w: jax.Array) -> tuple[int, ...]:
    return tuple(range(w.ndim - 1))


def _tall(shape: tuple[int, ...]) -> bool:
    """Whether the ``(rows, out)`` view has at least as many rows as columns (orthonormal
    columns); otherwise its rows are orthonormal."""
    return math.prod(shape[:-1]) >= shape[-1]


def _gram(x: jax.Array) -> jax.Array:
    """The smaller Gram matrix of the ``(rows, out)`` view: ``X^T X`` (``(out, out)``) for a
    tall view, ``X X^T`` (shaped ``shape[:-1] * 2``) for a wide one.

    A contraction of the kernel with itself on its own shape (no reshape), so a kernel sharded
    along the contracted axes is reduced where it lives: the result is an all-reduce of the
    small Gram matrix. On an Explicit mesh the Gram matrix is replicated.
    """
    out_sharding = P() if _explicit(x) else None
    axes = _lead(x) if _tall(x.shape) else (x.ndim - 1,)
    return jnp.tensordot(x, x, axes=(axes, axes), precision=_HIGHEST, out_sharding=out_sharding)


def _times_gram(x: jax.Array, a: jax.Array) -> jax.Array:
    """``X A`` (tall view, ``A`` of ``(out, out)``) or ``A X`` (wide view), on ``x``'s shape and
    sharding."""
    out_sharding = jax.typeof(x).sharding.spec if _explicit(x) else None
    if _tall(x.shape):
        return jnp.tensordot(x, a, axes=1, precision=_HIGHEST, out_sharding=out_sharding)
    n = x.ndim - 1
    return jnp.tensordot(a, x, axes=n, precision=_HIGHEST, out_sharding=out_sharding)


def _identity_like_gram(x: jax.Array) -> jax.Array:
    if _tall(x.shape):
        return jnp.eye(x.shape[-1], dtype=x.dtype)
    rows = math.prod(x.shape[:-1])
    return jnp.eye(rows, dtype=x.dtype).reshape(x.shape[:-1] * 2)


def gram_deviation(w: jax.Array, scale: float) -> jax.Array:
    """``max |G / scale^2 - I|`` for the smaller Gram matrix ``G`` of ``w``: how far its columns
    (rows, for a wide kernel) are from orthonormal, times ``scale``."""
    x = w.astype(accumulation_dtype(w.dtype)) / scale
    return jnp.max(jnp.abs(_gram(x) - _identity_like_gram(x)))


def polar(w: jax.Array, scale: float, tolerance: float) -> jax.Array:
    """``scale`` times the orthogonal polar factor of ``w``: the nearest matrix with orthonormal
    columns (rows, for a wide kernel), scaled.

    .. math:: P(W) = s\\, U V^\\top \\quad\\text{for } W = U \\Sigma V^\\top

    ``w`` itself is returned when `gram_deviation` is at most ``tolerance``; a zero kernel
    stays zero.
    """
    matrix = as_matrix(w)
    zero = jnp.all(matrix == 0)
    feasible = gram_deviation(w, scale) <= tolerance
    u, _, vh = _svd(matrix, zero | feasible)
    projected = scale * jnp.matmul(u, vh, precision=_HIGHEST)
    return jnp.where(feasible | zero, w, _like(projected, w))


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
        x = 1.5 * x - 0.5 * _times_gram(x, _gram(x))
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
    out_sharding = P() if _explicit(x) else None
    axes = _lead(x) if tall else (x.ndim - 1,)
    cross = jnp.tensordot(x, y, axes=(axes, axes), precision=_HIGHEST, out_sharding=out_sharding)
    n = cross.ndim // 2
    perm = tuple(range(n, 2 * n)) + tuple(range(n))
    sym = (cross + jnp.transpose(cross, perm)) / (2 * scale * scale)
    return (y - _times_gram(x, sym)).astype(g.dtype)
