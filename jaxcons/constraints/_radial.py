"""`RadialConstraint`: Conv2D kernels constant on every ring around their centre."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcons._src.base import Constraint
from jaxcons._src.numerics import accumulation_dtype, exact_projection

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

    identifiers = ("radial_constraint",)
    # Keras's own RadialConstraint is mode='tf_keras' on a kernel Keras reads differently; no
    # automatic conversion.
    keras_equivalent = None
    traced_once = True
    elementwise_bounds = None

    @property
    def convex(self) -> bool:
        """Projection onto a linear subspace (convex) with ``mode='mean'``; ``'tf_keras'`` is
        no projection."""
        return self.mode == "mean"

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
    returned bit for bit, and the derivative is the projection's own everywhere (it is linear:
    the ring means of ``dw``), not the identity on constant rings (`exact_projection`). Only
    elementwise operations and reductions over the two spatial axes are used (no gather or
    scatter), so a kernel sharded over its channels stays so.
    """

    def project(w: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = w.astype(accumulation_dtype(w.dtype))
        out, moved = w, None
        for mask in _ring_masks(w.shape[0]):
            i, j = np.argwhere(mask[:, :, 0, 0])[0]
            first = w[i : i + 1, j : j + 1]
            constant = jnp.all(jnp.where(mask, w == first, True), axis=(0, 1), keepdims=True)
            total = jnp.sum(jnp.where(mask, x, 0), axis=(0, 1), keepdims=True)
            out = jnp.where(mask, (total / int(mask.sum())).astype(w.dtype), out)
            ring = ~constant & mask
            moved = ring if moved is None else moved | ring
        assert moved is not None  # A kernel has at least one ring.
        return out, moved

    return exact_projection(project, jnp.asarray(w))


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
