"""`RadialConstraint`: Conv2D kernels constant on every ring around their centre."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcons._projections import check_kernel_4d, radial_mean, radial_tf_keras
from jaxcons._protocol import Constraint

__all__ = ["RadialConstraint"]


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
