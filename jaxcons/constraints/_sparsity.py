"""Sparsity patterns: `TopK` (k entries per slice) and `NofM` (N:M structured sparsity)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxcons._src.base import Constraint
from jaxcons._src.validation import (
    axis_argument,
    axis_config,
    positive_int,
    resolve_axes,
    single_axis,
)


class TopK(Constraint):
    """Keeps the ``k`` largest-magnitude entries of every slice and zeroes the rest.

    For every slice ``v`` of ``w`` spanning ``axis`` (as in `MaxNorm`; ``None``, the
    default, takes the whole tensor as one slice):

    .. math:: P(v)_i = v_i \\ \\text{if}\\ |v_i| \\text{ is among the } k \\text{ largest of }
       |v|, \\text{ else } 0

    a Euclidean projection onto the (non-convex) set of slices with at most ``k`` non-zero
    entries, as used for magnitude pruning and iterative hard thresholding (Blumensath and
    Davies, 2009). Ties are broken deterministically: among entries of equal magnitude the one
    that comes first in the slice (row-major order over ``axis``) is kept. Kept entries are
    copied bit for bit, so the result is idempotent, and a slice with at most ``k`` non-zeros
    comes back unchanged. The gradient flows through the kept entries only.

    Args:
      k: the number of entries kept per slice (a positive int, at most the slice size).
      axis: the axis (or list/tuple of axes) each slice spans; ``None`` for the whole tensor.

    Raises:
      ValueError: at construction, for a ``k`` that is not a positive int or a malformed
        ``axis``; when applied, for an ``axis`` out of range or a ``k`` larger than the
        slice (the message names the path and the shape).

    References:
      Blumensath and Davies, 2009. `Iterative hard thresholding for compressed sensing
      <https://doi.org/10.1016/j.acha.2009.04.002>`_. Appl. Comput. Harmon. Anal. 27(3).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import TopK
      >>> TopK(k=2)(jnp.array([0.5, -3.0, 1.0, 1.0]))  # The tie goes to the first 1.0.
      Array([ 0., -3.,  1.,  0.], dtype=float32)
    """

    identifiers = ("top_k",)
    traced_once = False
    convex = False  # Sparse tensors.
    elementwise_bounds = None

    def __init__(self, k: int, axis: int | Sequence[int] | None = None):
        self.k = positive_int("k", k)
        self.axis = axis_argument(axis)

    def _axes(self, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
        axes = resolve_axes(self.axis, shape, path, type(self).__name__)
        size = math.prod(shape[a] for a in axes)
        if self.k > size:
            raise ValueError(
                f"TopK(k={self.k}, axis={axis_config(self.axis)!r}) needs k <= the slice size, "
                f"but parameter {path!r} of shape {tuple(shape)} has slices of {size} entries."
            )
        return axes

    def check(self, shape: tuple[int, ...], path: str) -> None:
        self._axes(tuple(shape), path)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        keep = top_k_mask(w, self.k, self._axes(w.shape, "<array>"))
        return jnp.where(keep, w, jnp.zeros((), w.dtype))

    def get_config(self) -> dict[str, Any]:
        return {"k": self.k, "axis": axis_config(self.axis)}


class NofM(Constraint):
    """N:M structured sparsity: at most ``n`` non-zeros in every ``m`` consecutive entries.

    Along ``axis``, the parameter is cut into groups of ``m`` consecutive entries (its length
    must be a multiple of ``m``); in each group the ``n`` entries of largest magnitude are kept
    and the others zeroed:

    .. math:: P(w)_i = w_i \\ \\text{if}\\ |w_i| \\text{ is among the } n \\text{ largest of its
       group, else } 0

    the projection onto the (non-convex) N:M pattern that sparse tensor cores accelerate
    (2:4 on NVIDIA Ampere; Mishra et al., 2021; Zhou et al., 2021). Ties go to the lower
    index within the group. Kept entries are copied bit for bit (idempotent); a group that
    already has at most ``n`` non-zeros comes back unchanged. For a Dense kernel
    ``(in, out)``, ``axis=0`` groups the inputs of every output unit, as the hardware
    pattern for ``y = x @ w`` wants. The comparisons are elementwise within each group (no
    sort), ``m * m`` per group.

    Args:
      n: the entries kept per group (``1 <= n <= m``).
      m: the group length (a positive int).
      axis: the single axis the groups run along (an int; negative counts from the end).

    Raises:
      ValueError: at construction, for ``n`` or ``m`` that is not a positive int, ``n > m``
        or an ``axis`` that is not an int; when applied, for an ``axis`` out of range or an
        axis length that is not a multiple of ``m`` (naming the path, the shape and ``m``).

    References:
      Mishra et al., 2021. `Accelerating Sparse Deep Neural Networks
      <https://arxiv.org/abs/2104.08378>`_. arXiv:2104.08378. Zhou et al., 2021. `Learning
      N:M Fine-grained Structured Sparse Neural Networks From Scratch
      <https://arxiv.org/abs/2102.04010>`_. ICLR.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcons.constraints import NofM
      >>> NofM(n=2, m=4)(jnp.array([0.1, -2.0, 0.3, 0.2, 1.0, 1.0, 1.0, 0.0]))
      Array([ 0. , -2. ,  0.3,  0. ,  1. ,  1. ,  0. ,  0. ], dtype=float32)
    """

    identifiers = ("n_of_m",)
    traced_once = False
    convex = False  # Sparse tensors.
    elementwise_bounds = None

    def __init__(self, n: int = 2, m: int = 4, axis: int = 0):
        self.n = positive_int("n", n)
        self.m = positive_int("m", m)
        if self.n > self.m:
            raise ValueError(f"NofM needs n <= m, got n={n!r} > m={m!r}.")
        self.axis = single_axis("NofM", axis)

    def _axis(self, shape: tuple[int, ...], path: str) -> int:
        (axis,) = resolve_axes(self.axis, shape, path, type(self).__name__)
        if shape[axis] % self.m:
            raise ValueError(
                f"NofM(n={self.n}, m={self.m}) needs the length of axis {self.axis} to be a "
                f"multiple of m={self.m}; parameter {path!r} has shape {tuple(shape)}."
            )
        return axis

    def check(self, shape: tuple[int, ...], path: str) -> None:
        self._axis(tuple(shape), path)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        keep = n_of_m_mask(w, self.n, self.m, self._axis(w.shape, "<array>"))
        return jnp.where(keep, w, jnp.zeros((), w.dtype))

    def get_config(self) -> dict[str, Any]:
        return {"n": self.n, "m": self.m, "axis": self.axis}


def top_k_mask(w: jax.Array, k: int, axes: tuple[int, ...]) -> jax.Array:
    """``True`` at the ``k`` largest-magnitude entries of every slice of ``w`` along ``axes``.

    Ties go to the entry that comes first in the slice (row-major order over ``axes``), as in
    `jax.lax.top_k`. The slice axes are moved last and flattened for `jax.lax.top_k`.
    """
    w = jax.lax.stop_gradient(jnp.asarray(w))
    rest = tuple(a for a in range(w.ndim) if a not in axes)
    moved = jnp.transpose(jnp.abs(w), rest + axes)
    batch = moved.shape[: len(rest)]
    flat = moved.reshape((math.prod(batch), -1))
    _, index = jax.lax.top_k(flat, k)
    rows = jnp.arange(flat.shape[0])[:, None]
    keep = jnp.zeros(flat.shape, bool).at[rows, index].set(True)
    keep = keep.reshape(moved.shape)
    # jnp.transpose takes any sequence of ints, an integer array too (its stub says Sequence).
    return jnp.transpose(keep, cast(Sequence[int], np.argsort(rest + axes)))


def n_of_m_mask(w: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    """``True`` at the ``n`` largest-magnitude entries of every group of ``m`` consecutive
    entries of ``w`` along ``axis`` (whose length is a multiple of ``m``).

    Entry ``i`` of a group is kept when fewer than ``n`` entries of its group beat it, where
    ``j`` beats ``i`` if ``|w_j| > |w_i|``, or ``|w_j| = |w_i|`` and ``j < i`` (ties go to the
    lower index). The ``m x m`` comparisons are elementwise and fuse into one reduction: no
    sort, no gather.
    """
    w = jax.lax.stop_gradient(jnp.asarray(w))
    shape = w.shape
    grouped = jnp.abs(w).reshape((*shape[:axis], shape[axis] // m, m, *shape[axis + 1 :]))
    g = axis + 1  # The axis of the position within a group.
    mine = jnp.expand_dims(grouped, g + 1)  # (..., m [i], 1, ...)
    theirs = jnp.expand_dims(grouped, g)  # (..., 1, m [j], ...)
    lower = np.tril(np.ones((m, m), bool), -1)  # lower[i, j]: j < i.
    lower = lower.reshape((1,) * g + (m, m) + (1,) * (grouped.ndim - g - 1))
    beaten = (theirs > mine) | ((theirs == mine) & lower)
    rank = jnp.sum(beaten, axis=g + 1, dtype=jnp.int32)
    return (rank < n).reshape(shape)
