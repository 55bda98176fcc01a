"""Certified spectral-norm bounds for users: of one kernel or stack of matrices
(`spectral_norm_bound`), and of the kernels that constraint rules select (`spectral_norm_bounds`),
the factors of a network's Lipschitz bound."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxcons._src.constrain import _direct_rules
from jaxcons._src.linalg import check_matrix
from jaxcons._src.matrix_stacks import ONE_MATRIX, InOrder, MatrixStack, matrix_stack
from jaxcons._src.rules import Rules, RulesLike
from jaxcons._src.spectral_bound import certified_spectral_bound
from jaxcons._src.tree import is_masked
from jaxcons._src.validation import real_number


@functools.partial(jax.jit, static_argnames=("rtol", "stack"))
def _bound(w: jax.Array, start: jax.Array | None, *, rtol: float | None, stack: MatrixStack):
    """The certificate, compiled once per shape, dtype and layout: called outside ``jax.jit``
    (to log bounds), it would otherwise run operation by operation."""
    return certified_spectral_bound(w, start, rtol=rtol, stack=stack, split=True).bound


def spectral_norm_bound(
    w: jax.typing.ArrayLike,
    *,
    batch_axes: int | tuple[int, ...] = (),
    view: tuple[int, ...] | None = None,
    start: jax.typing.ArrayLike | None = None,
    rtol: float | None = None,
) -> jax.Array:
    """A certified upper bound on the largest singular value of a kernel, rounding included.

    A kernel of rank > 2 is viewed as the ``(prod(shape[:-1]), shape[-1])`` matrix, as by
    `SpectralNorm`; with ``batch_axes`` (after an optional ``view``) every index of those axes
    is its own matrix, and the result has their shape: ``batch_axes=0`` on mixture-of-experts
    weights ``(experts, d_in, d_out)`` gives one bound per expert. The computation is in
    float32 (bfloat16 and float16 are widened exactly), or float64 for float64 kernels.

    .. math:: \\sigma_{\\max}(W)^2 = \\lambda_{\\max}(A), \\quad A = W^T W, \\qquad
        \\tau I - A \\succeq 0 \\implies \\lambda_{\\max}(A) \\le \\tau.

    **Method.** ``W`` is scaled by an exact power of two (its entries may be anywhere in the
    float range) and its smaller Gram matrix ``A`` (``W W^T`` for a wide ``W``) is formed in
    four products, split so that its rounding error is about ``u lambda_max(A)`` rather than
    the ``gamma_m || |W| ||_2^2`` of one product (for a dense orthogonal ``n x n`` matrix
    that is ``0.64 n gamma_m``: 2% at 1024): ``W = H + M + R`` with ``H`` and ``M`` on grids
    coarse enough that ``H^T H``, ``H^T M`` and ``M^T M`` are exact in any summation order
    (the splitting of Ozaki et al.; the contraction is cut into chunks of 1024 so that each
    piece keeps 7 bits in float32), and ``R^T W`` the only rounded product, of a tiny ``R``.
    24 Lanczos steps on ``A`` (matrix-vector products, from ``start`` when given) give an
    estimate ``rho`` of ``lambda_max(A)``, and a Cholesky factorization of ``tau I - A`` (a
    sixth of a product) that runs to completion proves ``tau I - A`` positive definite up to
    its rounding, for the shift ``tau = rho (1 + rtol)``. Only where it fails does a
    `jax.lax.cond`, on one flag for the whole stack, try ``1 + 10 rtol``, ``1 + 100 rtol``,
    ``1 + 1000 rtol``, 1.02, 1.2 and 2 times ``rho``. The bound is also at most the square
    root of the largest absolute row sum of ``A`` (Gershgorin). This replaces the repeated
    squarings of the Gram iteration (Delattre et al., 2023), whose bound
    ``||A^(2^t)||_F^(1/2^t+1)`` approaches ``sigma_max`` only as ``n^(1/2^(t+1))`` (``t = 17``
    squarings for ``1e-4`` at ``n = 1024``), by one exact certificate of a shifted matrix.

    **Rounding.** The bound covers the rounding of every operation, with ``u`` the unit
    roundoff (``2^-24`` in float32), ``gamma_k = k u / (1 - k u)`` and ``eta`` the smallest
    normal number (underflow, flush-to-zero, and subnormal inputs, which XLA:CPU reads as 0):

    1. ``W_s = 2^-e W`` is exact except for entries that underflow or are subnormal:
       ``||W_s - 2^-e W||_2 <= sqrt(rows cols) eta`` (and ``sqrt(#subnormal) eta`` for the
       input, added to the result).
    2. ``W_s^T W_s = S^T S + R^T W_s + W_s^T R - R^T R`` with ``S = H + M``, and ``R^T R`` is
       positive semidefinite, so dropping it only raises ``lambda_max``. The one rounded
       product is off by at most ``gamma_b |R|^T |W_s| + 2 m eta`` entrywise (``b`` the chunk
       length; any summation order, Higham Lemma 3.1), the ``6c - 1`` additions of the ``c``
       chunks' six terms by ``gamma_{6c}`` times the sum of the terms' absolute values; the
       spectral norms of these nonnegative bounds are bounded by their largest row sums.
       ``A~`` is made exactly symmetric by mirroring its upper triangle.
    3. If the factorization of ``M = fl(tau I - A~)`` completes, the computed factor has
       ``L L^T = M + E`` with ``|E| <= gamma_{n+1} |L| |L^T|`` (Higham, Theorem 10.3), so
       ``||E||_2 <= gamma_{n+1} min(||L||_F^2, || |L| ||_1 || |L| ||_inf)`` (read off the
       computed ``L``) and ``lambda_max(A~) <= tau + ||E||_2 + u max m_ii``.
    4. The scalar chain only adds, multiplies, divides and takes square roots of nonnegative
       numbers (monotone operations), and each result is moved up by one ulp: an upper bound of
       the exact value.

    Sums of a dot product are assumed to be float32 (or wider) IEEE operations in any order, as
    on CPUs and on GPUs at ``Precision.HIGHEST`` (no TF32), and the Cholesky factorization a
    standard one (LAPACK, cuSOLVER); TPUs emulate float32 products with bfloat16 passes at
    ``HIGHEST``, exact on the split's short pieces but outside this proof for ``R^T W``.
    BUILD.md ("Stacked matrices and certified bounds") gives the measured excess over the float64
    SVD's value.

    **Convolutions.** For a Conv2D kernel ``(h, w, c_in, c_out)`` the bound is of the
    ``(h w c_in, c_out)`` matrix. The convolution (stride 1, zero padding) maps an input to a
    sum of ``h w`` shifted copies, so its L2 operator norm is at most ``sqrt(h w)`` times that
    matrix's spectral norm (each input pixel is read by at most ``h w`` output positions);
    with ``batch_axes=(0, 1)`` the bounds of the ``h w`` taps ``(c_in, c_out)`` sum to another
    upper bound. See the "Lipschitz networks" guide.

    Args:
      w: a floating array (bfloat16, float16 and float32 are computed in float32, float64 in
        float64): of rank >= 2, or a view with at least two axes besides ``batch_axes``.
      batch_axes: the axes (of ``view``, when given) whose every index is a separate matrix;
        the other axes form one kernel, viewed as above. An int or a tuple of ints.
      view: ``None``, or a shape of ``w``'s size to reshape it to first (a fused QKV weight
        ``(3 * heads * head_dim, dim)`` as ``(3 * heads, head_dim, dim)`` with
        ``batch_axes=0``).
      start: an optional guess of each matrix's top right singular vector, shape
        ``batch_shape + (columns,)``; a fixed random vector otherwise. It only affects how
        tight the bound is.
      rtol: the certificate is tried first at ``(1 + rtol)`` times the Lanczos estimate of
        ``sigma_max^2``, so the bound is within about ``rtol / 2`` of ``sigma_max`` plus the
        rounding margin when the estimate is that good (a finite number >= 0; default
        ``1e-5``, ``1e-12`` for float64).

    Returns:
      An array of the batch shape (a scalar without ``batch_axes``), of the compute dtype,
      never below the exact largest singular value of each matrix (as its entries are:
      bfloat16 or float16 entries are exact in float32): 0 for a zero or empty matrix,
      ``inf`` for one with an infinite entry, NaN for one with a NaN. It is a constant under
      differentiation. Works under ``jax.jit`` and ``jax.vmap``.

    Raises:
      ValueError: if ``w`` has rank < 2 (or the view leaves fewer than two matrix axes), a
        view of another size, a batch axis out of range or repeated, ``start`` of the wrong
        shape, or an ``rtol`` that is not a finite number >= 0.
      TypeError: if ``w`` is not of a real floating dtype, or ``batch_axes`` / ``view`` are
        not ints.

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
      Ozaki, Ogita, Oishi & Rump, "Error-free transformations of matrix multiplication by
      using fast routines of matrix multiplication and its applications", Numerical
      Algorithms 59 (2012).
    """
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(
            f"spectral_norm_bound takes a real floating kernel, got dtype {w.dtype}. Cast it "
            "first, e.g. w.astype(jnp.float32)."
        )
    stack = matrix_stack("spectral_norm_bound", view, batch_axes)
    if stack.trivial and w.ndim < 2:
        raise ValueError(
            f"spectral_norm_bound takes a kernel of rank >= 2 (viewed as a (prod(shape[:-1]), "
            f"shape[-1]) matrix), got an array of shape {tuple(w.shape)}. For a vector, its L2 "
            "norm is its spectral norm: jnp.linalg.norm(w)."
        )
    matrix = stack.check("spectral_norm_bound", tuple(w.shape), "")
    rtol = None if rtol is None else real_number("rtol", rtol, minimum=0.0)
    if start is not None:
        start = jnp.asarray(start)
        expected = (*stack.batch_shape(tuple(w.shape)), matrix[-1])
        if start.shape != expected:
            raise ValueError(
                f"start must have shape batch shape + (columns of one matrix,) = {expected} for "
                f"a kernel of shape {tuple(w.shape)}, got shape {tuple(start.shape)}."
            )
    return _bound(w, start, rtol=rtol, stack=stack)


def spectral_norm_bounds(
    params: optax.Params,
    rules: RulesLike | Rules | None = None,
    *,
    prefer: str | None = None,
    strict: bool | None = None,
) -> dict[str, jax.Array]:
    """Certified spectral-norm bounds of the kernels that constraint rules select.

    For every parameter a rule governs (declarations honoured, first match wins, as in
    `jaxcons.violations`), `spectral_norm_bound` of it, split into matrices as the rule's
    constraint splits it: ``batch_axes`` and ``view`` of `SpectralNorm`, `Orthogonal`,
    `SingularValueClip` and `NuclearBall` give one bound per matrix (an array of the batch
    shape); any other constraint's parameter is one matrix, ``(prod(shape[:-1]),
    shape[-1])``.

    A network's Lipschitz bound follows from these: for a feed-forward chain of dense layers
    with 1-Lipschitz activations (ReLU, GroupSort), the product of its kernels' bounds (with
    respect to the L2 norm). See the "Lipschitz networks" guide for convolutions and heads.

    Args:
      params: the parameter pytree.
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
        ``None``: the declared constraints only.
      prefer: where a declaration and an explicit rule differ, as in `jaxcons.constrain`.
      strict: raise if a rule acts on no floating-point parameter (default ``True``).

    Returns:
      ``{path: bound}`` in the tree's flattening order: a scalar per parameter, or an array of
      the batch shape for a constraint with ``batch_axes``.

    Raises:
      ValueError: as `jaxcons.violations`; for a governed parameter of rank < 2 (naming its
        path and shape).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> params = {"experts": jnp.stack([2.0 * jnp.eye(3), 0.5 * jnp.eye(3)]),
      ...           "out": {"kernel": jnp.eye(3)}}
      >>> rules = {"experts": jaxcons.SpectralNorm(1.0, batch_axes=0),
      ...          "out/kernel": jaxcons.Orthogonal()}
      >>> bounds = jaxcons.spectral_norm_bounds(params, rules)
      >>> bounds["experts"].shape, bool(bounds["out/kernel"] >= 1.0)
      ((2,), True)
    """
    resolution = _direct_rules(params, rules, prefer, strict, "spectral_norm_bounds").resolve(
        params
    )
    leaves = jax.tree_util.tree_leaves(params, is_leaf=is_masked)
    out = {}
    order = InOrder()  # Stacked parameters one after another.
    for i, path, c in resolution.active():
        (w,) = order.wait(c, jnp.asarray(leaves[i]))
        stack = getattr(c, "matrix_stack", ONE_MATRIX)
        if stack.trivial:
            check_matrix(f"spectral_norm_bounds (rule {c!r})", tuple(w.shape), path)
        stack.check(f"spectral_norm_bounds (rule {c!r})", tuple(w.shape), path)
        out[path] = order.done(c, _bound(w, None, rtol=None, stack=stack))
    return out
