"""Constraints on square or rectangular matrices: `SingularValueClip`, `NuclearBall`, `PSD`,
`Symmetric`."""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxcons._src.base import Constraint
from jaxcons._src.linalg import (
    HIGHEST,
    as_matrix,
    check_matrix,
    compose,
    distinct_spectrum,
    is_explicit,
    like,
    svd,
)
from jaxcons._src.matrix_stacks import MatrixStack, matrix_stack
from jaxcons._src.numerics import accumulation_dtype, exact_projection
from jaxcons._src.schedules import Evaluated, Scheduled, schedulable
from jaxcons._src.validation import positive_number, real_number
from jaxcons.constraints._orthogonal import attainable_tolerance
from jaxcons.constraints._stiefel import stiefel_tangent


class SingularValueClip(Constraint):
    """Clips the singular values of a kernel into ``[min_value, max_value]``.

    For the kernel viewed as a matrix ``W = U \\Sigma V^T`` (a kernel of rank > 2 as
    ``(prod(shape[:-1]), shape[-1])``, like `SpectralNorm`):

    .. math:: P(W) = U \\operatorname{clip}(\\Sigma, a, b)\\, V^\\top

    the Frobenius-nearest matrix whose singular values all lie in ``[a, b]`` (by von Neumann's
    trace inequality). With ``min_value=0`` it is the exact projection onto the spectral-norm
    ball of radius ``max_value`` — `SpectralNorm` rescales the whole kernel instead, which is
    feasible but not the nearest point. With ``min_value > 0`` it also keeps the kernel well
    conditioned (condition number at most ``b / a``); that set is not convex, and a zero
    kernel, which has no nearest point in it, stays zero.

    A kernel whose singular values already lie in the interval (to ``1.9e-6 * max_value`` in
    float32: the rounding of an SVD) comes back bit for bit, so the projection is idempotent; the
    dtype is kept (the SVD runs in float32, float64 for float64 kernels). Every call (inside
    `jaxcons.constrain` too) is one SVD, which gathers a sharded kernel. At a kernel already
    in the set the derivative is the identity (on the interval's ends, where the projection
    has none, the one from inside), or with ``min_value == max_value`` the projection onto the
    tangent space of that scaled Stiefel manifold, as in `Orthogonal`: finite even where
    singular values coincide, and at zero. Elsewhere gradients are those of
    `jnp.linalg.svd`, undefined where two clipped singular values coincide.

    Args:
      min_value: the lower bound ``a >= 0``.
      max_value: the upper bound ``b >= a``.
      batch_axes: axes (of ``view``, when given) whose every index is a separate matrix,
        projected on its own: an int or a tuple of ints; ``()`` (the default) for one matrix
        per parameter.
      view: ``None``, or a shape of the parameter's size to reshape it to before
        ``batch_axes`` apply (a fused QKV weight as ``(3 * heads, head_dim, dim)``).

    Raises:
      ValueError: at construction, for a bound that is negative or not finite, or
        ``min_value > max_value``; when applied, for a parameter of rank < 2 (naming its
        path and shape), or one that ``view`` and ``batch_axes`` do not fit.
      TypeError: for ``batch_axes`` or ``view`` that are not ints.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.SingularValueClip(0.5, 2.0)(jnp.array([[3.0, 0.0], [0.0, 0.1]]))
      Array([[2. , 0. ],
             [0. , 0.5]], dtype=float32)

    References:
      Sedghi, Gupta and Long, "The singular values of convolutional layers", ICLR 2019.
    """

    identifiers = ("singular_value_clip",)
    traced_once = False
    elementwise_bounds = None

    @property
    def convex(self) -> bool:
        """The spectral-norm ball (convex) with ``min_value=0``; a lower bound makes the set
        non-convex."""
        return self._min == 0

    def __init__(
        self,
        min_value: float = 0.0,
        max_value: float = 1.0,
        *,
        batch_axes: int | tuple[int, ...] = (),
        view: tuple[int, ...] | None = None,
    ):
        self._min = real_number("min_value", min_value, minimum=0.0)
        self._max = real_number("max_value", max_value, minimum=0.0)
        if self._min > self._max:
            raise ValueError(
                f"SingularValueClip needs min_value <= max_value, got min_value={min_value!r} "
                f"> max_value={max_value!r}."
            )
        self.min_value = min_value
        self.max_value = max_value
        self.matrix_stack: MatrixStack = matrix_stack("SingularValueClip", view, batch_axes)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        check_matrix("SingularValueClip", shape, path, self.matrix_stack)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        low, high = self._min, self._max
        return self.matrix_stack.apply(lambda m: clip_singular_values(m, low, high), w)

    def get_config(self) -> dict[str, Any]:
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            **self.matrix_stack.config(),
        }


class NuclearBall(Constraint):
    """Projects a kernel onto the nuclear-norm ball: ``sum(singular values) <= radius``.

    For the kernel viewed as a matrix ``W = U \\Sigma V^T`` (rank > 2 as
    ``(prod(shape[:-1]), shape[-1])``), the singular values are projected onto the L1 ball
    of radius ``r`` — they are non-negative, so that is the simplex threshold:

    .. math:: P(W) = U \\max(\\Sigma - \\tau, 0)\\, V^\\top, \\qquad
       \\textstyle\\sum_i \\max(\\sigma_i - \\tau, 0) = r

    (``tau = 0`` when ``W`` is inside). The nuclear norm is the convex envelope of the rank,
    so the projection zeroes the small singular values: a low-rank kernel. A kernel inside
    the ball comes back bit for bit; the dtype is kept (SVD in float32, float64 for float64
    kernels). Every call is one SVD, which gathers a sharded kernel.

    Args:
      radius: the radius ``r > 0`` (finite), or an optax schedule of it: with ``batch_axes``,
        the radius of every matrix's ball.
      batch_axes: axes (of ``view``, when given) whose every index is a separate matrix,
        projected on its own: an int or a tuple of ints; ``()`` (the default) for one matrix
        per parameter.
      view: ``None``, or a shape of the parameter's size to reshape it to before
        ``batch_axes`` apply (a fused QKV weight as ``(3 * heads, head_dim, dim)``).

    Raises:
      ValueError: at construction, for a radius that is not finite and > 0; when applied,
        for a parameter of rank < 2, or one that ``view`` and ``batch_axes`` do not fit
        (naming its path and shape).
      TypeError: for ``batch_axes`` or ``view`` that are not ints.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.NuclearBall(2.0)(jnp.array([[3.0, 0.0], [0.0, 1.0]]))
      Array([[2., 0.],
             [0., 0.]], dtype=float32)

    References:
      Duchi, Shalev-Shwartz, Singer and Chandra, "Efficient projections onto the l1-ball for
      learning in high dimensions", ICML 2008. Recht, Fazel and Parrilo, "Guaranteed
      minimum-rank solutions of linear matrix equations via nuclear norm minimization",
      SIAM Review 52(3), 2010.
    """

    identifiers = ("nuclear_ball",)
    traced_once = False
    convex = True
    elementwise_bounds = None

    def __init__(
        self,
        radius: float,
        *,
        batch_axes: int | tuple[int, ...] = (),
        view: tuple[int, ...] | None = None,
    ):
        self._radius = schedulable("radius", radius, positive_number)
        self.radius = radius if isinstance(self._radius, Scheduled) else self._radius
        self.matrix_stack: MatrixStack = matrix_stack("NuclearBall", view, batch_axes)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        check_matrix("NuclearBall", shape, path, self.matrix_stack)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        radius = cast(Evaluated, self._radius)
        return self.matrix_stack.apply(lambda m: nuclear_ball(m, radius), w)

    def get_config(self) -> dict[str, Any]:
        return {"radius": self.radius, **self.matrix_stack.config()}


class PSD(Constraint):
    """Makes the last two axes symmetric positive semi-definite (eigenvalues ``>= c``).

    For every square matrix ``W`` over the last two axes (batched over the leading ones):

    .. math:: P(W) = Q \\max(\\Lambda, c)\\, Q^\\top, \\qquad
       \\tfrac12 (W + W^\\top) = Q \\Lambda Q^\\top

    the Frobenius-nearest symmetric matrix whose eigenvalues are all at least
    ``c = min_eigenvalue`` (Higham, 1988): symmetrizing is the orthogonal projection onto
    the symmetric matrices, and clipping the eigenvalues the projection within them. A
    matrix that is exactly symmetric with eigenvalues ``>= c`` comes back bit for bit; the
    dtype is kept (the eigendecomposition runs in float32, float64 for float64 parameters).
    With ``c > 0`` a zero matrix becomes ``c I``. Every call is one batched ``eigh``, which
    gathers a sharded parameter. At a matrix already in the set the derivative is the
    symmetrization ``dW -> (dW + dW^T) / 2``, the projection's own (the set lies in the
    symmetric matrices; on its boundary, where the projection has none, the one from
    inside): finite at the identity and at zero. Elsewhere gradients are those of
    `jnp.linalg.eigh`, undefined where two eigenvalues coincide.

    Args:
      min_eigenvalue: the lower bound ``c >= 0`` on the eigenvalues (``0``: the PSD cone).

    Raises:
      ValueError: at construction, for a bound that is negative or not finite; when
        applied, for a parameter of rank < 2 or whose last two axes differ in size (naming
        its path and shape).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.PSD()(jnp.array([[1.0, 2.0], [0.0, 1.0]]))  # Eigenvalues of sym: 2, 0.
      Array([[1., 1.],
             [1., 1.]], dtype=float32)

    References:
      Higham, "Computing a nearest symmetric positive semidefinite matrix", Linear Algebra
      and its Applications 103, 1988.
    """

    identifiers = ("psd",)
    traced_once = False
    convex = True
    elementwise_bounds = None

    def __init__(self, min_eigenvalue: float = 0.0):
        self.min_eigenvalue = real_number("min_eigenvalue", min_eigenvalue, minimum=0.0)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        check_square("PSD", shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        return project_psd(w, self.min_eigenvalue)

    def get_config(self) -> dict[str, Any]:
        return {"min_eigenvalue": self.min_eigenvalue}


class Symmetric(Constraint):
    """Makes the last two axes symmetric: the orthogonal projection onto symmetric matrices.

    For every square matrix ``W`` over the last two axes (batched over the leading ones):

    .. math:: P(W) = \tfrac12 (W + W^\top)

    the Frobenius-nearest symmetric matrix. The set is a linear subspace, so the projection
    is linear: its derivative is itself, exact everywhere, and a symmetric matrix comes back
    bit for bit. The sum runs in float32 for half-precision parameters (float64 for float64
    ones), and the result is exactly symmetric in the parameter's dtype. Through
    `jaxcons.tangent` an update is projected the same way (the tangent space of a subspace is
    the subspace).

    Used for weights that must be symmetric by construction: a Hopfield network's coupling
    matrix, a quadratic form ``x^T W x``, a learned metric before `PSD` is wanted.

    Raises:
      ValueError: when applied, for a parameter of rank < 2 or whose last two axes differ in
        size (naming its path and shape).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.Symmetric()(jnp.array([[1.0, 2.0], [0.0, 3.0]]))
      Array([[1., 1.],
             [1., 3.]], dtype=float32)
    """

    identifiers = ("symmetric",)
    traced_once = True
    convex = True
    elementwise_bounds = None

    def check(self, shape: tuple[int, ...], path: str) -> None:
        check_square("Symmetric", shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        return symmetrized(w)

    def tangent(self, w: jax.Array, g: jax.Array) -> jax.Array:
        """The projection of an update ``g`` onto the symmetric matrices (the tangent space)."""
        del w
        return self(g)


def check_square(owner: str, shape: tuple[int, ...], path: str) -> None:
    """Raises ``ValueError`` unless the last two axes are square, naming ``owner``, the path
    and the shape."""
    if len(shape) < 2 or shape[-1] != shape[-2]:
        where = f"parameter {path!r}" if path else "the array"
        raise ValueError(
            f"{owner} needs square matrices over the last two axes (shape (..., n, n)), but "
            f"{where} has shape {tuple(shape)}."
        )


def clip_singular_values(w: jax.Array, min_value: float, max_value: float) -> jax.Array:
    """The nearest matrix (Frobenius) whose singular values lie in ``[min_value, max_value]``.

    .. math:: P(W) = U \\operatorname{clip}(\\Sigma, a, b) V^\\top
       \\quad\\text{for } W = U \\Sigma V^\\top

    (von Neumann's trace inequality makes clipping the singular values optimal). ``w`` itself
    is returned when every singular value already lies in the interval, to half the dtype's
    `attainable_tolerance` relative to ``max_value`` (so the projection is idempotent on its
    own output, whose clipped singular values an SVD reads a few ulps off); the derivative there
    is the identity (inside the interval, or on its ends from inside), or with ``min_value ==
    max_value > 0`` the tangent projection of that scaled Stiefel manifold
    (`exact_projection`), with no SVD derivative evaluated.
    """

    def project(w: jax.Array) -> tuple[jax.Array, jax.Array]:
        matrix = as_matrix(w)
        zero = jnp.all(matrix == 0)
        u, s, vh = svd(matrix, zero)
        # A zero matrix stays zero: with min_value > 0 it has no unique projection (see the
        # class). Singular values within the dtype's attainable tolerance of the interval count
        # as inside: an SVD returns the clipped ones (1.0 after clipping to 1) a few ulps off,
        # and the projection must be idempotent, with the derivative of the set at its output.
        slack = 0.5 * attainable_tolerance(w.dtype) * max_value
        keep = zero | jnp.all((s >= min_value - slack) & (s <= max_value + slack))
        projected = compose(u, jnp.clip(s, min_value, max_value), vh)
        return like(projected, w), ~keep

    def on_set(w: jax.Array, dw: jax.Array) -> jax.Array:
        if min_value < max_value:
            return dw
        if max_value == 0:  # The set is {0}: P is 0 everywhere.
            return jnp.zeros_like(dw)
        return stiefel_tangent(w, dw, max_value)

    return exact_projection(project, w, on_set=on_set)


def _simplex_threshold(s: jax.Array, radius: Evaluated) -> jax.Array:
    """``tau >= 0`` with ``sum(max(s - tau, 0)) == radius``, for ``s >= 0`` sorted descending
    with ``sum(s) > radius > 0`` (Duchi et al., 2008, on an already sorted vector)."""
    k = jnp.arange(1, s.shape[0] + 1, dtype=s.dtype)
    cumulative = jnp.cumsum(s)
    support = jnp.sum(s - (cumulative - radius) / k > 0)
    return (cumulative[support - 1] - radius) / support.astype(s.dtype)


def nuclear_ball(w: jax.Array, radius: Evaluated) -> jax.Array:
    """The projection onto the nuclear-norm ball ``sum(singular values) <= radius``.

    .. math:: P(W) = U \\max(\\Sigma - \\tau, 0) V^\\top, \\qquad
       \\tau \\text{ such that } \\textstyle\\sum_i \\max(\\sigma_i - \\tau, 0) = r

    The singular values are projected onto the L1 ball of radius ``r`` (they are non-negative,
    so this is the simplex threshold). ``w`` itself is returned when its nuclear norm is at
    most ``radius``, with the identity as derivative (inside the ball, or on its boundary
    from inside; `exact_projection`).
    """

    def project(w: jax.Array, radius: Evaluated) -> tuple[jax.Array, jax.Array]:
        matrix = as_matrix(w)
        zero = jnp.all(matrix == 0)
        u, s, vh = svd(matrix, zero)
        feasible = zero | (jnp.sum(s) <= radius)
        tau = _simplex_threshold(s, radius)
        projected = compose(u, jnp.maximum(s - tau, 0), vh)
        return like(projected, w), ~feasible

    return exact_projection(project, w, radius, on_set=lambda w, dw: dw)


def project_psd(w: jax.Array, min_eigenvalue: float) -> jax.Array:
    """The nearest symmetric matrix with eigenvalues ``>= min_eigenvalue``, over the last two
    axes (batched over the others).

    .. math:: P(W) = Q \\max(\\Lambda, c) Q^\\top \\quad\\text{for }
       \\tfrac12 (W + W^\\top) = Q \\Lambda Q^\\top

    Symmetrizing is the orthogonal projection onto symmetric matrices, which contain the set.
    Every matrix that is already exactly symmetric with eigenvalues ``>= c`` comes back bit
    for bit, and the derivative there is the symmetrization (`exact_projection`): ``P``'s
    inside the cone, the one from inside on its boundary, with no ``eigh`` derivative
    evaluated (it divides by the gaps between eigenvalues, zero at the identity).
    """

    def project(w: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = w.astype(accumulation_dtype(w.dtype))
        if is_explicit(w):
            x = jax.sharding.reshard(x, P())
        sym = _symmetric_part(x)
        zero = jnp.all(x == 0, axis=(-2, -1), keepdims=True)
        safe = jnp.where(zero, distinct_spectrum(x.shape, x.dtype), sym)
        lam, q = jnp.linalg.eigh(safe, symmetrize_input=False)
        symmetric = jnp.all(x == jnp.swapaxes(x, -1, -2), axis=(-2, -1), keepdims=True)
        lam_min = jnp.min(lam, axis=-1)[..., None, None]
        c = min_eigenvalue
        feasible = symmetric & (zero & (c <= 0) | ~zero & (lam_min >= c))
        qt = jnp.swapaxes(q, -1, -2)
        projected = jnp.matmul(q * jnp.maximum(lam, c)[..., None, :], qt, precision=HIGHEST)
        projected = _symmetric_part(projected)  # Exactly symmetric.
        # A zero matrix with min_eigenvalue > 0 projects to c * I.
        projected = jnp.where(zero, c * jnp.eye(x.shape[-1], dtype=x.dtype), projected)
        return like(projected, w), ~feasible

    return exact_projection(project, w, on_set=lambda w, dw: symmetrized(dw))


def symmetrized(w: jax.Array) -> jax.Array:
    """``(W + W^T) / 2`` over the last two axes, computed in >= float32, in ``w``'s dtype."""
    return _symmetric_part(w.astype(accumulation_dtype(w.dtype))).astype(w.dtype)


def _symmetric_part(x: jax.Array) -> jax.Array:
    """``(X + X^T) / 2`` over the last two axes, in ``x``'s dtype."""
    return (x + jnp.swapaxes(x, -1, -2)) / 2
