"""Penalties on groups and matrices: `OrthogonalRegularizer`, `GroupLasso`, `NuclearNorm`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxcons._src import validation
from jaxcons._src.base import Regularizer
from jaxcons._src.linalg import as_matrix, check_matrix, compose, like, svd
from jaxcons._src.matrix_stacks import MatrixStack, matrix_stack
from jaxcons._src.numerics import safe_norm, upcast
from jaxcons._src.validation import axis_argument, axis_config, resolve_axes


class OrthogonalRegularizer(Regularizer):
    """Encourages the rows (or columns) of a matrix to be orthogonal to each other.

    ``factor`` times the mean, over all pairs ``i < j``, of the absolute cosine between rows
    ``i`` and ``j`` (``mode="rows"``) or columns (``mode="columns"``):

    .. math:: R(X) = \\frac{f}{\\binom{n}{2}} \\sum_{i < j}
       \\frac{|\\langle x_i, x_j \\rangle|}{\\|x_i\\| \\, \\|x_j\\|}

    This is Keras 3's ``OrthogonalRegularizer`` (the same values), except at the edges: a zero
    row or column counts as orthogonal to the others with a finite gradient (Keras's gradient
    is NaN there), and a matrix with a single row or column has no pairs and a zero penalty
    (Keras returns NaN). Rank-2 parameters only; for a convolution kernel, regularize a reshaped
    view in your loss. It has no proximal operator: use it with `jaxcons.penalty` or
    `jaxcons.regularize`, not `jaxcons.proximal`.

    Args:
      factor: the factor (finite, ``>= 0``).
      mode: ``"rows"`` or ``"columns"``.

    Raises:
      ValueError: if ``factor`` is not a finite number ``>= 0`` or ``mode`` is unknown; when
        called on (or resolved against) a parameter whose rank is not 2.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.OrthogonalRegularizer(1.0)(jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
      Array(0.4714045, dtype=float32)
    """

    identifiers = ("orthogonal_regularizer",)
    keras_equivalent = "keras.regularizers.OrthogonalRegularizer"
    traced_once = False  # No proximal operator.

    def __init__(self, factor: float = 0.01, mode: Literal["rows", "columns"] = "rows"):
        self.factor = validation.factor("factor", factor)
        if not (isinstance(mode, str) and mode in ("rows", "columns")):
            raise ValueError(f"mode must be 'rows' or 'columns', got {mode!r}.")
        self.mode: Literal["rows", "columns"] = mode

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` unless ``shape`` has rank 2."""
        if len(shape) != 2:
            raise ValueError(
                f"OrthogonalRegularizer needs a rank-2 parameter; parameter {path!r} has shape "
                f"{tuple(shape)} (rank {len(shape)}). Exempt it with an earlier rule mapping it "
                f"to None, or regularize a reshaped view in the loss."
            )

    def __call__(self, x: jax.Array) -> jax.Array:
        self.check(x.shape, "<array>")
        return orthogonal_penalty(x, self.factor, self.mode)

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor, "mode": self.mode}


class GroupLasso(Regularizer):
    """The group lasso: the sum of the Euclidean norms of groups of weights.

    .. math:: R(W) = f \\sum_g \\|W_g\\|_2

    The norm is taken over the axes in ``axis``; every index of the remaining axes is one
    group. For a Dense kernel of shape ``(in, out)`` the default ``axis=0`` makes each column
    (the incoming weights of one unit) a group, so whole units are switched off; ``axis=1``
    makes each row (the outgoing weights of one input feature) a group, selecting features;
    for a Conv2D kernel ``(h, w, in, out)``, ``axis=[0, 1, 2]`` makes each filter a group. A
    rank-1 bias with ``axis=0`` is a single group. ``axis`` follows `MaxNorm`'s convention.

    Its proximal operator is block soft-thresholding, which sets every group whose norm is at
    most ``step * factor`` exactly to zero (see `jaxcons.proximal`). Zero groups have a finite
    value and gradient.

    References:
      Yuan and Lin, "Model selection and estimation in regression with grouped variables",
      JRSS B 68(1), 2006. Scardapane et al., "Group sparse regularization for deep neural
      networks", Neurocomputing 241, 2017.

    Args:
      factor: the factor ``f`` (finite, ``>= 0``).
      axis: an int, a negative int, or a non-empty list/tuple of ints (distinct axes).

    Raises:
      ValueError: if ``factor`` is not a finite number ``>= 0`` or ``axis`` is malformed; when
        an axis is out of range for a parameter's rank (naming the axis, path and shape).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.GroupLasso(1.0)(jnp.array([[3.0, 0.0], [4.0, 0.0]]))
      Array(5., dtype=float32)
    """

    identifiers = ("group_lasso",)
    traced_once = True

    def __init__(self, factor: float = 0.01, axis: int | Sequence[int] | None = 0):
        self.factor = validation.factor("factor", factor)
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` if an axis is out of range for ``shape``."""
        resolve_axes(self.axis, shape, path, "GroupLasso")

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = resolve_axes(self.axis, x.shape, "<array>", "GroupLasso")
        return group_lasso_penalty(x, self.factor, axes)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Block soft-thresholding: ``max(0, 1 - step * factor / ||x_g||) * x_g`` per group."""
        axes = resolve_axes(self.axis, x.shape, "<array>", "GroupLasso")
        return prox_group_lasso(x, step, self.factor, axes)

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor, "axis": axis_config(self.axis)}


class NuclearNorm(Regularizer):
    """The nuclear (trace) norm: the sum of a kernel's singular values.

    For the kernel viewed as a matrix (rank > 2 as ``(prod(shape[:-1]), shape[-1])``, like
    `SpectralNorm`):

    .. math:: R(W) = f \\sum_i \\sigma_i(W)

    the convex envelope of the rank on the spectral-norm ball: it favours low-rank kernels.
    Its proximal operator is singular-value soft thresholding,
    ``U max(Sigma - step * factor, 0) V^T``, which zeroes every singular value at most
    ``step * factor``: with `jaxcons.proximal` the kernel is exactly low rank (Cai, Candès
    and Shen, 2010). The value and its gradient ``f U V^T`` are finite everywhere (at a
    rank-deficient kernel the gradient is one subgradient). One SVD per call, in float32
    (float64 for float64 kernels); it gathers a sharded kernel.

    With ``batch_axes`` (after an optional ``view``), every index of those axes is its own
    matrix: the penalty is the sum of their nuclear norms, and the proximal step thresholds
    each one's singular values (one batched SVD, which a parameter sharded along a batch axis
    runs where it lives).

    Args:
      factor: the factor ``f`` (finite, ``>= 0``).
      batch_axes: axes (of ``view``, when given) whose every index is a separate matrix: an
        int or a tuple of ints; ``()`` (the default) for one matrix per parameter.
      view: ``None``, or a shape of the parameter's size to reshape it to before
        ``batch_axes`` apply.

    Raises:
      ValueError: if ``factor`` is not a finite number ``>= 0``; when applied to (or
        resolved against) a parameter of rank < 2, or one that ``view`` and ``batch_axes``
        do not fit (naming its path and shape).
      TypeError: for ``batch_axes`` or ``view`` that are not ints.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.NuclearNorm(0.5)(jnp.array([[3.0, 0.0], [0.0, -1.0]]))
      Array(2., dtype=float32)
      >>> jaxcons.NuclearNorm(0.5).prox(jnp.array([[3.0, 0.0], [0.0, -1.0]]), 2.0)
      Array([[2., 0.],
             [0., 0.]], dtype=float32)

    References:
      Fazel, "Matrix rank minimization with applications", PhD thesis, Stanford, 2002.
      Cai, Candès and Shen, "A singular value thresholding algorithm for matrix completion",
      SIAM J. Optim. 20(4), 2010.
    """

    identifiers = ("nuclear_norm",)
    traced_once = True

    def __init__(
        self,
        factor: float = 0.01,
        *,
        batch_axes: int | tuple[int, ...] = (),
        view: tuple[int, ...] | None = None,
    ):
        self.factor = validation.factor("factor", factor)
        self.matrix_stack: MatrixStack = matrix_stack("NuclearNorm", view, batch_axes)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` for a parameter of rank < 2, or one that ``view`` and
        ``batch_axes`` do not fit."""
        check_matrix("NuclearNorm", shape, path, self.matrix_stack)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        self.check(x.shape, "")
        stack = self.matrix_stack
        return self.factor * jnp.sum(stack.each(nuclear_norm)(stack.split(x)))

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Singular-value soft thresholding by ``step * factor``, of every matrix."""
        x = jnp.asarray(x)
        self.check(x.shape, "")
        threshold = jnp.asarray(step) * self.factor
        return self.matrix_stack.apply(lambda m: prox_nuclear_norm(m, threshold), x)

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor, **self.matrix_stack.config()}


Axes = tuple[int, ...]


def _gram_sharding(x: jax.Array) -> P | None:
    """``P()`` for an array on an ``Explicit`` mesh (where a contraction of sharded operands
    must name its output sharding), ``None`` (the compiler decides) otherwise."""
    mesh = jax.typeof(x).sharding.mesh
    return P() if AxisType.Explicit in getattr(mesh, "axis_types", ()) else None


def orthogonal_penalty(x: jax.Array, factor: float, mode: Literal["rows", "columns"]) -> jax.Array:
    """``factor`` times the mean of ``|cos|`` over all pairs ``i < j`` of rows (or columns).

    .. math:: R(X) = \\frac{f}{\\binom{n}{2}} \\sum_{i < j}
       \\frac{|\\langle x_i, x_j \\rangle|}{\\|x_i\\| \\, \\|x_j\\|}

    A zero row (column) counts as orthogonal to every other one; with fewer than two rows
    (columns) there are no pairs and the penalty is 0 (Keras divides by zero and returns NaN).
    """
    v = upcast(x)
    if mode == "columns":
        v = v.T
    n = v.shape[0]
    if n < 2:
        return jnp.zeros((), v.dtype)
    sq = jnp.sum(v * v, axis=1, keepdims=True)
    nonzero = sq > 0
    unit = jnp.where(nonzero, v * jax.lax.rsqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
    # Every pair of rows meets here: a kernel sharded along the rows is gathered (on an
    # Explicit mesh the contraction must be told so: the Gram matrix is replicated).
    gram = jnp.matmul(
        unit, unit.T, precision=jax.lax.Precision.HIGHEST, out_sharding=_gram_sharding(unit)
    )
    upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
    total = jnp.sum(jnp.where(upper, jnp.abs(gram), 0.0))
    return factor * total / (n * (n - 1) / 2)


def group_lasso_penalty(x: jax.Array, factor: float, axes: Axes) -> jax.Array:
    """``factor`` times the sum of the Euclidean norms taken over ``axes`` (one per group)."""
    return factor * jnp.sum(safe_norm(upcast(x), axes))


def prox_group_lasso(
    x: jax.Array, step: jax.typing.ArrayLike, factor: float, axes: Axes
) -> jax.Array:
    """The proximal operator of ``step * factor * sum_g ||z_g||``: block soft-thresholding.

    .. math:: \\operatorname{prox}(x)_g = \\max\\Big(0, 1 - \\frac{s f}{\\|x_g\\|}\\Big) x_g

    A group whose norm is at most ``step * factor`` becomes exactly zero as a whole.
    """
    y = upcast(x)
    t = jnp.asarray(step, y.dtype) * factor
    norm = safe_norm(y, axes)
    keep = norm > t
    scale = jnp.where(keep, 1.0 - t / jnp.where(keep, norm, 1.0), 0.0)
    return (y * scale).astype(x.dtype)


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
    u, s, vh = svd(matrix, zero)
    t = jnp.asarray(threshold, matrix.dtype)
    projected = compose(u, jnp.maximum(s - t, 0), vh)
    return jnp.where(zero, x, like(projected, x))
