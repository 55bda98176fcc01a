"""`Orthogonal`: the Stiefel manifold, by a polar factor or Newton-Schulz steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from jaxcons._src.base import StatefulConstraint
from jaxcons._src.linalg import (
    HIGHEST,
    as_matrix,
    check_matrix,
    initial_vector,
    like,
    like_batch_axes,
    like_last_axis,
    power_iteration,
    svd,
)
from jaxcons._src.matrix_stacks import ONE_MATRIX, MatrixStack, matrix_stack
from jaxcons._src.numerics import accumulation_dtype, exact_projection
from jaxcons._src.validation import positive_int, positive_number
from jaxcons.constraints._stiefel import (
    gram,
    gram_deviation,
    identity_like_gram,
    newton_schulz,
    stiefel_tangent,
    times_gram,
)

# The `Orthogonal` default, chosen by `benchmarks/orthogonal_iterations.py` (see BUILD.md).
DEFAULT_NEWTON_SCHULZ_ITERATIONS = 3

# `Orthogonal`'s default bound on its residual max |W^T W / s^2 - I| after each `project`.
DEFAULT_TOLERANCE = 1e-5

# Newton-Schulz steps `Orthogonal.project` adds where the first check fails, before a second
# check and the SVD: with the default three, five steps take a singular value of 0.5 (over
# scale) within 1e-6 of 1. Measured between them, each step would cost a nested `lax.cond`
# and one more kernel-sized buffer.
_EXTRA_ITERATIONS = 2


# `Orthogonal.init` accepts a start whose singular values (over `scale`) lie in this range:
# from there the Newton-Schulz steps of the first few updates bring it onto the set.
_START_RANGE = (0.5, 1.5)


# Power-iteration steps per `Orthogonal.project` for the divergence guard of `newton_schulz`.
_GUARD_POWER_ITERATIONS = 2


class OrthogonalState(NamedTuple):
    """State of `Orthogonal` for one kernel, carried in `jaxcons.ConstrainState`.

    Attributes:
      u: the unit-norm estimate of the kernel's top right singular vector (the kernel viewed
        as ``(rows, out)``), shape ``(out,)``, float32 (float64 for float64 kernels), sharded
        like the kernel's last axis where that is known. It warm-starts the power iteration
        that guards the Newton-Schulz steps against divergence. With ``batch_axes``, one
        vector per matrix: shape ``batch_shape + (columns,)``.
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
      Gram matrix is as close to ``s^2 I`` as the dtype allows (``max |W^T W / s^2 - I| <=
      attainable_tolerance(dtype)``, ``3.8e-6`` in float32, which the SVD's own polar factor
      meets: the projection is idempotent) comes back bit for bit; a zero kernel stays zero
      (it has no polar factor). On the set the derivative is the projection's own, the
      projection onto the tangent space (see `tangent`), not the identity; at zero it is the
      identity; no SVD derivative is evaluated at either. Elsewhere gradients are those of
      `jnp.linalg.svd`, undefined where two singular values coincide.
    * Inside `jaxcons.constrain` (`project`): ``n_iterations`` Newton-Schulz (Björck-Bowie)
      steps ``X <- X (3 I - X^T X) / 2`` on ``X = W / s``, only matrix products. Each step
      squares the distance to the set (an error ``e`` in a singular value becomes about
      ``1.5 e^2``). Then the result is certified: its residual

      .. math:: r(W) = \\max_{ij} \\bigl| G / s^2 - I \\bigr|_{ij}

      (max-abs, relative to ``s^2``; ``G`` the smaller Gram matrix, ``W^T W`` or ``W W^T``,
      of the kernel as returned, in its own dtype, multiplied out in float32, float64 for a
      float64 kernel) costs one more matrix product; it passes at ``tol - 16 eps`` (float32:
      a margin for its own rounding). Else 2 more steps and a second check, then the exact
      polar factor of the input (one SVD, which gathers a sharded kernel) follow, each behind
      a `jax.lax.cond`: a step that passes runs neither, but XLA keeps their buffers (a
      training step's temporaries grow by a few kernel sizes, BUILD.md). The guarantee: after
      every step ``r <= tol``, or the SVD's polar factor, the best the dtype holds (not
      checked again; ``r <= 7e-7`` in float32 on CPU, not yet measured on GPU). (Under a
      user's `jax.vmap` a `jax.lax.cond` on a batched predicate runs every branch, the SVD
      included: use ``batch_axes`` instead.)

    **Stacked matrices.** With ``batch_axes``, every index of those axes is its own matrix,
    made orthogonal on its own: ``Orthogonal(batch_axes=0)`` on mixture-of-experts weights
    ``(experts, d_in, d_out)`` makes every expert orthonormal. ``view`` first reshapes the
    parameter (same size): ``Orthogonal(view=(3 * heads, head_dim, dim), batch_axes=0)`` on
    a fused QKV weight ``(3 * heads * head_dim, dim)`` gives one matrix per head of q, k and
    v. Every step runs on all matrices at once (nested `jax.vmap`); each `jax.lax.cond` above
    is decided by one flag for the whole stack (whether any matrix failed its check) and
    replaces only the matrices that failed, so a parameter sharded along a batch axis moves
    only scalars across devices (that flag; a count that orders stacked parameters, see the
    "Lipschitz networks" guide), and the SVD runs only in the rare step that needs it.

    ``tol=None`` (the default) is ``max(1e-5, attainable_tolerance(dtype))``: ``1e-5`` for
    float32 and float64 kernels, ``2 eps`` of the dtype for bfloat16 (``0.0156``) and float16
    (``0.00195``), which the rounding of the result alone may use up: rounding each entry of
    an orthonormal ``Q`` by ``eps / 2`` moves each entry of ``Q^T Q`` by at most
    ``eps + eps^2 / 4`` (Cauchy-Schwarz). A smaller explicit ``tol`` is refused at `init`:
    ``attainable_tolerance`` is ``max(2 eps(dtype), 32 eps(float32))`` (``3.8e-6`` for
    float32), above float32's measured floor: the SVD's polar factor and the iteration's
    fixed point measured ``r <= 7e-7`` from 64x32 to 2048x2048, the float32 check's own
    rounding below ``2e-7`` (CPU; ``benchmarks/orthogonal_iterations.py``, BUILD.md). The
    steps also keep a guard: where a power-iteration estimate of the largest singular value,
    warm-started from `OrthogonalState` as in `SpectralNorm`, exceeds ``1.5 s`` (the
    iteration diverges above ``sqrt(3) s``) the kernel is divided by it first (the polar
    factor is the same). `init` rejects a concrete start whose singular values over ``s``
    lie outside ``[0.5, 1.5]``: project the initial parameters with
    `jaxcons.apply_constraints` first.

    `jaxcons.violations` stays the exact check, ``max |W - P(W)|`` against the exact polar
    factor ``P``: for a residual ``r`` it is at most ``s k r`` (``k`` the size of ``G``:
    ``|U D V^T|_{ij} <= |D|_2 <= |G / s^2 - I|_2 <= k r``).

    Its set is a smooth manifold (the Stiefel manifold): `tangent` projects an update onto
    the tangent space, ``G - W sym(W^T G) / s^2``, for `jaxcons.tangent` (Riemannian steps
    with this constraint as the retraction).

    Args:
      scale: the scale ``s > 0`` (finite) of the orthonormal columns.
      n_iterations: Newton-Schulz steps per `project` call (a positive int).
      tol: the bound on the residual ``r`` after each `project` (finite, in ``(0, 1)``), or
        ``None``: ``max(1e-5, attainable_tolerance(dtype))``.
      batch_axes: axes (of ``view``, when given) whose every index is a separate matrix: an
        int or a tuple of ints; ``()`` (the default) for one matrix per parameter.
      view: ``None``, or a shape of the parameter's size to reshape it to before
        ``batch_axes`` apply.

    Raises:
      TypeError: for ``batch_axes`` or ``view`` that are not ints.
      ValueError: at construction, for a ``scale`` that is not finite and > 0, an
        ``n_iterations`` that is not a positive int or a ``tol`` that is not ``None`` or a
        finite number in ``(0, 1)``; when applied, for a parameter of rank < 2; at `init`,
        for a concrete start too far from the set or a ``tol`` below what the kernel's dtype
        attains; when applied, naming the path and shape, for a parameter the view does not
        fit, a batch axis out of range or repeated, or batch axes that leave fewer than two
        matrix axes.

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
      >>> c.tolerance(jnp.float32), c.tolerance(jnp.bfloat16)  # tol=None: by dtype.
      (1e-05, 0.015625)

    References:
      Björck and Bowie, "An iterative algorithm for computing the best estimate of an
      orthogonal matrix", SIAM J. Numer. Anal. 8(2), 1971. Higham, "Functions of Matrices",
      SIAM 2008, ch. 8. Cissé, Bojanowski, Grave, Dauphin and Usunier, "Parseval networks:
      improving robustness to adversarial examples", ICML 2017. Absil, Mahony and Sepulchre,
      "Optimization Algorithms on Matrix Manifolds", Princeton 2008.
    """

    identifiers = ("orthogonal",)
    traced_once = False  # It keeps state.
    convex = False  # The Stiefel manifold.
    elementwise_bounds = None

    def __init__(
        self,
        scale: float = 1.0,
        n_iterations: int = DEFAULT_NEWTON_SCHULZ_ITERATIONS,
        tol: float | None = None,
        *,
        batch_axes: int | tuple[int, ...] = (),
        view: tuple[int, ...] | None = None,
    ):
        self.scale = positive_number("scale", scale)
        self.n_iterations = positive_int("n_iterations", n_iterations)
        self.tol = None if tol is None else positive_number("tol", tol)
        if self.tol is not None and self.tol >= 1:
            raise ValueError(
                "Orthogonal tol must be < 1 (a relative residual max |W^T W / s^2 - I|), "
                f"got {tol!r}."
            )
        self.matrix_stack: MatrixStack = matrix_stack("Orthogonal", view, batch_axes)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        check_matrix("Orthogonal", shape, path, self.matrix_stack)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        tolerance = attainable_tolerance(w.dtype)
        return self.matrix_stack.apply(lambda m: polar(m, self.scale, tolerance), w)

    def init(self, w: jax.Array) -> OrthogonalState:
        """Checks that a concrete start is near the set (see the class) and returns the start
        of the guard's power iteration: a fixed random unit vector (drawn with key 0; on the
        set every direction is a top singular direction)."""
        w = jnp.asarray(w)
        self.check(w.shape, "")
        self.tolerance(w.dtype)
        stack = self.matrix_stack
        kernels = stack.split(w)
        batch = kernels.shape[: len(stack.batch_axes)]
        out = kernels.shape[-1]
        if not isinstance(w, jax.core.Tracer):
            matrices = np.asarray(kernels.astype(accumulation_dtype(w.dtype)))
            matrices = matrices.reshape((*batch, -1, out))
            s = np.linalg.svd(matrices, compute_uv=False) / self.scale
            low, high = _START_RANGE
            if s.size and not (s.min() >= low and s.max() <= high):
                bad = (s.min(axis=-1) < low) | (s.max(axis=-1) > high)
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                which = f"matrix {first} (batch index) of " if batch else ""
                s = s[first]
                raise ValueError(
                    f"{self!r} inside jaxcons.constrain refines the kernel with Newton-Schulz "
                    f"steps, which need a start near the set: the singular values of {which}this "
                    f"kernel of shape {tuple(w.shape)}, divided by scale, lie in "
                    f"[{s.min():.3g}, {s.max():.3g}], not inside [{low}, {high}]. Project the "
                    "initial parameters first: params = jaxcons.apply_constraints(params, "
                    "rules)."
                )
        u = initial_vector(out, accumulation_dtype(w.dtype))
        if not stack.trivial:
            u = jnp.broadcast_to(u, (*batch, out))
            return OrthogonalState(u=like_batch_axes(u, kernels, len(batch)))
        return OrthogonalState(u=like_last_axis(u, w))

    def project(self, w: jax.Array, state: OrthogonalState) -> tuple[jax.Array, OrthogonalState]:
        """``n_iterations`` Newton-Schulz steps towards the set, guarded against divergence
        by a power-iteration estimate of the largest singular value, then a certificate: more
        steps or one SVD where the residual exceeds `tolerance`."""
        w = jnp.asarray(w)
        self.check(w.shape, "")
        tol = self.tolerance(w.dtype)
        stack, scale, n = self.matrix_stack, self.scale, self.n_iterations

        def steps(w: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
            kernel = w.astype(accumulation_dtype(w.dtype))
            sigma, u = power_iteration(kernel, u, _GUARD_POWER_ITERATIONS)
            return newton_schulz(w, scale, n, jax.lax.stop_gradient(sigma)), u

        kernels = stack.split(w)
        u = like_batch_axes(state.u, kernels, len(stack.batch_axes))
        y, u = stack.each(steps)(kernels, u)
        y = certify(kernels, y, scale, tol, stack)
        return stack.merge(y, w.shape), OrthogonalState(u=u)

    def tolerance(self, dtype: Any) -> float:
        """The bound on the residual ``max |W^T W / s^2 - I|`` that `project` certifies for a
        kernel of ``dtype``: ``tol``, or by default ``max(1e-5, attainable_tolerance(dtype))``.

        Raises:
          ValueError: for an explicit ``tol`` below ``attainable_tolerance`` of ``dtype``.
        """
        floor = attainable_tolerance(dtype)
        if self.tol is None:
            return max(DEFAULT_TOLERANCE, floor)
        if self.tol < floor:
            raise ValueError(
                f"{self!r} asks for max |W^T W / s^2 - I| <= {self.tol:g} on a "
                f"{np.dtype(dtype).name} kernel, but the smallest it can attain is {floor:.3g} "
                "(max(2 eps of the dtype, 32 eps of float32): the rounding of an exact polar "
                f"factor). Use tol >= {floor:.3g}, or tol=None (the default, "
                f"{max(DEFAULT_TOLERANCE, floor):.3g} here)."
            )
        return self.tol

    def tangent(self, w: jax.Array, g: jax.Array) -> jax.Array:
        """Projects ``g`` onto the tangent space at ``w`` of the scaled Stiefel manifold:
        ``G - W sym(W^T G) / s^2`` (``G - sym(G W^T) W / s^2`` for a wide kernel)."""
        w = jnp.asarray(w)
        self.check(w.shape, "")
        scale = self.scale
        return self.matrix_stack.apply(lambda a, b: stiefel_tangent(a, b, scale), w, jnp.asarray(g))

    def get_config(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "n_iterations": self.n_iterations,
            "tol": self.tol,
            **self.matrix_stack.config(),
        }


def polar(w: jax.Array, scale: float, tolerance: float) -> jax.Array:
    """``scale`` times the orthogonal polar factor of ``w``: the nearest matrix with orthonormal
    columns (rows, for a wide kernel), scaled.

    .. math:: P(W) = s\\, U V^\\top \\quad\\text{for } W = U \\Sigma V^\\top

    ``w`` itself is returned when `gram_deviation` is at most ``tolerance``; a zero kernel
    stays zero. The derivative there is the polar map's own (`exact_projection`): on the set,
    the projection onto its tangent space (`stiefel_tangent`), no SVD derivative evaluated
    (all singular values coincide there); at zero, the identity.
    """

    def project(w: jax.Array) -> tuple[jax.Array, jax.Array]:
        matrix = as_matrix(w)
        zero = jnp.all(matrix == 0)
        feasible = gram_deviation(w, scale) <= tolerance
        u, _, vh = svd(matrix, zero | feasible)
        projected = scale * jnp.matmul(u, vh, precision=HIGHEST)
        return like(projected, w), ~(feasible | zero)

    return exact_projection(project, w, on_set=lambda w, dw: stiefel_tangent(w, dw, scale))


def attainable_tolerance(dtype: Any) -> float:
    """The smallest residual tolerance `Orthogonal` certifies for kernels of ``dtype``:
    ``max(2 eps(dtype), 32 eps(accumulation dtype))``.

    Rounding an orthonormal ``Q`` to ``dtype`` (each entry by at most ``eps / 2``) moves each
    entry of ``Q^T Q`` by at most ``eps + eps^2 / 4``; in float32 the SVD's polar factor and
    the Newton-Schulz fixed point measured ``max |Q^T Q - I| <= 7e-7`` (about ``6 eps``) up to
    2048x2048 (BUILD.md).
    """
    dtype = np.dtype(dtype)
    wide = float(jnp.finfo(accumulation_dtype(dtype)).eps)
    return max(2 * float(jnp.finfo(dtype).eps), 32 * wide)


def certify(
    w: jax.Array,
    y: jax.Array,
    scale: float,
    tol: float,
    stack: MatrixStack = ONE_MATRIX,
) -> jax.Array:
    """``y``, an approximation of ``scale`` times the polar factor of each matrix of ``w``
    (both split by ``stack``; ``w``'s shape and dtype), where its residual ``max |G / s^2 -
    I|`` is at most ``tol``.

    ``G`` is the smaller Gram matrix of ``y`` as returned (its own dtype, multiplied out in
    the accumulation dtype): one matrix product. A measured residual passes at
    ``tol - 16 eps`` of the accumulation dtype (``1.9e-6`` in float32): a margin for the
    check's own rounding (measured up to ``2e-7``). Above it, `_EXTRA_ITERATIONS` more
    Newton-Schulz steps from ``y`` (the first one product: ``G`` is at hand) and a second
    check; above that, the exact polar factor of ``w`` by one SVD. Each choice is a
    `jax.lax.cond` on one flag for the whole stack (any matrix failing), and only the matrices
    that failed are replaced. A NaN residual fails every check, so a diverged iteration ends
    at the SVD.
    """
    dtype = accumulation_dtype(w.dtype)
    passing = tol - 16 * float(jnp.finfo(dtype).eps)
    each = stack.each

    def measured(y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        z = y.astype(dtype)
        g = gram(z) / (scale * scale)
        x = z / scale
        return x, g, jnp.max(jnp.abs(g - identity_like_gram(x)))

    def steps(x: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        for k in range(_EXTRA_ITERATIONS):
            x = 1.5 * x - 0.5 * times_gram(x, g if k == 0 else gram(x))
        y = (scale * x).astype(w.dtype)
        return y, measured(y)[2]

    x, g, r = each(measured)(y)
    first = r <= passing

    def refine() -> jax.Array:
        refined, r2 = each(steps)(x, g)
        second = r2 <= passing

        def exact() -> jax.Array:
            return stack.select(second, refined, each(lambda m: _svd_polar(m, scale))(w))

        refined = jax.lax.cond(jnp.all(second), lambda: refined, exact)
        return stack.select(first, y, refined)

    return jax.lax.cond(jnp.all(first), lambda: y, refine)


def _svd_polar(w: jax.Array, scale: float) -> jax.Array:
    """``scale`` times the polar factor of ``w`` by one SVD (of the whole matrix: on a mesh it
    is gathered); for a zero kernel, the SVD's choice of orthonormal factors."""
    u, _, vh = jnp.linalg.svd(as_matrix(w), full_matrices=False)
    return like(scale * jnp.matmul(u, vh, precision=HIGHEST), w)
