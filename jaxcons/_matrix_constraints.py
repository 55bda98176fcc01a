"""Constraints on the spectrum of a kernel: `SingularValueClip`, `NuclearBall`, `PSD`,
`Orthogonal`. Thin classes over `jaxcons._matrix_math`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcons import _matrix_math as ops
from jaxcons._numerics import accumulation_dtype
from jaxcons._projections import as_matrix, initial_vector, like_last_axis, power_iteration
from jaxcons._protocol import Constraint, StatefulConstraint
from jaxcons._schedules import Scheduled, schedulable
from jaxcons._validation import positive_int, positive_number, real_number

__all__ = ["PSD", "NuclearBall", "Orthogonal", "OrthogonalState", "SingularValueClip"]

# The `Orthogonal` default, chosen by `benchmarks/orthogonal_iterations.py` (see BUILD.md).
DEFAULT_NEWTON_SCHULZ_ITERATIONS = 3

# `Orthogonal.init` accepts a start whose singular values (over `scale`) lie in this range:
# from there the Newton-Schulz steps of the first few updates bring it onto the set.
_START_RANGE = (0.5, 1.5)

# Power-iteration steps per `Orthogonal.project` for the divergence guard of `newton_schulz`.
_GUARD_POWER_ITERATIONS = 2


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

    A kernel whose singular values already lie in the interval comes back bit for bit; the
    dtype is kept (the SVD runs in float32, float64 for float64 kernels). Every call (inside
    `jaxcons.constrain` too) is one SVD, which gathers a sharded kernel. Gradients through the
    projection are those of `jnp.linalg.svd`: finite at zero, undefined where two clipped
    singular values coincide.

    Args:
      min_value: the lower bound ``a >= 0``.
      max_value: the upper bound ``b >= a``.

    Raises:
      ValueError: at construction, for a bound that is negative or not finite, or
        ``min_value > max_value``; when applied, for a parameter of rank < 2 (naming its
        path and shape).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.SingularValueClip(0.5, 2.0)(jnp.array([[3.0, 0.0], [0.0, 0.1]]))
      Array([[2. , 0. ],
             [0. , 0.5]], dtype=float32)

    References:
      Sedghi, Gupta and Long, "The singular values of convolutional layers", ICLR 2019.
    """

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0):
        self._min = real_number("min_value", min_value, minimum=0.0)
        self._max = real_number("max_value", max_value, minimum=0.0)
        if self._min > self._max:
            raise ValueError(
                f"SingularValueClip needs min_value <= max_value, got min_value={min_value!r} "
                f"> max_value={max_value!r}."
            )
        self.min_value = min_value
        self.max_value = max_value

    def check(self, shape: tuple[int, ...], path: str) -> None:
        ops.check_matrix("SingularValueClip", shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        return ops.clip_singular_values(w, self._min, self._max)

    def get_config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}


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
      radius: the radius ``r > 0`` (finite), or an optax schedule of it.

    Raises:
      ValueError: at construction, for a radius that is not finite and > 0; when applied,
        for a parameter of rank < 2.

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

    def __init__(self, radius: float):
        self._radius = schedulable("radius", radius, positive_number)
        self.radius = radius if isinstance(self._radius, Scheduled) else self._radius

    def check(self, shape: tuple[int, ...], path: str) -> None:
        ops.check_matrix("NuclearBall", shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        return ops.nuclear_ball(w, self._radius)

    def get_config(self) -> dict[str, Any]:
        return {"radius": self.radius}


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
    gathers a sharded parameter. Gradients through the projection are those of
    `jnp.linalg.eigh`: finite at zero, undefined where two eigenvalues coincide.

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

    def __init__(self, min_eigenvalue: float = 0.0):
        self.min_eigenvalue = real_number("min_eigenvalue", min_eigenvalue, minimum=0.0)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        where = f"parameter {path!r}" if path else "the array"
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise ValueError(
                f"PSD needs square matrices over the last two axes (shape (..., n, n)), but "
                f"{where} has shape {tuple(shape)}."
            )

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        return ops.project_psd(w, self.min_eigenvalue)

    def get_config(self) -> dict[str, Any]:
        return {"min_eigenvalue": self.min_eigenvalue}


class OrthogonalState(NamedTuple):
    """State of `Orthogonal` for one kernel, carried in `jaxcons.ConstrainState`.

    Attributes:
      u: the unit-norm estimate of the kernel's top right singular vector (the kernel viewed
        as ``(rows, out)``), shape ``(out,)``, float32 (float64 for float64 kernels), sharded
        like the kernel's last axis where that is known. It warm-starts the power iteration
        that guards the Newton-Schulz steps against divergence.
    """

    u: jax.Array


class Orthogonal(StatefulConstraint):
    """Keeps a kernel orthogonal: orthonormal columns (rows, if wider than tall), times scale.

    For the kernel viewed as a matrix ``W = U \\Sigma V^T`` (rank > 2 as
    ``(prod(shape[:-1]), shape[-1])``), the exact projection is ``scale`` times its polar
    factor:

    .. math:: P(W) = s\\, U V^\\top, \\qquad
       \\{W : W^\\top W = s^2 I\\} \\text{ (tall) or } \\{W : W W^\\top = s^2 I\\} \\text{ (wide)}

    the nearest such matrix in the Frobenius norm (Higham, 2008). A Dense layer with this
    kernel preserves norms (an orthogonal RNN's recurrence; with ``scale`` a Parseval-style
    layer of Lipschitz constant ``s``, Cissé et al., 2017).

    Two methods:

    * Called directly (or through `jaxcons.apply_constraints`): exact, one SVD. A kernel whose
      Gram matrix is within 4 ulps of ``s^2 I`` (``max |W^T W / s^2 - I| <= 4 eps``) comes
      back bit for bit; a zero kernel stays zero (it has no polar factor). Gradients through
      it are finite on the set and at zero (the SVD is not evaluated there); elsewhere they
      are those of `jnp.linalg.svd`, undefined where two singular values coincide.
    * Inside `jaxcons.constrain` (`project`): ``n_iterations`` Newton-Schulz (Björck-Bowie)
      steps ``X <- X (3 I - X^T X) / 2`` on ``X = W / s``, only matrix products, no SVD.
      Each step squares the distance to the set (an error ``e`` in a singular value becomes
      about ``1.5 e^2``), so a kernel that was orthogonal one step ago comes back within
      float32 rounding (the default count and its measured accuracy under Adam are in
      BUILD.md, from ``benchmarks/orthogonal_iterations.py``).

    Far from the set the fast method may not converge: the iteration diverges where a
    singular value of ``W / s`` exceeds ``sqrt(3)`` and crawls where one is near 0. Two
    guards: `init` rejects a concrete start whose singular values over ``s`` lie outside
    ``[0.5, 1.5]`` (project the initial parameters with `jaxcons.apply_constraints` first);
    and `project` estimates the largest singular value by two steps of power iteration,
    warm-started from `OrthogonalState` as in `SpectralNorm`, and where it exceeds
    ``1.5 s`` divides the kernel by it first (the polar factor is the same), so the steps
    approach the set from below instead of diverging; the kernel may then take a few
    training steps to come back within float32 rounding. After a step far too large for
    that (a learning-rate spike, a checkpoint of another run), project with
    `jaxcons.apply_constraints` again.

    Its set is a smooth manifold (the Stiefel manifold): `tangent` projects an update onto
    the tangent space, ``G - W sym(W^T G) / s^2``, for `jaxcons.tangent` (Riemannian steps
    with this constraint as the retraction).

    Args:
      scale: the scale ``s > 0`` (finite) of the orthonormal columns.
      n_iterations: Newton-Schulz steps per `project` call (a positive int).

    Raises:
      ValueError: at construction, for a ``scale`` that is not finite and > 0 or an
        ``n_iterations`` that is not a positive int; when applied, for a parameter of rank
        < 2; at `init`, for a concrete start too far from the set.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> w = jnp.array([[2.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
      >>> jaxcons.Orthogonal()(w)
      Array([[1., 0.],
             [0., 1.],
             [0., 0.]], dtype=float32)
      >>> near = jnp.array([[1.01, 0.0], [0.0, 0.99]])  # Orthogonal one step ago.
      >>> c = jaxcons.Orthogonal()
      >>> c.project(near, c.init(near))[0].round(6)  # Three Newton-Schulz steps.
      Array([[1., 0.],
             [0., 1.]], dtype=float32)

    References:
      Björck and Bowie, "An iterative algorithm for computing the best estimate of an
      orthogonal matrix", SIAM J. Numer. Anal. 8(2), 1971. Higham, "Functions of Matrices",
      SIAM 2008, ch. 8. Cissé, Bojanowski, Grave, Dauphin and Usunier, "Parseval networks:
      improving robustness to adversarial examples", ICML 2017. Absil, Mahony and Sepulchre,
      "Optimization Algorithms on Matrix Manifolds", Princeton 2008.
    """

    def __init__(self, scale: float = 1.0, n_iterations: int = DEFAULT_NEWTON_SCHULZ_ITERATIONS):
        self.scale = positive_number("scale", scale)
        self.n_iterations = positive_int("n_iterations", n_iterations)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        ops.check_matrix("Orthogonal", shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        tolerance = 4 * float(jnp.finfo(w.dtype).eps)
        return ops.polar(w, self.scale, tolerance)

    def init(self, w: jax.Array) -> OrthogonalState:
        """Checks that a concrete start is near the set (see the class) and returns the start
        of the guard's power iteration: a fixed random unit vector (drawn with key 0; on the
        set every direction is a top singular direction)."""
        w = jnp.asarray(w)
        self.check(w.shape, "")
        matrix = as_matrix(w)
        if not isinstance(w, jax.core.Tracer):
            s = np.linalg.svd(np.asarray(matrix), compute_uv=False) / self.scale
            low, high = _START_RANGE
            if s.size and not (s.min() >= low and s.max() <= high):
                raise ValueError(
                    f"{self!r} inside jaxcons.constrain refines the kernel with Newton-Schulz "
                    f"steps, which need a start near the set: the singular values of this "
                    f"kernel of shape {tuple(w.shape)}, divided by scale, lie in "
                    f"[{s.min():.3g}, {s.max():.3g}], not inside [{low}, {high}]. Project the "
                    "initial parameters first: params = jaxcons.apply_constraints(params, "
                    "rules)."
                )
        u = initial_vector(w.shape[-1], accumulation_dtype(w.dtype))
        return OrthogonalState(u=like_last_axis(u, w))

    def project(self, w: jax.Array, state: OrthogonalState) -> tuple[jax.Array, OrthogonalState]:
        """``n_iterations`` Newton-Schulz steps towards the set (no SVD), guarded against
        divergence by a power-iteration estimate of the largest singular value."""
        w = jnp.asarray(w)
        self.check(w.shape, "")
        kernel = w.astype(accumulation_dtype(w.dtype))
        sigma, u = power_iteration(kernel, state.u, _GUARD_POWER_ITERATIONS)
        y = ops.newton_schulz(w, self.scale, self.n_iterations, jax.lax.stop_gradient(sigma))
        return y, OrthogonalState(u=u)

    def tangent(self, w: jax.Array, g: jax.Array) -> jax.Array:
        """Projects ``g`` onto the tangent space at ``w`` of the scaled Stiefel manifold:
        ``G - W sym(W^T G) / s^2`` (``G - sym(G W^T) W / s^2`` for a wide kernel)."""
        w = jnp.asarray(w)
        self.check(w.shape, "")
        return ops.stiefel_tangent(w, jnp.asarray(g), self.scale)

    def get_config(self) -> dict[str, Any]:
        return {"scale": self.scale, "n_iterations": self.n_iterations}
