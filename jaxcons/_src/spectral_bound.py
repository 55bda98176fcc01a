"""A certified upper bound on the largest singular value of a kernel: a Gram matrix, Lanczos, and
a Cholesky factorization whose rounding is accounted for."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcons._src.linalg import HIGHEST, initial_vector, is_explicit, matvec, normalize
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
from jaxcons._src.validation import real_number


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

    def step(j: Any, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        basis, alphas, betas = carry
        v = basis[j]
        w = jnp.matmul(a, v, precision=HIGHEST)
        alphas = alphas.at[j].set(v @ w)
        for _ in range(2):  # Classical Gram-Schmidt, twice.
            w = w - jnp.matmul(basis.T, jnp.matmul(basis, w, precision=HIGHEST), precision=HIGHEST)
        beta = jnp.sqrt(jnp.sum(jnp.square(w)))
        keep = beta > small
        nxt = jnp.where(keep, w / jnp.where(keep, beta, 1), 0)
        last = j + 1 >= k
        index = jnp.minimum(j + 1, k - 1)
        basis = basis.at[index].set(jnp.where(last, basis[index], nxt))
        betas = betas.at[j].set(jnp.where(keep & ~last, beta, 0))
        return basis, alphas, betas

    basis = jnp.zeros((k, n), dtype).at[0].set(v0)
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


def _abs_gram_row_sum(x_abs: jax.Array, tall: bool) -> jax.Array:
    """The largest row sum of ``|X|^T |X|`` (tall) or ``|X| |X|^T`` (wide), computed as two
    matrix-vector products on the kernel's own shape (an upper bound on ``|| |X| ||_2^2``
    before rounding)."""
    lead = tuple(range(x_abs.ndim - 1))
    if tall:
        r = jnp.sum(x_abs, axis=-1)
        return jnp.max(jnp.sum(x_abs * r[..., None], axis=lead))
    r = jnp.sum(x_abs, axis=lead)
    return jnp.max(jnp.sum(x_abs * r.reshape((1,) * len(lead) + r.shape), axis=-1))


def certified_spectral_bound(
    kernel: jax.Array,
    start: jax.Array | None = None,
    *,
    rtol: float | None = None,
    n_lanczos: int = 24,
    stop_below: jax.Array | float | None = None,
) -> SpectralBound:
    """A certified upper bound on the largest singular value of a kernel's ``(rows, out)`` view.

    The kernel ``W`` (rank >= 2; float32, or float64 where enabled; narrower floats are
    widened to float32 exactly) is never reshaped: see `spectral_norm_bound` for the
    method, the rounding analysis and the contract. ``start`` (shape ``(out,)``) is a guess
    of the top right singular vector (`SpectralNorm` passes its power-iteration vector).

    The bound is certified by one Cholesky factorization at ``(1 + rtol)`` times the Lanczos
    estimate of ``lambda_max`` (or just inside the ball ``stop_below^2``, when given and
    larger: its success proves ``sigma_max <= stop_below`` unless the rounding margin is
    unusually large). Only when that factorization fails does a `jax.lax.cond` run the ladder
    ``(1 + 50 rtol)``, 1.02, 1.2 and 2 times the estimate.

    The value is a constant under differentiation (the constraints that scale by it give the
    scale the derivative of their own estimate).
    """
    x = jax.lax.stop_gradient(jnp.asarray(kernel))
    dtype = accumulation_dtype(x.dtype)
    if rtol is None:
        rtol = 1e-12 if dtype == np.float64 else 1e-5
    x = x.astype(dtype)
    u = unit_roundoff(dtype)
    tiny = float(np.finfo(dtype).tiny)  # Covers underflow and flush-to-zero, per operation.
    rows, out = math.prod(x.shape[:-1]), x.shape[-1]
    zero = jnp.zeros((), dtype)
    if rows == 0 or out == 0:
        return SpectralBound(zero, zero)

    # 1. Scale by an exact power of two: the largest entry in [1/2, 1).
    # Arithmetic may treat subnormal inputs as 0 (XLA:CPU runs with denormals-are-zero): the
    # matrix it sees is off by less than `tiny` in each subnormal entry, found from the bits.
    magnitude = magnitude_bits(x)
    nonzero = jnp.any(magnitude != 0)
    subnormal = jnp.sum((magnitude != 0) & (magnitude < magnitude_bits(jnp.asarray(tiny, dtype))))
    flushed_error = up(jnp.sqrt(subnormal.astype(dtype)) * tiny)
    amax = jnp.max(jnp.abs(x))
    exponent = jnp.where(jnp.isfinite(amax) & (amax > 0), jnp.frexp(amax)[1], 0)
    xs = times_pow2(x, -exponent)
    # ||xs - 2^-e x||_2 <= ||.||_F: entries that underflowed, each off by less than `tiny`.
    scaling_error = math.sqrt(rows * out) * tiny

    # 2. The Gram matrix A~ = fl(xs^T xs) (or xs xs^T): |A~ - A| <= gamma_m |xs|^T |xs| + 2 m tiny
    # entrywise, so ||A~ - A||_2 <= gamma_m nu + 2 m n tiny, nu >= || |xs| ||_2^2.
    gram, m, tall = _kernel_gram(xs)
    n = gram.shape[0]
    nu_x = sum_bound(sum_bound(_abs_gram_row_sum(jnp.abs(xs), tall), n, u), m, u)
    gram_error = up(up(gamma(m, u) * nu_x) + 2 * m * n * tiny)

    # 3. The shift: a lower estimate mu of lambda_max(A~), by Lanczos on A~.
    if start is None:
        vec = initial_vector(n, dtype)
    else:
        start = jax.lax.stop_gradient(jnp.asarray(start, dtype))
        vec = start if tall else matvec(xs, start).reshape(n)
        if is_explicit(vec):  # The power-iteration vector is sharded like the kernel's axis.
            vec = jax.sharding.reshard(vec, P())
        # A generic component as well: a guess that is exactly an eigenvector of A~ other
        # than the top one (a stale vector) would keep Lanczos in its invariant subspace.
        vec = normalize(vec, initial_vector(n, dtype))[0] + 0.25 * initial_vector(n, dtype)
        vec = normalize(vec, initial_vector(n, dtype))[0]
    ritz = _lanczos_top(gram, vec, n_lanczos)

    estimate = jnp.maximum(ritz, jnp.trace(gram) / n)  # Both <= lambda_max.

    def sigma_from_lambda(lam: jax.Array) -> jax.Array:
        """sigma_max(W) from an upper bound on lambda_max(A~)."""
        lam = up(lam + gram_error)  # lambda_max(xs^T xs)
        sigma = up(up(jnp.sqrt(lam)) + scaling_error)
        return times_pow2(sigma, exponent)

    # 4. Without a factorization: lambda_max(A~) <= its largest absolute row sum (Gershgorin),
    # tight when the columns are orthogonal; never worse than the ladder's last rung fails.
    best = sigma_from_lambda(max_row_sum(jnp.abs(gram), u))

    # 5. A Cholesky factorization of tau I - A~ that runs to completion proves
    # lambda_max(A~) <= tau + its rounding margin (a sixth of a product). The common step
    # tries one tau: just above the estimate (1 + rtol), or just inside the ball's own bound
    # when that is larger (its success certifies sigma_max <= stop_below). Only if it fails (a
    # poor estimate) does the ladder run, further above the estimate; the smallest bound proved
    # is kept.
    first = estimate * (1 + rtol)
    if stop_below is not None:
        c2 = jnp.square(times_pow2(jnp.asarray(stop_below, dtype), -exponent))
        inside = (c2 - gram_error) * (1 - 4 * u) / (1 + FEASIBLE_MARGIN)
        first = jnp.maximum(inside, first)
    primary = _cholesky_bound(gram, first, u)

    def ladder() -> jax.Array:
        taus = estimate * (1 + jnp.asarray(np.array([50 * rtol, 0.02, 0.2, 1.0]), dtype))
        return jnp.min(jnp.stack([_cholesky_bound(gram, tau, u) for tau in taus]))

    proved = jax.lax.cond(jnp.isfinite(primary), lambda: primary, ladder)
    best = jnp.minimum(best, sigma_from_lambda(proved))

    abs_norm = times_pow2(up(up(jnp.sqrt(nu_x)) + scaling_error), exponent)
    nonfinite = ~jnp.isfinite(amax)
    best = jnp.where(nonzero, jnp.where(nonfinite, amax, up(best + flushed_error)), 0)
    abs_norm = jnp.where(nonzero, jnp.where(nonfinite, amax, up(abs_norm + flushed_error)), 0)
    return SpectralBound(best, abs_norm)


def spectral_norm_bound(
    w: jax.typing.ArrayLike,
    *,
    start: jax.typing.ArrayLike | None = None,
    rtol: float | None = None,
) -> jax.Array:
    """A certified upper bound on the largest singular value of a kernel, rounding included.

    A kernel of rank > 2 is viewed as the ``(prod(shape[:-1]), shape[-1])`` matrix, as by
    `SpectralNorm` (a Conv2D kernel ``(h, w, in, out)`` as ``(h * w * in, out)``; that matrix's
    spectral norm bounds the convolution's Lipschitz constant up to a factor that depends only
    on the kernel size, Miyato et al. 2018). The computation is in float32 (bfloat16 and
    float16 are widened exactly), or float64 for float64 kernels.

    .. math:: \\sigma_{\\max}(W)^2 = \\lambda_{\\max}(A), \\quad A = W^T W, \\qquad
        \\tau I - A \\succeq 0 \\implies \\lambda_{\\max}(A) \\le \\tau.

    One matrix product forms the smaller Gram matrix ``A`` (``W W^T`` for a wide ``W``), after
    ``W`` is scaled by an exact power of two (its entries may be anywhere in the float range).
    24 Lanczos steps on ``A`` (matrix-vector products, from ``start`` when given) give an
    estimate ``rho`` of ``lambda_max(A)``. A Cholesky factorization of ``tau I - A`` (a sixth
    of a product) that runs to completion proves ``tau I - A`` positive definite up to its
    rounding. It is tried at ``tau = rho (1 + rtol)``, within about ``rtol / 2`` of
    ``sigma_max`` plus the rounding margin when ``rho`` is that good; only if it fails does a
    `jax.lax.cond` try ``1 + 50 rtol``, 1.02, 1.2 and 2 times ``rho``. The bound is also at
    most the square root of the largest absolute row sum of ``A`` (Gershgorin), tight when the
    columns are orthogonal. This is the Gram step of Delattre et al. (2023) followed by an
    exact certificate instead of more squarings, so it costs about one product, not several.

    **Rounding.** The bound covers the rounding of every operation, with ``u`` the unit
    roundoff (``2^-24`` in float32), ``gamma_k = k u / (1 - k u)`` and ``eta`` the smallest
    normal number (underflow, flush-to-zero, and subnormal inputs, which XLA:CPU reads as 0):

    1. ``W_s = 2^-e W`` is exact except for entries that underflow or are subnormal:
       ``||W_s - 2^-e W||_2 <= sqrt(rows cols) eta`` (and ``sqrt(#subnormal) eta`` for the
       input, added to the result).
    2. Each entry of ``A~ = fl(W_s^T W_s)`` is a dot product of length ``m``, off by at most
       ``gamma_m`` times the same product of absolute values plus ``2 m eta``, in any
       summation order (Higham, Lemma 3.1), so ``lambda_max(A) <= lambda_max(A~) + gamma_m nu
       + 2 m n eta``, with ``nu`` the largest row sum of ``|W_s|^T |W_s|`` (two matrix-vector
       products), which bounds ``|| |W_s|^T |W_s| ||_2``. ``A~`` is made exactly symmetric by
       mirroring its upper triangle.
    3. If the factorization of ``M = fl(tau I - A~)`` completes, the computed factor has
       ``L L^T = M + E`` with ``|E| <= gamma_{n+1} |L| |L^T|`` (Higham, Theorem 10.3), so
       ``||E||_2 <= gamma_{n+1} min(||L||_F^2, || |L| ||_1 || |L| ||_inf)`` (read off the
       computed ``L``) and ``lambda_max(A~) <= tau + ||E||_2 + u max m_ii``.
    4. The scalar chain only adds, multiplies, divides and takes square roots of nonnegative
       numbers (monotone operations), and each result is moved up by one ulp: an upper bound of
       the exact value.

    The margin is relative ``~ gamma_m nu / (2 lambda_max)`` (the Gram product's worst case:
    ``nu / lambda_max`` is 1 for a rank-one matrix with entries of one sign, about ``0.16 n``
    for a Gaussian ``n x n`` one and ``0.64 n`` for a dense orthogonal one) plus the
    factorization's, usually far smaller. BUILD.md ("SpectralNorm certificate") gives the
    measured excess over the float64 SVD's value, from 32x32 to 2048x2048. Sums of a dot
    product are assumed to be float32 (or wider) IEEE operations in any order, as on CPUs and
    on GPUs at ``Precision.HIGHEST`` (no TF32), and the Cholesky factorization a standard one
    (LAPACK, cuSOLVER); TPUs emulate float32 products with bfloat16 passes at ``HIGHEST``,
    whose error is of the same order but outside this proof.

    Args:
      w: a floating array of rank >= 2 (bfloat16, float16 and float32 are computed in
        float32, float64 in float64).
      start: an optional guess of the top right singular vector of the matrix view, shape
        ``(w.shape[-1],)``; a fixed random vector otherwise. It only affects how tight the
        bound is.
      rtol: the certificate is tried first at ``(1 + rtol)`` times the Lanczos estimate of
        ``sigma_max^2``, so the bound is within about ``rtol / 2`` of ``sigma_max`` plus the
        rounding margin when the estimate is that good (a finite number >= 0; default
        ``1e-5``, ``1e-12`` for float64). The looser tries (``1 + 50 rtol``, 1.02, 1.2, 2)
        cover a poor estimate.

    Returns:
      A scalar of the compute dtype, never below the exact largest singular value of ``w``'s
      matrix view (as its entries are: bfloat16 or float16 entries are exact in float32): 0
      for a zero or empty matrix, ``inf`` for one with an infinite entry, NaN for one with a
      NaN. It is a constant under differentiation. Works under ``jax.jit`` and ``jax.vmap``.

    Raises:
      ValueError: if ``w`` has rank < 2, ``start`` the wrong shape or ``rtol`` is not a
        finite number >= 0.
      TypeError: if ``w`` is not of a real floating dtype.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0]])
      >>> bound = jaxcons.spectral_norm_bound(w)
      >>> bool(3.0 <= bound <= 3.0 * (1 + 1e-5))
      True

    References:
      Miyato, Kataoka, Koyama & Yoshida, "Spectral normalization for generative adversarial
      networks", ICLR (2018).
      Delattre, Barthelemy, Araujo & Allauzen, "Efficient bound of Lipschitz constant for
      convolutional layers by Gram iteration", ICML (2023).
      Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., SIAM (2002),
      chapter 3.
    """
    w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(
            f"spectral_norm_bound takes a kernel of rank >= 2 (viewed as a (prod(shape[:-1]), "
            f"shape[-1]) matrix), got an array of shape {tuple(w.shape)}. For a vector, its L2 "
            "norm is its spectral norm: jnp.linalg.norm(w)."
        )
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(
            f"spectral_norm_bound takes a real floating kernel, got dtype {w.dtype}. Cast it "
            "first, e.g. w.astype(jnp.float32)."
        )
    rtol = None if rtol is None else real_number("rtol", rtol, minimum=0.0)
    if start is not None:
        start = jnp.asarray(start)
        if start.shape != (w.shape[-1],):
            raise ValueError(
                f"start must have shape (w.shape[-1],) = ({w.shape[-1]},) for a kernel of shape "
                f"{tuple(w.shape)}, got shape {tuple(start.shape)}."
            )
    return certified_spectral_bound(w, start, rtol=rtol).bound
