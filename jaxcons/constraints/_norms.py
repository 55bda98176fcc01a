"""Norm bounds on slices of a parameter: `MaxNorm`, `MinMaxNorm`, `UnitNorm`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp

from jaxcons._src.base import Constraint
from jaxcons._src.numerics import accumulation_dtype, exact_projection, safe_norm
from jaxcons._src.schedules import Evaluated, schedulable, start
from jaxcons._src.validation import axis_argument, axis_config, real_number, resolve_axes


def _nonnegative(name: str, value: Any) -> float:
    return real_number(name, value, minimum=0.0)


def _rate(name: str, value: Any) -> float:
    rate = real_number(name, value)
    if not 0 < rate <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}.")
    return rate


def _axes(c: Any, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    return resolve_axes(c.axis, shape, path, type(c).__name__)


class MaxNorm(Constraint):
    """Caps the norm of the weights incident to each unit: projection onto a ball.

    For every vector ``v`` of ``w`` along ``axis`` (the incoming weights of one unit):

    .. math:: P(v) = v \\cdot \\min\\left(1, \\frac{c}{\\|v\\|_2}\\right)

    Keras's max-norm constraint, popularised with dropout by Srivastava et al. (2014). Unlike
    Keras, which multiplies every vector by ``min(n, c) / (n + 1e-7)``, vectors with
    ``||v|| <= c`` come back unchanged bit for bit, and only vectors outside the ball are
    rescaled; elsewhere the two agree to ~``1e-7 / ||v||`` relative. Zero vectors stay zero
    with a finite gradient. Norms accumulate in at least float32; shape and dtype are kept.

    Args:
      max_value: the radius ``c >= 0`` (``0`` projects every vector to zero), or an optax
        schedule of it, evaluated at `jaxcons.constrain`'s step count (``MaxNorm(
        optax.linear_schedule(4.0, 1.0, 1000))`` tightens the bound over training).
      axis: the axis (or list/tuple of axes) the norms run over; negative values count from
        the end; ``None`` takes one norm over the whole tensor (as Keras configs may say).
        ``0`` for a Dense kernel ``(in, out)`` constrains each column; ``[0, 1, 2]`` for a
        Conv2D kernel ``(rows, cols, in, out)`` each filter.

    Raises:
      ValueError: at construction, for a negative or non-finite ``max_value`` or a malformed
        ``axis``; when applied, for an ``axis`` out of range for the parameter's rank (the
        message names the axis, the parameter's path and its shape).

    References:
      Srivastava et al., 2014. `Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting <https://jmlr.org/papers/v15/srivastava14a.html>`_. JMLR 15(56).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import MaxNorm
      >>> w = jnp.array([[3.0, 0.3], [4.0, 0.4]])  # Column norms 5 and 0.5.
      >>> MaxNorm(max_value=1.0, axis=0)(w)
      Array([[0.6, 0.3],
             [0.8, 0.4]], dtype=float32)
    """

    identifiers = ("max_norm", "maxnorm")
    keras_equivalent = "keras.constraints.MaxNorm"
    traced_once = True
    convex = True
    elementwise_bounds = None

    def __init__(self, max_value: float = 2.0, axis: int | Sequence[int] | None = 0):
        self._max = schedulable("max_value", max_value, _nonnegative)
        self.max_value = max_value
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        _axes(self, shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        return max_norm(w, cast(Evaluated, self._max), _axes(self, jnp.shape(w), "<array>"))

    def get_config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "axis": axis_config(self.axis)}


class MinMaxNorm(Constraint):
    """Keeps the norm of the weights incident to each unit inside ``[min_value, max_value]``.

    For every non-zero vector ``v`` of ``w`` along ``axis`` whose norm ``n`` lies outside
    ``[a, b]``, the norm is moved a fraction ``r`` of the way into the interval:

    .. math:: P(v) = v \\cdot \\frac{r\\,\\mathrm{clip}(n, a, b) + (1 - r)\\,n}{n}

    With ``rate=1`` this is the projection onto the shell ``a <= ||v|| <= b``; with
    ``rate < 1`` out-of-range norms approach the interval over repeated steps. Vectors already
    inside come back unchanged bit for bit (Keras rescales them by ``n / (n + 1e-7)``); zero
    vectors have no direction and stay zero, with a finite gradient. The derivative there is
    the identity, except with ``min_value == max_value`` (a sphere), where it is that of the
    formula (for ``rate=1`` the tangent projection, as for `UnitNorm`). Norms accumulate in
    at least float32; shape and dtype are kept.

    Args:
      min_value: the lower bound ``a >= 0`` on the norm.
      max_value: the upper bound ``b >= a`` on the norm.
      rate: ``r`` in ``(0, 1]``: ``1`` enforces the bounds at once. Each of the three may be
        an optax schedule, as in `MaxNorm` (checked at step 0).
      axis: the axis (or list/tuple of axes) the norms run over, as in `MaxNorm`.

    Raises:
      ValueError: at construction, for a negative or non-finite bound, ``min_value >
        max_value``, ``rate`` outside ``(0, 1]`` or a malformed ``axis``; when applied, for an
        ``axis`` out of range for the parameter's rank.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import MinMaxNorm
      >>> w = jnp.array([[3.0, 0.3, 0.0], [4.0, 0.4, 0.0]])  # Column norms 5, 0.5 and 0.
      >>> MinMaxNorm(min_value=1.0, max_value=2.0)(w)
      Array([[1.2, 0.6, 0. ],
             [1.6, 0.8, 0. ]], dtype=float32)
    """

    identifiers = ("min_max_norm",)
    keras_equivalent = "keras.constraints.MinMaxNorm"
    traced_once = True
    elementwise_bounds = None

    @property
    def convex(self) -> bool:
        """A ball (convex) only with ``min_value=0`` and ``rate=1``: with ``min_value > 0`` the
        set is a shell, and with ``rate < 1`` the call is no projection."""
        return self._min == 0 and self._rate == 1 and not self.is_scheduled

    def __init__(
        self,
        min_value: float = 0.0,
        max_value: float = 1.0,
        rate: float = 1.0,
        axis: int | Sequence[int] | None = 0,
    ):
        self._min = schedulable("min_value", min_value, _nonnegative)
        self._max = schedulable("max_value", max_value, _nonnegative)
        if start(self._min) > start(self._max):
            raise ValueError(
                f"MinMaxNorm needs min_value <= max_value, got min_value={min_value!r} > "
                f"max_value={max_value!r}."
            )
        self._rate = schedulable("rate", rate, _rate)
        self.min_value = min_value
        self.max_value = max_value
        self.rate = rate
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        _axes(self, shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        axes = _axes(self, jnp.shape(w), "<array>")
        lo, hi = cast(Evaluated, self._min), cast(Evaluated, self._max)
        return min_max_norm(w, lo, hi, cast(Evaluated, self._rate), axes)

    def get_config(self) -> dict[str, Any]:
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "rate": self.rate,
            "axis": axis_config(self.axis),
        }


class UnitNorm(Constraint):
    """Scales the weights incident to each unit to unit norm.

    For every vector ``v`` of ``w`` along ``axis``:

    .. math:: P(v) = v / \\|v\\|_2 \\quad (v \\neq 0), \\qquad P(0) = 0

    Vectors whose computed norm is exactly 1 come back unchanged bit for bit (Keras divides
    every vector by ``n + 1e-7``); a zero vector has no direction and stays zero, with a
    finite gradient. Norms accumulate in at least float32; shape and dtype are kept.

    Each slice's set is a sphere, a smooth manifold: `tangent` projects an update onto its
    tangent space (``g - w <w, g> / ||w||^2`` per slice), which `jaxcons.tangent` uses for
    Riemannian steps. That projection is also the derivative of `UnitNorm` at a point on the
    sphere (under `jax.grad`, e.g. for ``w = UnitNorm()(v)``), although the value is returned
    unchanged there.

    Args:
      axis: the axis (or list/tuple of axes) the norms run over, as in `MaxNorm`.

    Raises:
      ValueError: at construction, for a malformed ``axis``; when applied, for an ``axis`` out
        of range for the parameter's rank.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import UnitNorm
      >>> UnitNorm(axis=-1)(jnp.array([[3.0, 4.0], [0.0, 0.0]]))
      Array([[0.6, 0.8],
             [0. , 0. ]], dtype=float32)
    """

    identifiers = ("unit_norm", "unitnorm")
    keras_equivalent = "keras.constraints.UnitNorm"
    traced_once = True
    convex = False  # A sphere.
    elementwise_bounds = None

    def __init__(self, axis: int | Sequence[int] | None = 0):
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        _axes(self, shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        return unit_norm(w, _axes(self, jnp.shape(w), "<array>"))

    def tangent(self, w: jax.Array, g: jax.Array) -> jax.Array:
        """Removes from each slice of ``g`` its component along the slice of ``w``: the
        projection onto the tangent space of the unit sphere at ``w`` (see `jaxcons.tangent`).
        """
        return sphere_tangent(w, g, _axes(self, jnp.shape(w), "<array>"))

    def get_config(self) -> dict[str, Any]:
        return {"axis": axis_config(self.axis)}


def _rescale(
    w: jax.Array,
    axes: tuple[int, ...],
    rule: Callable[..., tuple[jax.Array, jax.Array, jax.Array]],
    *bounds: Evaluated,
    on_set: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Rescales the vectors of ``w`` along ``axes`` whose norm the ``rule`` rejects.

    ``rule(n, *bounds)`` gets the norms ``n`` (keepdims, accumulation dtype; exactly 0 for zero
    vectors) and returns ``(needs, moves, desired)``: which vectors to rescale, where the
    projection's formula ``P(v) = v * desired / ||v||`` divides by the norm (``v * desired``
    elsewhere), and the norm it gives. ``needs`` must imply ``moves``, and neither may hold
    for zero vectors. Vectors that need nothing are returned bit for bit, and the derivative
    is that of ``P`` (`exact_projection`): so where ``moves`` holds for a vector that needs
    nothing (one on a sphere) it is the formula's, not the identity, and where ``moves``
    fails ``desired`` must be 1 (``P`` is the identity there), unless ``on_set`` gives the
    derivative at the vectors that need nothing. Every division is guarded and the norm's
    derivative is 0 at a zero vector (`safe_norm`), so values and gradients stay finite.
    """

    def project(w: jax.Array, *bounds: Evaluated) -> tuple[jax.Array, jax.Array]:
        x = w.astype(accumulation_dtype(w.dtype))
        n = safe_norm(x, axes)
        needs, moves, desired = rule(n, *bounds)
        return (x * (desired / jnp.where(moves, n, 1))).astype(w.dtype), needs

    return exact_projection(project, jnp.asarray(w), *bounds, on_set=on_set)


def max_norm(w: jax.Array, max_value: Evaluated, axes: tuple[int, ...]) -> jax.Array:
    """Projects every vector along ``axes`` onto the ball of radius ``max_value``.

    .. math:: P(w) = w \\cdot \\min(1, c / \\|w\\|)

    On the ball's boundary, where ``P`` has no derivative, the derivative is the one from
    inside (the identity).
    """

    def rule(n: jax.Array, c: Evaluated) -> tuple[jax.Array, jax.Array, jax.Array]:
        return n > c, n > c, jnp.full_like(n, c)

    return _rescale(w, axes, rule, max_value, on_set=lambda w, dw: dw)


def min_max_norm(
    w: jax.Array, min_value: Evaluated, max_value: Evaluated, rate: Evaluated, axes: tuple[int, ...]
) -> jax.Array:
    """Moves every non-zero vector's norm toward ``[min_value, max_value]`` by ``rate``.

    .. math:: P(w) = w \\cdot \\frac{r\\,\\mathrm{clip}(\\|w\\|, a, b) + (1 - r)\\|w\\|}{\\|w\\|}

    With ``a == b`` the set is a sphere and the derivative at its points is the formula's
    (the tangent projection for ``r = 1``); with ``a < b``, on the shell's boundary, where
    ``P`` has no derivative, it is the one from inside (the identity).
    """

    def rule(
        n: jax.Array, a: Evaluated, b: Evaluated, r: Evaluated
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        needs = (n > 0) & ((n < a) | (n > b))
        # clip(n, a, b), written so that its derivative is 0 at n == b: with a == b the
        # target norm is the constant a, not n (jnp.clip's derivative there is 1/4).
        target = jnp.where(n < b, jnp.maximum(n, a), b)
        moves = needs | ((n > 0) & (a == b))
        return needs, moves, jnp.where(moves, r * target + (1 - r) * n, 1)

    return _rescale(w, axes, rule, min_value, max_value, rate)


def unit_norm(w: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Scales every non-zero vector along ``axes`` to unit norm; zero vectors stay zero.

    .. math:: P(w) = w / \\|w\\|

    On the sphere the derivative is ``P``'s, the tangent projection ``I - w w^T``; at a zero
    vector (no direction) the identity.
    """

    def rule(n: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return (n > 0) & (n != 1), n > 0, jnp.ones_like(n)

    return _rescale(w, axes, rule)


def sphere_tangent(w: jax.Array, g: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Projects every slice of ``g`` along ``axes`` onto the tangent space of the sphere
    through the same slice of ``w``: removes its radial component.

    .. math:: P_w(g) = g - w \\frac{\\langle w, g \\rangle}{\\|w\\|^2}

    A zero slice of ``w`` has no sphere through it: its slice of ``g`` is returned unchanged
    (with finite gradients). The result has ``g``'s dtype, computed in >= float32.
    """
    dtype = accumulation_dtype(w.dtype, g.dtype)
    x, y = w.astype(dtype), g.astype(dtype)
    sq = jnp.sum(x * x, axis=axes, keepdims=True)
    nonzero = sq > 0
    radial = jnp.sum(x * y, axis=axes, keepdims=True) / jnp.where(nonzero, sq, 1)
    return (y - jnp.where(nonzero, radial, 0) * x).astype(g.dtype)
