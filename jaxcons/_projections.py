"""Pure projection math behind the norm and radial constraints.

Every function here takes one array and returns an array of the same shape and dtype. Norms
and means accumulate in at least float32 (bfloat16 and float16 inputs are upcast for the
reduction and the scale, and the result is cast back), and every projection is exact: an
entry, vector or ring that is already feasible is returned bit for bit, through `jnp.where`
rather than through a rescaling by a factor that is merely close to one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcons._norms import accumulation_dtype, safe_norm

__all__ = [
    "axis_argument",
    "check_kernel_4d",
    "max_norm",
    "min_max_norm",
    "radial_mean",
    "radial_tf_keras",
    "resolve_axes",
    "ring_index",
    "unit_norm",
]

Axis = int | tuple[int, ...]


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def axis_argument(axis: Any) -> Axis:
    """Validates an ``axis`` constructor argument: an int, or a non-empty list/tuple of ints.

    Returns:
      The axis as a Python int or a tuple of Python ints.

    Raises:
      ValueError: naming the value, for anything else.
    """
    if _is_int(axis):
        return int(axis)
    if isinstance(axis, (list, tuple)) and axis and all(_is_int(a) for a in axis):
        return tuple(int(a) for a in axis)
    raise ValueError(f"axis must be an int or a non-empty list/tuple of ints, got {axis!r}.")


def resolve_axes(axis: Axis, shape: Sequence[int], path: str, owner: str) -> tuple[int, ...]:
    """Turns ``axis`` into sorted non-negative axes for an array of ``shape``.

    Args:
      axis: an int or a tuple of ints, negative ones counting from the end.
      shape: the shape of the parameter.
      path: the parameter's path, for messages (``"<array>"`` on a direct call).
      owner: the constraint's class name, for messages.

    Returns:
      The axes, each in ``[0, len(shape))``, sorted.

    Raises:
      ValueError: naming the axis, the path and the shape, when an axis is out of range or
        two entries name the same axis.
    """
    ndim = len(shape)
    shape = tuple(shape)
    axes = (axis,) if isinstance(axis, int) else axis
    shown = axis if isinstance(axis, int) else list(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{owner} axis={shown!r}: axis {a} is out of range for parameter {path!r} of "
                f"shape {shape} (rank {ndim})."
            )
        a %= ndim
        if a in out:
            raise ValueError(
                f"{owner} axis={shown!r} names axis {a} twice for parameter {path!r} of "
                f"shape {shape}."
            )
        out.append(a)
    return tuple(sorted(out))


def _rescale(
    w: jax.Array,
    axes: tuple[int, ...],
    rule: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
) -> jax.Array:
    """Rescales the vectors of ``w`` along ``axes`` whose norm the ``rule`` rejects.

    ``rule(n)`` gets the norms ``n`` (keepdims, accumulation dtype; exactly 0 for zero vectors)
    and returns ``(needs, desired)``: which vectors to rescale and the norm they get. ``needs``
    must be false for zero vectors. Vectors that need nothing are returned bit for bit, and
    every ``sqrt`` and division is guarded so values and gradients stay finite at zero.
    """
    w = jnp.asarray(w)
    x = w.astype(accumulation_dtype(w.dtype))
    n = safe_norm(x, axes)
    needs, desired = rule(n)
    scale = desired / jnp.where(needs, n, 1)
    return jnp.where(needs, (x * scale).astype(w.dtype), w)


def max_norm(w: jax.Array, max_value: float, axes: tuple[int, ...]) -> jax.Array:
    """Projects every vector along ``axes`` onto the ball of radius ``max_value``.

    .. math:: P(w) = w \\cdot \\min(1, c / \\|w\\|)
    """
    return _rescale(w, axes, lambda n: (n > max_value, jnp.full_like(n, max_value)))


def min_max_norm(
    w: jax.Array, min_value: float, max_value: float, rate: float, axes: tuple[int, ...]
) -> jax.Array:
    """Moves every non-zero vector's norm toward ``[min_value, max_value]`` by ``rate``.

    .. math:: P(w) = w \\cdot \\frac{r\\,\\mathrm{clip}(\\|w\\|, a, b) + (1 - r)\\|w\\|}{\\|w\\|}
    """

    def rule(n: jax.Array) -> tuple[jax.Array, jax.Array]:
        needs = (n > 0) & ((n < min_value) | (n > max_value))
        return needs, rate * jnp.clip(n, min_value, max_value) + (1 - rate) * n

    return _rescale(w, axes, rule)


def unit_norm(w: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Scales every non-zero vector along ``axes`` to unit norm; zero vectors stay zero.

    .. math:: P(w) = w / \\|w\\|
    """
    return _rescale(w, axes, lambda n: ((n > 0) & (n != 1), jnp.ones_like(n)))


def check_kernel_4d(shape: Sequence[int], path: str, owner: str) -> None:
    """Raises ``ValueError`` unless ``shape`` is a square Conv2D kernel ``(k, k, in, out)``."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(
            f"{owner} needs a 4-D Conv2D kernel of shape (rows, cols, in, out); parameter "
            f"{path!r} has shape {shape} (rank {len(shape)})."
        )
    if shape[0] != shape[1]:
        raise ValueError(
            f"{owner} needs a square kernel (rows == cols); parameter {path!r} has shape {shape}."
        )


def ring_index(size: int) -> np.ndarray:
    """The ring of every cell of a ``size x size`` grid: Chebyshev distance from the centre.

    Ring 0 is the centre cell (odd ``size``) or the central 2x2 block (even ``size``).
    """
    d = np.abs(2 * np.arange(size) - (size - 1))
    return np.maximum(d[:, None], d[None, :]) // 2


def _ring_masks(size: int) -> list[np.ndarray]:
    """One boolean ``(size, size, 1, 1)`` mask per ring, centre first."""
    ring = ring_index(size)[:, :, None, None]
    return [ring == r for r in range(int(ring.max()) + 1)]


def radial_mean(w: jax.Array) -> jax.Array:
    """Replaces every ring of each ``k x k`` slice of ``w`` (``(k, k, in, out)``) by its mean.

    The orthogonal projection onto ring-constant kernels; a ring that is already constant is
    returned bit for bit. Only elementwise operations and reductions over the two spatial
    axes are used (no gather or scatter), so a kernel sharded over its channels stays so.
    """
    w = jnp.asarray(w)
    x = w.astype(accumulation_dtype(w.dtype))
    out = w
    for mask in _ring_masks(w.shape[0]):
        i, j = np.argwhere(mask[:, :, 0, 0])[0]
        first = w[i : i + 1, j : j + 1]
        constant = jnp.all(jnp.where(mask, w == first, True), axis=(0, 1), keepdims=True)
        total = jnp.sum(jnp.where(mask, x, 0), axis=(0, 1), keepdims=True)
        mean = (total / int(mask.sum())).astype(w.dtype)
        out = jnp.where(mask & ~constant, mean, out)
    return out


def radial_tf_keras(w: jax.Array) -> jax.Array:
    """tf.keras 2.x's ``RadialConstraint``: each ring copies one diagonal entry.

    With ``s = k // 2`` and rings counted from 0 at the centre (`ring_index`): ring 0 takes
    ``w[s-1, s-1]``; for odd ``k`` ring ``r >= 1`` takes ``w[s+r-1, s+r-1]``, for even ``k``
    it takes ``w[s+r, s+r]``. A 1x1 kernel comes back unchanged.
    """
    w = jnp.asarray(w)
    size = w.shape[0]
    start = size // 2
    out = w
    for r, mask in enumerate(_ring_masks(size)):
        d = (start - 1 if r == 0 else start + r - size % 2) % size
        out = jnp.where(mask, w[d : d + 1, d : d + 1], out)
    return out
