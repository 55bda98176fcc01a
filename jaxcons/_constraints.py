"""The built-in constraints: thin classes over the pure math in `jaxcons._projections`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcons._constraint import Constraint
from jaxcons._projections import (
    axis_argument,
    check_kernel_4d,
    max_norm,
    min_max_norm,
    radial_mean,
    radial_tf_keras,
    resolve_axes,
    unit_norm,
)
from jaxcons._validation import real_number

__all__ = ["Clip", "MaxNorm", "MinMaxNorm", "NonNeg", "RadialConstraint", "UnitNorm"]


class NonNeg(Constraint):
    """Constrains weights to be non-negative: the projection onto the non-negative orthant.

    .. math:: P(w) = \\max(w, 0)

    Exact: non-negative entries come back bit for bit, and through `jaxcons.constrain` the
    applied parameters are exactly non-negative.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.NonNeg()(jnp.array([-1.0, 0.5]))
      Array([0. , 0.5], dtype=float32)
    """

    elementwise_bounds = (0.0, None)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        return jnp.maximum(w, jnp.zeros((), w.dtype))


class Clip(Constraint):
    """Clips every weight into ``[min_value, max_value]``: the projection onto a box.

    .. math:: P(w) = \\min(\\max(w, a), b)

    Through `jaxcons.constrain` the applied parameters stay exactly inside the box.

    Args:
      min_value: the lower bound ``a`` (finite).
      max_value: the upper bound ``b`` (finite, ``>= min_value``).

    Raises:
      ValueError: if a bound is not finite or ``min_value > max_value``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.Clip(0.0, 1.0)(jnp.array([-0.5, 0.25, 2.0]))
      Array([0.  , 0.25, 1.  ], dtype=float32)
    """

    def __init__(self, min_value: float, max_value: float):
        lo = real_number("min_value", min_value)
        hi = real_number("max_value", max_value)
        if lo > hi:
            raise ValueError(
                f"Clip needs min_value <= max_value, got min_value={min_value!r} > "
                f"max_value={max_value!r}."
            )
        self.min_value = min_value
        self.max_value = max_value
        self.elementwise_bounds = (lo, hi)

    def __call__(self, w: jax.Array) -> jax.Array:
        lo, hi = self.elementwise_bounds
        w = jnp.asarray(w)
        return jnp.clip(w, jnp.asarray(lo, w.dtype), jnp.asarray(hi, w.dtype))

    def get_config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}


def _axes(c: Any, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    return resolve_axes(c.axis, shape, path, type(c).__name__)


def _axis_config(axis: int | tuple[int, ...]) -> int | list[int]:
    """``axis`` as the constructor took it, a sequence given back as a (JSON-safe) list."""
    return axis if isinstance(axis, int) else list(axis)


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
      max_value: the radius ``c >= 0`` (``0`` projects every vector to zero).
      axis: the axis (or list/tuple of axes) the norms run over; negative values count from
        the end. ``0`` for a Dense kernel ``(in, out)`` constrains each column;
        ``[0, 1, 2]`` for a Conv2D kernel ``(rows, cols, in, out)`` each filter.

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

    def __init__(self, max_value: float = 2.0, axis: int | Sequence[int] = 0):
        self._max = real_number("max_value", max_value, minimum=0.0)
        self.max_value = max_value
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        _axes(self, shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        return max_norm(w, self._max, _axes(self, jnp.shape(w), "<array>"))

    def get_config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "axis": _axis_config(self.axis)}


class MinMaxNorm(Constraint):
    """Keeps the norm of the weights incident to each unit inside ``[min_value, max_value]``.

    For every non-zero vector ``v`` of ``w`` along ``axis`` whose norm ``n`` lies outside
    ``[a, b]``, the norm is moved a fraction ``r`` of the way into the interval:

    .. math:: P(v) = v \\cdot \\frac{r\\,\\mathrm{clip}(n, a, b) + (1 - r)\\,n}{n}

    With ``rate=1`` this is the projection onto the shell ``a <= ||v|| <= b``; with
    ``rate < 1`` out-of-range norms approach the interval over repeated steps. Vectors already
    inside come back unchanged bit for bit (Keras rescales them by ``n / (n + 1e-7)``); zero
    vectors have no direction and stay zero, with a finite gradient. Norms accumulate in at
    least float32; shape and dtype are kept.

    Args:
      min_value: the lower bound ``a >= 0`` on the norm.
      max_value: the upper bound ``b >= a`` on the norm.
      rate: ``r`` in ``(0, 1]``: ``1`` enforces the bounds at once.
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

    def __init__(
        self,
        min_value: float = 0.0,
        max_value: float = 1.0,
        rate: float = 1.0,
        axis: int | Sequence[int] = 0,
    ):
        self._min = real_number("min_value", min_value, minimum=0.0)
        self._max = real_number("max_value", max_value, minimum=0.0)
        if self._min > self._max:
            raise ValueError(
                f"MinMaxNorm needs min_value <= max_value, got min_value={min_value!r} > "
                f"max_value={max_value!r}."
            )
        self._rate = real_number("rate", rate)
        if not 0 < self._rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {rate!r}.")
        self.min_value = min_value
        self.max_value = max_value
        self.rate = rate
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        _axes(self, shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        axes = _axes(self, jnp.shape(w), "<array>")
        return min_max_norm(w, self._min, self._max, self._rate, axes)

    def get_config(self) -> dict[str, Any]:
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "rate": self.rate,
            "axis": _axis_config(self.axis),
        }


class UnitNorm(Constraint):
    """Scales the weights incident to each unit to unit norm.

    For every vector ``v`` of ``w`` along ``axis``:

    .. math:: P(v) = v / \\|v\\|_2 \\quad (v \\neq 0), \\qquad P(0) = 0

    Vectors whose computed norm is exactly 1 come back unchanged bit for bit (Keras divides
    every vector by ``n + 1e-7``); a zero vector has no direction and stays zero, with a
    finite gradient. Norms accumulate in at least float32; shape and dtype are kept.

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

    def __init__(self, axis: int | Sequence[int] = 0):
        self.axis = axis_argument(axis)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        _axes(self, shape, path)

    def __call__(self, w: jax.Array) -> jax.Array:
        return unit_norm(w, _axes(self, jnp.shape(w), "<array>"))

    def get_config(self) -> dict[str, Any]:
        return {"axis": _axis_config(self.axis)}


_RADIAL_MODES = ("mean", "tf_keras")


class RadialConstraint(Constraint):
    """Makes each ``k x k`` slice of a Conv2D kernel constant on every ring around its centre.

    The kernel has shape ``(k, k, in, out)``; each of its ``in * out`` slices is constrained
    on its own. Ring ``r`` holds the cells at Chebyshev distance ``r`` from the centre (the
    centre cell for odd ``k``, the central 2x2 block for even ``k``, then each surrounding
    square frame).

    ``mode="mean"`` (default) is the orthogonal projection onto ring-constant kernels: every
    ring takes its mean,

    .. math:: P(w)_{ij} = \\frac{1}{|R(i, j)|} \\sum_{(p, q) \\in R(i, j)} w_{pq}

    where ``R(i, j)`` is the ring of cell ``(i, j)``. It is idempotent, works for odd and even
    ``k``, and a ring that is already constant comes back bit for bit. Means accumulate in at
    least float32.

    ``mode="tf_keras"`` reproduces ``tf.keras.constraints.RadialConstraint`` (tf.keras 2.x)
    exactly: with ``s = k // 2``, for odd ``k`` the centre takes ``w[s-1, s-1]`` and the
    ``i``-th ring around it (``i = 0, 1, ...``, inside out) takes ``w[s+i, s+i]``; for even
    ``k`` the central 2x2 block takes ``w[s-1, s-1]`` and ring ``i >= 1`` takes
    ``w[s+i, s+i]``. It is not the default because for odd sizes every value lands one ring
    off (the centre copies a cell of the first ring, each ring the cell of the next ring in),
    so applying it twice changes the kernel again; and tf.keras's own docstring describes the
    4x4 case the other way round from what its code does (the code gives the inner block
    ``v_11`` and the outer ring ``v_33``). A 1x1 kernel, on which tf.keras fails, comes back
    unchanged.

    Args:
      mode: ``"mean"`` or ``"tf_keras"``.

    Raises:
      ValueError: at construction, for an unknown ``mode``; when applied, for a parameter that
        is not a square 4-D kernel (the message names its path and shape; tf.keras fails with
        an opaque reshape error).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import RadialConstraint
      >>> k = jnp.arange(9.0).reshape(3, 3, 1, 1)
      >>> RadialConstraint()(k)[..., 0, 0]
      Array([[4., 4., 4.],
             [4., 4., 4.],
             [4., 4., 4.]], dtype=float32)
      >>> RadialConstraint(mode="tf_keras")(k)[..., 0, 0]
      Array([[4., 4., 4.],
             [4., 0., 4.],
             [4., 4., 4.]], dtype=float32)
    """

    def __init__(self, mode: str = "mean"):
        if mode not in _RADIAL_MODES:
            raise ValueError(f"RadialConstraint mode must be one of {_RADIAL_MODES}, got {mode!r}.")
        self.mode = mode

    def check(self, shape: tuple[int, ...], path: str) -> None:
        check_kernel_4d(shape, path, type(self).__name__)

    def __call__(self, w: jax.Array) -> jax.Array:
        self.check(jnp.shape(w), "<array>")
        return radial_mean(w) if self.mode == "mean" else radial_tf_keras(w)

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.mode}
