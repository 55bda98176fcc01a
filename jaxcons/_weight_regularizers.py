"""The built-in weight regularizers: thin classes over the math in `jaxcons._penalty_math`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxcons import _matrix_math, _validation
from jaxcons import _penalty_math as ops
from jaxcons._protocol import Regularizer
from jaxcons._validation import axis_argument, axis_config, resolve_axes

__all__ = ["GroupLasso", "L1", "L1L2", "L2", "NuclearNorm", "OrthogonalRegularizer"]


class L1(Regularizer):
    """The L1 (lasso) penalty.

    .. math:: R(x) = \\ell_1 \\sum_i |x_i|

    Its proximal operator is soft-thresholding by ``step * l1``, which sets small weights to
    exactly zero (see `jaxcons.proximal`).

    Args:
      l1: the factor (finite, ``>= 0``). The string identifier ``"l1"`` gives 0.01.

    Raises:
      ValueError: if ``l1`` is not a finite number ``>= 0``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.L1(0.1)(jnp.array([[1.0, -2.0], [0.0, 3.0]]))
      Array(0.6, dtype=float32)
    """

    def __init__(self, l1: float = 0.01):
        self.l1 = _validation.factor("l1", l1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.l1_penalty(x, self.l1)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Soft-thresholding: ``sign(x) * max(|x| - step * l1, 0)``."""
        return ops.prox_l1_l2(x, step, self.l1, 0.0)

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1}


class L2(Regularizer):
    """The L2 (ridge, weight decay) penalty.

    .. math:: R(x) = \\ell_2 \\sum_i x_i^2

    Its proximal operator is the shrinkage ``x / (1 + 2 * step * l2)``.

    Args:
      l2: the factor (finite, ``>= 0``). The string identifier ``"l2"`` gives 0.01.

    Raises:
      ValueError: if ``l2`` is not a finite number ``>= 0``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.L2(2.0)(jnp.ones((5, 5)))
      Array(50., dtype=float32)
    """

    def __init__(self, l2: float = 0.01):
        self.l2 = _validation.factor("l2", l2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.l2_penalty(x, self.l2)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Shrinkage: ``x / (1 + 2 * step * l2)``."""
        return ops.prox_l1_l2(x, step, 0.0, self.l2)

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2}


class L1L2(Regularizer):
    """The L1 and L2 penalties together (the elastic net).

    .. math:: R(x) = \\ell_1 \\sum_i |x_i| + \\ell_2 \\sum_i x_i^2

    Both factors default to 0.0, as in Keras. The string identifier ``"l1_l2"`` gives
    ``L1L2(l1=0.01, l2=0.01)``, as the Keras documentation promises (Keras 3 itself rejects
    ``"l1_l2"`` and maps ``"l1l2"`` to a zero penalty). Its proximal operator soft-thresholds
    by ``step * l1`` and then shrinks by ``1 / (1 + 2 * step * l2)``.

    Args:
      l1: the L1 factor (finite, ``>= 0``).
      l2: the L2 factor (finite, ``>= 0``).

    Raises:
      ValueError: if a factor is not a finite number ``>= 0``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.L1L2(l1=0.1, l2=0.2)(jnp.array([1.0, -2.0]))
      Array(1.3, dtype=float32)
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = _validation.factor("l1", l1)
        self.l2 = _validation.factor("l2", l2)

    def __call__(self, x: jax.Array) -> jax.Array:
        terms = []
        if self.l1 != 0:
            terms.append(ops.l1_penalty(x, self.l1))
        if self.l2 != 0:
            terms.append(ops.l2_penalty(x, self.l2))
        if not terms:
            return super().__call__(x)
        return ops.add_penalties(terms)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Elastic-net proximal step: soft-threshold by ``step * l1``, then shrink."""
        return ops.prox_l1_l2(x, step, self.l1, self.l2)

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1, "l2": self.l2}


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

    def __init__(self, factor: float = 0.01, mode: Literal["rows", "columns"] = "rows"):
        self.factor = _validation.factor("factor", factor)
        if not (isinstance(mode, str) and mode in ("rows", "columns")):
            raise ValueError(f"mode must be 'rows' or 'columns', got {mode!r}.")
        self.mode = mode

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
        return ops.orthogonal_penalty(x, self.factor, self.mode)

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

    def __init__(self, factor: float = 0.01, axis: int | Sequence[int] | None = 0):
        self.factor = _validation.factor("factor", factor)
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` if an axis is out of range for ``shape``."""
        resolve_axes(self.axis, shape, path, "GroupLasso")

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = resolve_axes(self.axis, x.shape, "<array>", "GroupLasso")
        return ops.group_lasso_penalty(x, self.factor, axes)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Block soft-thresholding: ``max(0, 1 - step * factor / ||x_g||) * x_g`` per group."""
        axes = resolve_axes(self.axis, x.shape, "<array>", "GroupLasso")
        return ops.prox_group_lasso(x, step, self.factor, axes)

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

    Args:
      factor: the factor ``f`` (finite, ``>= 0``).

    Raises:
      ValueError: if ``factor`` is not a finite number ``>= 0``; when applied to (or
        resolved against) a parameter of rank < 2 (naming its path and shape).

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

    def __init__(self, factor: float = 0.01):
        self.factor = _validation.factor("factor", factor)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` for a parameter of rank < 2."""
        _matrix_math.check_matrix("NuclearNorm", shape, path)

    def __call__(self, x: jax.Array) -> jax.Array:
        self.check(x.shape, "")
        return self.factor * _matrix_math.nuclear_norm(x)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Singular-value soft thresholding by ``step * factor``."""
        self.check(x.shape, "")
        return _matrix_math.prox_nuclear_norm(x, jnp.asarray(step) * self.factor)

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor}
