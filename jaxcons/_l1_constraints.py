"""L1 balls and simplices on slices of a parameter: `L1Ball`, `Simplex`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcons._projections import l1_ball, simplex
from jaxcons._protocol import Constraint
from jaxcons._schedules import schedulable
from jaxcons._validation import (
    axis_argument,
    axis_config,
    positive_number,
    resolve_axes,
)

__all__ = ["L1Ball", "Simplex"]


class L1Ball(Constraint):
    """Caps the L1 norm of every slice: the projection onto an L1 ball.

    For every slice ``v`` of ``w`` spanning ``axis`` (as in `MaxNorm`) with ``||v||_1 > r``:

    .. math:: P(v) = \\operatorname{sign}(v) \\max(|v| - \\theta, 0), \\qquad
       \\sum_i \\max(|v_i| - \\theta, 0) = r

    a soft-thresholding that sets the smallest entries exactly to zero (Duchi et al., 2008).
    Slices inside the ball come back bit for bit. The threshold ``theta`` is found without a
    sort, by Newton steps from below safeguarded by bisection on ``theta``, each a pass of
    elementwise operations and sums over the slice: a slice sharded across devices is never
    gathered (its sums are all-reduced), and the result matches the sort-based algorithm to
    rounding. The iterations stop once the support ``{|v| > theta}`` is found (on the
    tests' data the result is final after at most 3 iterations, and one more confirms it;
    capped at the mantissa width + 8); the final ``theta`` is the closed form on that
    support, differentiable. Sums accumulate in at least float32; shape and dtype are kept.
    Each ``|v_i| - theta`` is rounded once, so the result's L1 norm may exceed ``r`` by up to
    about one ulp of each ``|v_i|`` (as with any floating-point projection).

    Args:
      radius: the radius ``r > 0``, or an optax schedule of it (evaluated at
        `jaxcons.constrain`'s step count).
      axis: the axis (or list/tuple of axes) each slice spans; ``None`` for the whole tensor.
        ``0`` for a Dense kernel ``(in, out)`` bounds each column.

    Raises:
      ValueError: at construction, for a ``radius`` that is not a finite number ``> 0`` or a
        malformed ``axis``; when applied, for an ``axis`` out of range for the parameter
        (the message names the axis, the path and the shape).

    References:
      Duchi, Shalev-Shwartz, Singer and Chandra, 2008. `Efficient Projections onto the
      l1-Ball for Learning in High Dimensions <https://doi.org/10.1145/1390156.1390191>`_.
      ICML. Michelot, 1986. A finite algorithm for finding the projection of a point onto
      the canonical simplex of R^n. JOTA 50(1).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import L1Ball
      >>> L1Ball(radius=1.0)(jnp.array([[3.0, 0.25], [-1.0, 0.25]]))  # Column L1 norms 4, 0.5.
      Array([[ 1.  ,  0.25],
             [-0.  ,  0.25]], dtype=float32)
    """

    def __init__(self, radius: float = 1.0, axis: int | Sequence[int] | None = 0):
        self._radius = schedulable("radius", radius, positive_number)
        self.radius = radius
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        resolve_axes(self.axis, shape, path, type(self).__name__)

    def __call__(self, w: jax.Array) -> jax.Array:
        axes = resolve_axes(self.axis, jnp.shape(w), "<array>", type(self).__name__)
        return l1_ball(w, self._radius, axes)

    def get_config(self) -> dict[str, Any]:
        return {"radius": self.radius, "axis": axis_config(self.axis)}


class Simplex(Constraint):
    """Makes every slice non-negative with a fixed sum: the projection onto a simplex.

    For every slice ``v`` of ``w`` spanning ``axis`` (as in `MaxNorm`):

    .. math:: P(v) = \\max(v - \\theta, 0), \\qquad \\sum_i \\max(v_i - \\theta, 0) = s

    the closest point with ``v >= 0`` and ``sum(v) = s`` (Duchi et al., 2008): mixture
    weights, attention-like rows, probability vectors. ``theta`` is found as in `L1Ball`
    (sort-free, exact to rounding, no gather of a sharded slice). A slice on the simplex
    whose sum is exactly ``s`` in float comes back bit for bit; a zero slice becomes the
    uniform ``s / n``. Sums accumulate in at least float32; shape and dtype are kept, and the
    sum of the result is ``s`` up to rounding in the parameter's dtype.

    Args:
      total: the sum ``s > 0`` of every slice, or an optax schedule of it.
      axis: the axis (or list/tuple of axes) each slice spans; ``None`` for the whole tensor.

    Raises:
      ValueError: at construction, for a ``total`` that is not a finite number ``> 0`` or a
        malformed ``axis``; when applied, for an ``axis`` out of range for the parameter.

    References:
      Duchi, Shalev-Shwartz, Singer and Chandra, 2008. `Efficient Projections onto the
      l1-Ball for Learning in High Dimensions <https://doi.org/10.1145/1390156.1390191>`_.
      ICML. Condat, 2016. `Fast projection onto the simplex and the l1 ball
      <https://doi.org/10.1007/s10107-015-0946-6>`_. Math. Program. 158.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import Simplex
      >>> Simplex(axis=-1)(jnp.array([[2.0, 0.0, 1.0], [0.5, 0.25, 0.25]]))
      Array([[1.  , 0.  , 0.  ],
             [0.5 , 0.25, 0.25]], dtype=float32)
    """

    def __init__(self, total: float = 1.0, axis: int | Sequence[int] | None = 0):
        self._total = schedulable("total", total, positive_number)
        self.total = total
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        resolve_axes(self.axis, shape, path, type(self).__name__)

    def __call__(self, w: jax.Array) -> jax.Array:
        axes = resolve_axes(self.axis, jnp.shape(w), "<array>", type(self).__name__)
        return simplex(w, self._total, axes)

    def get_config(self) -> dict[str, Any]:
        return {"total": self.total, "axis": axis_config(self.axis)}
