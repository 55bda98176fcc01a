"""L1 balls and simplices on slices of a parameter: `L1Ball`, `Simplex`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp

from jaxcons._src.base import Constraint
from jaxcons._src.numerics import accumulation_dtype, exact_projection
from jaxcons._src.schedules import Evaluated, schedulable
from jaxcons._src.validation import axis_argument, axis_config, positive_number, resolve_axes


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

    identifiers = ("l1_ball",)
    traced_once = False
    convex = True
    elementwise_bounds = None

    def __init__(self, radius: float = 1.0, axis: int | Sequence[int] | None = 0):
        self._radius = schedulable("radius", radius, positive_number)
        self.radius = radius
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        resolve_axes(self.axis, shape, path, type(self).__name__)

    def __call__(self, w: jax.Array) -> jax.Array:
        axes = resolve_axes(self.axis, jnp.shape(w), "<array>", type(self).__name__)
        return l1_ball(w, cast(Evaluated, self._radius), axes)

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

    identifiers = ("simplex",)
    traced_once = False
    convex = True
    elementwise_bounds = None

    def __init__(self, total: float = 1.0, axis: int | Sequence[int] | None = 0):
        self._total = schedulable("total", total, positive_number)
        self.total = total
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        resolve_axes(self.axis, shape, path, type(self).__name__)

    def __call__(self, w: jax.Array) -> jax.Array:
        axes = resolve_axes(self.axis, jnp.shape(w), "<array>", type(self).__name__)
        return simplex(w, cast(Evaluated, self._total), axes)

    def get_config(self) -> dict[str, Any]:
        return {"total": self.total, "axis": axis_config(self.axis)}


def threshold_iterations(dtype: Any) -> int:
    """The cap on `_threshold`'s iterations for inputs of ``dtype``: mantissa bits + 8.

    Each iteration at least halves the bracket around the threshold, so after this many the
    bracket is below 1/256 of an ulp of the largest entry even if the Newton steps never
    finished early (on the tests' data the result is final after at most 3).
    """
    return int(jnp.finfo(accumulation_dtype(dtype)).nmant) + 8


def _threshold(x: jax.Array, axes: tuple[int, ...], total: Evaluated) -> jax.Array:
    """The ``theta`` (per slice along ``axes``, keepdims) with ``sum(max(x - theta, 0)) = total``.

    ``f(t) = sum(max(x - t, 0))`` is convex, piecewise linear and decreasing, so Newton's
    method started below the root (Michelot's algorithm) climbs to it monotonically and lands
    on it exactly once the support ``{x > t}`` is right. Each iteration takes that Newton step
    from the lower end ``lo`` of a bracket ``[lo, hi]`` and also tests the bracket's midpoint,
    so the bracket at least halves whatever the data; the loop stops when no slice's Newton
    step moves any more (or after `threshold_iterations`). Only elementwise operations and
    reductions over ``axes`` are used, no sort: a slice sharded across devices all-reduces a
    few numbers per slice per iteration. The iterations run on ``stop_gradient(x)``; the
    result is the closed form ``(sum_S x - total) / |S|`` on the support ``S`` they found,
    differentiable in ``x`` (the projection's Jacobian almost everywhere).

    Starting bracket (``n`` entries per slice, ``m = max x``): ``f(m - total) >= total`` and
    ``f(m - total / n) <= total``, and ``(sum x - total) / n`` is Michelot's start (a lower
    bound); ``lo`` stays strictly below ``m`` so the support is never empty.
    """
    n = math.prod(x.shape[a] for a in axes)
    xs = jax.lax.stop_gradient(x)
    top = jnp.max(xs, axis=axes, keepdims=True)
    below_top = jnp.nextafter(top, jnp.full_like(top, -jnp.inf))

    def support(t: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
        inside = xs > t
        count = jnp.sum(inside, axis=axes, keepdims=True, dtype=jnp.int32)
        return jnp.sum(jnp.where(inside, values, 0), axis=axes, keepdims=True), count

    def newton(t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The Newton step from ``t`` (kept below the top), and ``f(t) - total``."""
        mass, count = support(t, xs)
        step = (mass - total) / jnp.maximum(count, 1).astype(x.dtype)
        return jnp.minimum(step, below_top), mass - count.astype(x.dtype) * t - total, count

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        i, lo, hi, _ = carry
        lo_step, _, _ = newton(lo)
        done = jnp.all(lo_step <= lo)  # No slice's Newton step moves: every lo is its root.
        lo = jnp.maximum(lo, lo_step)
        mid = (lo + hi) / 2
        mid_step, excess, _ = newton(mid)
        mid_is_low = excess >= 0  # mid <= theta: a lower bound, and so is its Newton step.
        lo = jnp.where(mid_is_low, jnp.maximum(lo, mid_step), lo)
        hi = jnp.where(mid_is_low, hi, mid)
        return i + 1, lo, hi, done

    def more(carry: tuple[Any, ...]) -> jax.Array:
        i, _, _, done = carry
        return (i < threshold_iterations(x.dtype)) & ~done

    start = (jnp.sum(xs, axis=axes, keepdims=True) - total) / n
    lo = jnp.minimum(jnp.maximum(top - total, start), below_top)
    hi = top - total / n
    _, lo, _, _ = jax.lax.while_loop(more, body, (0, lo, hi, jnp.array(False)))
    mass, count = support(lo, x)
    return (mass - total) / jnp.maximum(count, 1).astype(x.dtype)


def l1_ball(w: jax.Array, radius: Evaluated, axes: tuple[int, ...]) -> jax.Array:
    """Projects every slice of ``w`` along ``axes`` onto the L1 ball of radius ``radius > 0``.

    .. math:: P(v) = \\operatorname{sign}(v) \\max(|v| - \\theta, 0), \\quad
       \\textstyle\\sum_i \\max(|v_i| - \\theta, 0) = r

    for slices with ``||v||_1 > r``; slices inside the ball come back bit for bit, with the
    identity as derivative (on the sphere ``||v||_1 = r``, where ``P`` has none, the one from
    inside; `exact_projection`).
    """

    def project(w: jax.Array, radius: Evaluated) -> tuple[jax.Array, jax.Array]:
        x = jnp.abs(w.astype(accumulation_dtype(w.dtype)))
        inside = jnp.sum(x, axis=axes, keepdims=True) <= radius
        theta = _threshold(x, axes, radius)
        y = jnp.sign(w).astype(x.dtype) * jnp.maximum(x - theta, 0)
        return y.astype(w.dtype), ~inside

    return exact_projection(project, jnp.asarray(w), radius, on_set=lambda w, dw: dw)


def simplex(w: jax.Array, total: Evaluated, axes: tuple[int, ...]) -> jax.Array:
    """Projects every slice of ``w`` along ``axes`` onto ``{v >= 0, sum(v) = total}``.

    .. math:: P(v) = \\max(v - \\theta, 0), \\quad \\textstyle\\sum_i \\max(v_i - \\theta, 0) = s

    A slice already on the simplex whose sum is exactly ``total`` has ``theta = 0`` and comes
    back bit for bit.
    """
    w = jnp.asarray(w)
    x = w.astype(accumulation_dtype(w.dtype))
    return jnp.maximum(x - _threshold(x, axes, total), 0).astype(w.dtype)
