"""A certified upper bound on the largest singular value of a kernel: a Gram matrix, Lanczos, and
a Cholesky factorization whose rounding is accounted for."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcons._src.linalg import (
    HIGHEST,
    initial_vector,
    is_explicit,
    like_batch_axes,
    matvec,
    normalize,
)
from jaxcons._src.matrix_stacks import ONE_MATRIX, MatrixStack, after
from jaxcons._src.numerics import accumulation_dtype
from jaxcons._src.rounding import (
    gamma,
    magnitude_bits,
    max_row_sum,
    sum_bound,
    times_pow2,
    unit_roundoff,
    up,
)


class SpectralBound(NamedTuple):
    """What `certified_spectral_bound` found (all scalars, in the kernel's compute dtype).

    Attributes:
      bound: a certified upper bound on the largest singular value ``sigma_max``.
      abs_norm: a certified upper bound on ``|| |W| ||_2`` (the spectral norm of the matrix of
        absolute values), which bounds the spectral norm of an entrywise relative perturbation
        of ``W``: rounding ``s W`` to a dtype of unit roundoff ``u`` moves ``sigma_max`` by at
        most ``u * s * abs_norm``.
    """

    bound: jax.Array
    abs_norm: jax.Array


def _mirror_upper(a: jax.Array) -> jax.Array:
    """``a``'s upper triangle mirrored below the diagonal: exactly symmetric, every entry one of
    ``a``'s (a computed product ``X^T X`` need not be symmetric bit for bit)."""
    n = a.shape[0]
    return jnp.where(jnp.triu(jnp.ones((n, n), bool)), a, a.T)


# How far inside the ball (relative, on sigma^2) the certificate of a kernel believed inside it
# is tried: room for the factorization's rounding margin, so that its success still proves
# sigma_max <= stop_below.
FEASIBLE_MARGIN = 2.0**-12


def _cholesky_bound(gram: jax.Array, tau: jax.Array, u: float) -> jax.Array:
    """An upper bound on ``lambda_max(gram)`` (exactly symmetric) if the Cholesky factorization
    of ``M = fl(tau I - gram)`` runs to completion, ``inf`` otherwise.

    If it completes, the computed factor satisfies ``L L^T = M + E`` with
    ``|E| <= gamma_{n+1} |L| |L^T|`` (Higham, Theorem 10.3), and ``M + E`` is positive
    semidefinite: ``lambda_max(gram) <= tau + ||E||_2 + u max_i m_ii`` (the diagonal of ``M``
    is rounded once, off-diagonal entries are exact). ``|| |L| |L^T| ||_2`` is bounded a
    posteriori by the smaller of ``||L||_F^2`` and ``|| |L| ||_1 || |L| ||_inf`` (its largest
    column and row sums): the second is far smaller when ``L`` is nearly diagonal, as for the
    Gram matrix of a random kernel, where ``||L||_F^2 = tr(M)`` grows like ``n tau``.
    """
    n = gram.shape[0]
    m = tau * jnp.eye(n, dtype=gram.dtype) - gram
    factor = jnp.tril(jax.lax.linalg.cholesky(m, symmetrize_input=False))
    completed = jnp.all(jnp.isfinite(factor))
    diagonal = jnp.diagonal(m)
    magnitude = jnp.abs(factor)
    frobenius = sum_bound(jnp.sum(jnp.square(magnitude)), n * n, u)
    sums = up(max_row_sum(magnitude, u) * max_row_sum(magnitude.T, u))
    margin = up(up(gamma(n + 1, u) * jnp.minimum(frobenius, sums)) + up(u * jnp.max(diagonal)))
    return jnp.where(completed & jnp.all(diagonal > 0), up(tau + margin), jnp.inf)


def _lanczos_top(a: jax.Array, v0: jax.Array, steps: int) -> jax.Array:
    """The largest Ritz value of the symmetric ``a``, after ``steps``
    Lanczos steps from the unit vector ``v0`` (with full reorthogonalization; a basis that
    becomes invariant is completed with zero vectors). In exact arithmetic the Ritz value is
    at most ``lambda_max(a)``; it converges much faster than power iteration on clustered
    spectra."""
    n = a.shape[0]
    k = min(steps, n)
    dtype = a.dtype
    small = 8 * n * unit_roundoff(dtype) * jnp.sqrt(jnp.sum(jnp.square(a)))

    index = jnp.arange(k)

    # Rows are read and written through masks, not indexing: under `jax.vmap` on an Explicit
    # mesh (a stack sharded along its batch axes) older jax cannot shard a scatter.
    def step(j: Any, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        basis, alphas, betas = carry
        v = jnp.sum(jnp.where((index == j)[:, None], basis, 0), axis=0)
        w = jnp.matmul(a, v, precision=HIGHEST)
        alphas = jnp.where(index == j, v @ w, alphas)
        for _ in range(2):  # Classical Gram-Schmidt, twice.
            w = w - jnp.matmul(basis.T, jnp.matmul(basis, w, precision=HIGHEST), precision=HIGHEST)
        beta = jnp.sqrt(jnp.sum(jnp.square(w)))
        keep = beta > small
        nxt = jnp.where(keep, w / jnp.where(keep, beta, 1), 0)
        last = j + 1 >= k
        basis = jnp.where(((index == j + 1) & ~last)[:, None], nxt[None, :], basis)
        betas = jnp.where(index == j, jnp.where(keep & ~last, beta, 0), betas)
        return basis, alphas, betas

    basis = jnp.where((index == 0)[:, None], v0[None, :], jnp.zeros((k, n), dtype))
    zeros = jnp.zeros((k,), dtype)
    basis, alphas, betas = jax.lax.fori_loop(0, k, step, (basis, zeros, zeros))
    off = betas[: k - 1]
    tridiagonal = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tridiagonal)[-1]


def _kernel_gram(x: jax.Array) -> tuple[jax.Array, int, bool]:
    """The smaller Gram matrix of the ``(rows, out)`` view of ``x`` (rank >= 2), as an exactly
    symmetric ``(n, n)`` matrix, the contraction length, and whether the view is tall.

    ``X^T X`` (``n = out``, contracting the leading axes) for a tall view, ``X X^T`` (``n =
    rows``, contracting the last axis) for a wide one, chosen by shape only, so every sharding
    gets the same numbers. A contraction of the kernel with itself on its own shape: a kernel
    sharded along the contracted axes is reduced where it lives (an all-reduce of the Gram
    matrix); one sharded along the other axis is gathered. On an Explicit mesh the Gram matrix
    is replicated.
    """
    rows, out = math.prod(x.shape[:-1]), x.shape[-1]
    tall = rows >= out
    axes = tuple(range(x.ndim - 1)) if tall else (x.ndim - 1,)
    gram = jnp.tensordot(
        x, x, axes=(axes, axes), precision=HIGHEST, out_sharding=P() if is_explicit(x) else None
    )
    n = out if tall else rows
    return _mirror_upper(gram.reshape(n, n)), (rows if tall else out), tall


def _abs_product_row_sum(a_abs: jax.Array, b_abs: jax.Array, tall: bool) -> jax.Array:
    """The largest row sum of ``|A|^T |B|`` (tall) or ``|A| |B|^T`` (wide), for nonnegative
    ``a_abs`` and ``b_abs`` of one kernel shape, computed as two matrix-vector products on that
    shape; with ``A = B = X``, an upper bound on ``|| |X| ||_2^2`` before rounding."""
    lead = tuple(range(a_abs.ndim - 1))
    if tall:
        r = jnp.sum(b_abs, axis=-1)
        return jnp.max(jnp.sum(a_abs * r[..., None], axis=lead))
    r = jnp.sum(b_abs, axis=lead)
    return jnp.max(jnp.sum(a_abs * r.reshape((1,) * len(lead) + r.shape), axis=-1))


# `_split_gram` multiplies its pieces in chunks of at most this many rows of the contraction:
# the shorter the sums, the more bits each exact piece may keep (float32: 7 at 1024).
_SPLIT_CHUNK = 1024


def _split_gram(xs: jax.Array, u: float, tiny: float) -> tuple[jax.Array, jax.Array]:
    """The smaller Gram matrix of ``xs`` (largest entry below 1), to about ``u`` relative, and
    a bound on its error, in four products; ``_kernel_gram``'s one product is off by up to
    ``gamma_m || |xs| ||_2^2``, which for a dense orthogonal matrix is ``0.64 n gamma_m`` of
    ``lambda_max``.

    ``xs`` is viewed as the ``(m, n)`` matrix ``X`` whose Gram matrix ``X^T X`` is wanted (the
    transpose of a wide view), and its ``m`` rows cut into ``c`` chunks of at most
    `_SPLIT_CHUNK` rows (zero rows pad the last). ``X = H + M + R``: ``H`` is ``X`` truncated to
    multiples of ``2^-k``, ``M`` the rest truncated to multiples of ``2^-2k``, with ``2k +
    log2(chunk) <= p`` (``p`` significand bits), so every partial sum of a chunk's ``H^T H``,
    ``H^T M`` and ``M^T M`` is a multiple of the smallest unit below ``chunk`` times the
    largest: they are exact in any summation order. With ``S = H + M``, ``X^T X = S^T S + R^T X
    + X^T R - R^T R``, and ``R^T R`` is positive semidefinite, so the sum over chunks of
    ``H^T H + (B + B^T) + M^T M + (C + C^T)``, ``B = H^T M``, ``C = fl(R^T X)``, has
    ``lambda_max(X^T X) <= lambda_max(A^) + ||E||_2``, where ``|E|`` is at most ``gamma_chunk
    (|R|^T |X| + |X|^T |R|) + 4 m eta`` (the rounded products) plus ``gamma_{6c}`` times the sum
    of the ``6c`` terms' absolute values (the additions, in any order).
    """
    rows, out = math.prod(xs.shape[:-1]), xs.shape[-1]
    x = xs.reshape(rows, out)
    if rows < out:
        x = x.T
    m, n = x.shape
    chunk = min(m, _SPLIT_CHUNK)
    count = -(-m // chunk)
    x = jnp.pad(x, ((0, count * chunk - m), (0, 0))).reshape(count, chunk, n)
    bits = np.finfo(xs.dtype).nmant + 1
    k = (bits - math.ceil(math.log2(max(chunk, 2)))) // 2
    high = jnp.trunc(x * 2.0**k) * 2.0**-k
    rest = x - high
    middle = jnp.trunc(rest * 2.0 ** (2 * k)) * 2.0 ** (-2 * k)
    low = rest - middle

    def product(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.einsum("cmi,cmj->cij", a, b, precision=HIGHEST)

    a, b, c, r = (
        product(high, high),
        product(high, middle),
        product(middle, middle),
        product(low, x),
    )
    bt, rt = jnp.swapaxes(b, 1, 2), jnp.swapaxes(r, 1, 2)
    gram = _mirror_upper(jnp.sum(((a + c) + (b + bt)) + (r + rt), axis=0))
    terms = ((jnp.abs(a) + jnp.abs(c)) + (jnp.abs(b) + jnp.abs(bt))) + (jnp.abs(r) + jnp.abs(rt))
    terms = sum_bound(max_row_sum(jnp.sum(terms, axis=0), u), 6 * count, u)
    additions = up(gamma(6 * count, u) * terms)
    low_abs, x_abs = jnp.abs(low).reshape(-1, n), jnp.abs(x).reshape(-1, n)
    cross = jnp.maximum(
        _abs_product_row_sum(low_abs, x_abs, True), _abs_product_row_sum(x_abs, low_abs, True)
    )
    # ||N + N^T||_2 <= max row sum of N + max row sum of N^T (N = |R|^T |X| >= 0).
    cross = up(2 * sum_bound(sum_bound(cross, n, u), count * chunk, u))
    product_error = up(up(gamma(chunk, u) * cross) + 2 * 2 * count * chunk * n * tiny)
    return gram, up(additions + product_error)


class _Prepared(NamedTuple):
    """One matrix's Gram matrix, shift and the scalars the bound is finished with."""

    gram: jax.Array
    estimate: jax.Array
    first: jax.Array
    gershgorin: jax.Array
    gram_error: jax.Array
    exponent: jax.Array
    scaling_error: jax.Array
    nu_x: jax.Array
    flushed_error: jax.Array
    amax: jax.Array
    nonzero: jax.Array


def _prepare(
    x: jax.Array,
    start: jax.Array | None,
    stop_below: jax.Array | None,
    *,
    rtol: float,
    n_lanczos: int,
    split: bool,
) -> _Prepared:
    """Steps 1-4 and the first shift for one matrix view ``x`` (compute dtype)."""
    dtype = x.dtype
    u = unit_roundoff(dtype)
    tiny = float(np.finfo(dtype).tiny)  # Covers underflow and flush-to-zero, per operation.
    rows, out = math.prod(x.shape[:-1]), x.shape[-1]

    # 1. Scale by an exact power of two: the largest entry in [1/2, 1).
    # Arithmetic may treat subnormal inputs as 0 (XLA:CPU runs with denormals-are-zero): the
    # matrix it sees is off by less than `tiny` in each subnormal entry, found from the bits.
    magnitude = magnitude_bits(x)
    subnormal = jnp.sum((magnitude != 0) & (magnitude < magnitude_bits(jnp.asarray(tiny, dtype))))
    flushed_error = up(jnp.sqrt(subnormal.astype(dtype)) * tiny)
    amax = jnp.max(jnp.abs(x))
    exponent = jnp.where(jnp.isfinite(amax) & (amax > 0), jnp.frexp(amax)[1], 0)
    xs = times_pow2(x, -exponent)
    # ||xs - 2^-e x||_2 <= ||.||_F: entries that underflowed, each off by less than `tiny`.
    scaling_error = jnp.asarray(math.sqrt(rows * out) * tiny, dtype)

    # 2. The Gram matrix A~ = fl(xs^T xs) (or xs xs^T): |A~ - A| <= gamma_m |xs|^T |xs| + 2 m tiny
    # entrywise, so ||A~ - A||_2 <= gamma_m nu + 2 m n tiny, nu >= || |xs| ||_2^2; or the split
    # Gram matrix, whose error is about u lambda_max.
    tall = rows >= out
    m = rows if tall else out
    n = out if tall else rows
    xs_abs = jnp.abs(xs)
    nu_x = sum_bound(sum_bound(_abs_product_row_sum(xs_abs, xs_abs, tall), n, u), m, u)
    if split:
        gram, gram_error = _split_gram(xs, u, tiny)
    else:
        gram = _kernel_gram(xs)[0]
        gram_error = up(up(gamma(m, u) * nu_x) + 2 * m * n * tiny)

    # 3. The shift: a lower estimate mu of lambda_max(A~), by Lanczos on A~.
    if start is None:
        vec = initial_vector(n, dtype)
    else:
        start = jax.lax.stop_gradient(start.astype(dtype))
        vec = start if tall else matvec(xs, start).reshape(n)
        if is_explicit(vec):  # The power-iteration vector is sharded like the kernel's axis.
            vec = jax.sharding.reshard(vec, P())
        # A generic component as well: a guess that is exactly an eigenvector of A~ other
        # than the top one (a stale vector) would keep Lanczos in its invariant subspace.
        vec = normalize(vec, initial_vector(n, dtype))[0] + 0.25 * initial_vector(n, dtype)
        vec = normalize(vec, initial_vector(n, dtype))[0]
    ritz = _lanczos_top(gram, vec, n_lanczos)
    estimate = jnp.maximum(ritz, jnp.trace(gram) / n)  # Both <= lambda_max.

    # 4. Without a factorization: lambda_max(A~) <= its largest absolute row sum (Gershgorin),
    # tight when the columns are orthogonal.
    gershgorin = max_row_sum(jnp.abs(gram), u)

    # 5. The first shift: just above the estimate (1 + rtol), or just inside the ball's own
    # bound when that is larger (its success certifies sigma_max <= stop_below).
    first = estimate * (1 + rtol)
    if stop_below is not None:
        c2 = jnp.square(times_pow2(stop_below.astype(dtype), -exponent))
        inside = (c2 - gram_error) * (1 - 4 * u) / (1 + FEASIBLE_MARGIN)
        first = jnp.maximum(inside, first)
    return _Prepared(
        gram, estimate, first, gershgorin, gram_error, exponent, scaling_error, nu_x,
        flushed_error, amax, jnp.any(magnitude != 0),
    )  # fmt: skip


def _finish(p: _Prepared, proved: jax.Array) -> SpectralBound:
    """The certified bound of one matrix from the smallest ``lambda_max(A~)`` bound proved."""

    def sigma_from_lambda(lam: jax.Array) -> jax.Array:
        """sigma_max(W) from an upper bound on lambda_max(A~)."""
        lam = up(lam + p.gram_error)  # lambda_max(xs^T xs)
        sigma = up(up(jnp.sqrt(lam)) + p.scaling_error)
        return times_pow2(sigma, p.exponent)

    best = sigma_from_lambda(jnp.minimum(p.gershgorin, proved))
    abs_norm = times_pow2(up(up(jnp.sqrt(p.nu_x)) + p.scaling_error), p.exponent)
    nonzero, nonfinite = p.nonzero, ~jnp.isfinite(p.amax)
    best = jnp.where(nonzero, jnp.where(nonfinite, p.amax, up(best + p.flushed_error)), 0)
    abs_norm = jnp.where(nonzero, jnp.where(nonfinite, p.amax, up(abs_norm + p.flushed_error)), 0)
    return SpectralBound(best, abs_norm)


# The ladder of shifts (times the estimate) tried where the first Cholesky factorization fails:
# relative steps of 10, 100 and 1000 times rtol, then 2%, 20% and 100%.
_LADDER_RTOLS = (10.0, 100.0, 1000.0)
_LADDER_STEPS = (0.02, 0.2, 1.0)


def certified_spectral_bound(
    kernel: jax.Array,
    start: jax.Array | None = None,
    *,
    rtol: float | None = None,
    n_lanczos: int = 24,
    stop_below: jax.Array | float | None = None,
    stack: MatrixStack = ONE_MATRIX,
    split: bool = False,
) -> SpectralBound:
    """A certified upper bound on the largest singular value of each matrix of a kernel.

    The kernel ``W`` (float32, or float64 where enabled; narrower floats are widened to
    float32 exactly) is split by ``stack`` into matrices (one, by default), each viewed as
    ``(rows, out)``: see `jaxcons.spectral_norm_bound` for the method, the rounding analysis and
    the contract. ``start`` (shape ``batch_shape + (out,)``) is a guess of each top right
    singular vector (`SpectralNorm` passes its power-iteration vectors). ``split`` forms the
    Gram matrix to about ``u`` relative in four products (`_split_gram`), instead of one
    product whose worst-case error is ``gamma_m || |W| ||_2^2``.

    Each bound is certified by one Cholesky factorization at ``(1 + rtol)`` times the Lanczos
    estimate of ``lambda_max`` (or just inside the ball ``stop_below^2``, when given and
    larger). Only where that factorization fails does a `jax.lax.cond` run the ladder (10, 100
    and 1000 ``rtol``, then 2%, 20% and 100% above the estimate) for every matrix: its
    predicate is one flag for the whole stack, so a stack sharded along its batch axes moves
    one boolean across devices, and the common step runs no ladder (a `jax.lax.cond` under
    `jax.vmap` would run both branches).

    Returns bounds of the stack's batch shape. The value is a constant under differentiation
    (the constraints that scale by it give the scale the derivative of their own estimate).
    """
    x = jax.lax.stop_gradient(jnp.asarray(kernel))
    dtype = accumulation_dtype(x.dtype)
    if rtol is None:
        rtol = 1e-12 if dtype == np.float64 else 1e-5
    x = stack.split(x.astype(dtype))
    batch = x.shape[: len(stack.batch_axes)]
    matrix = x.shape[len(stack.batch_axes) :]
    u = unit_roundoff(dtype)
    if math.prod(matrix) == 0:
        zero = jnp.zeros(batch, dtype)
        return SpectralBound(zero, zero)
    limit = None if stop_below is None else jnp.broadcast_to(jnp.asarray(stop_below, dtype), batch)
    if limit is not None:
        limit = like_batch_axes(limit, x, len(batch))
    if start is not None:
        start = like_batch_axes(jnp.asarray(start), x, len(batch))

    def prepare(x: jax.Array, start: jax.Array | None, limit: jax.Array | None) -> _Prepared:
        return _prepare(x, start, limit, rtol=rtol, n_lanczos=n_lanczos, split=split)

    each = stack.each
    # Constant fields come out of vmap unsharded: on an Explicit mesh, vmap maps only axes
    # sharded alike.
    prepared = jax.tree.map(
        lambda a: like_batch_axes(a, x, len(batch)), each(prepare)(x, start, limit)
    )
    primary = each(lambda g, t: _cholesky_bound(g, t, u))(prepared.gram, prepared.first)

    def ladder() -> jax.Array:
        def rungs(gram: jax.Array, estimate: jax.Array, primary: jax.Array) -> jax.Array:
            factors = np.array([r * rtol for r in _LADDER_RTOLS] + list(_LADDER_STEPS))
            taus = estimate * (1 + jnp.asarray(factors, dtype))
            proved = primary
            for tau in taus:  # One factorization after another (`InOrder` says why).
                proved = jnp.minimum(proved, _cholesky_bound(gram, after(tau, proved), u))
            return proved

        return each(rungs)(prepared.gram, prepared.estimate, primary)

    proved = jax.lax.cond(jnp.all(jnp.isfinite(primary)), lambda: primary, ladder)
    return each(_finish)(prepared, like_batch_axes(proved, x, len(batch)))
