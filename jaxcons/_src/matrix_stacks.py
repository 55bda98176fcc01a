"""Parameters seen as stacks of matrices: one matrix per expert, per head, per q/k/v block.

A `MatrixStack` says how: an optional ``view`` (a reshape to a shape of the same size) and
``batch_axes`` of that view, each index of which is its own matrix. The other axes form one
kernel, viewed as ``(prod(leading), last)`` like any kernel of rank >= 2. The matrix
constraints and regularizers run their per-matrix code under nested `jax.vmap` over the batch
axes (moved to the front), so a parameter sharded along a batch axis is projected where it
lives.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class MatrixStack(NamedTuple):
    """How a parameter is seen as a stack of matrices.

    Attributes:
      view: ``None``, or a shape of the parameter's size that it is reshaped to first (a fused
        QKV weight ``(3 * heads * head_dim, dim)`` as ``(3 * heads, head_dim, dim)``).
      batch_axes: the axes of the view (the parameter, without one) whose indices are separate
        matrices, as given (negative axes count from the end); ``()`` for one matrix.
    """

    view: tuple[int, ...] | None
    batch_axes: tuple[int, ...]

    @property
    def trivial(self) -> bool:
        """Whether the parameter is one matrix, as it is (no view, no batch axes)."""
        return self.view is None and not self.batch_axes

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this stack (for ``get_config``): none for a
        trivial stack, whose arguments are the defaults."""
        if self.trivial:
            return {}
        return {"batch_axes": self.batch_axes, "view": self.view}

    def axes(self, ndim: int) -> tuple[int, ...]:
        """The batch axes as nonnegative indices of a view of rank ``ndim`` (checked before)."""
        return tuple(a % ndim for a in self.batch_axes)

    def check(self, owner: str, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
        """Raises ``ValueError`` if the parameter cannot be seen as this stack; returns the
        shape of one matrix (the kernel each batch index holds, rank >= 2)."""
        shape = tuple(shape)
        where = f"parameter {path!r}" if path else "the array"
        viewed = shape if self.view is None else self.view
        if self.view is not None and math.prod(self.view) != math.prod(shape):
            raise ValueError(
                f"{owner} view={self.view} has {math.prod(self.view)} entries, but {where} has "
                f"shape {shape} ({math.prod(shape)} entries): a view reshapes the parameter, "
                "so their sizes must match."
            )
        ndim = len(viewed)
        if self.view is not None and not path and shape == self.view:
            seen = f"the view {shape}"  # At construction.
        else:
            seen = f"{where} of shape {shape}" + (
                "" if self.view is None else f" viewed as {viewed}"
            )
        for a in self.batch_axes:
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"{owner} batch_axes={self.batch_axes}: axis {a} is out of range for {seen} "
                    f"(rank {ndim}: axes -{ndim}..{ndim - 1})."
                )
        axes = self.axes(ndim)
        if len(set(axes)) != len(axes):
            raise ValueError(
                f"{owner} batch_axes={self.batch_axes} names an axis twice for {seen} (as "
                f"nonnegative axes: {axes})."
            )
        matrix = tuple(d for i, d in enumerate(viewed) if i not in axes)
        if len(matrix) < 2:
            raise ValueError(
                f"{owner} batch_axes={self.batch_axes} leave {len(matrix)} matrix ax"
                f"{'i' if len(matrix) == 1 else 'e'}s of {seen}: each batch index must hold a "
                "matrix (at least two axes besides the batch axes)."
            )
        return matrix

    def batch_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The sizes of the batch axes, in order: the leading axes of `split`'s result."""
        viewed = tuple(shape) if self.view is None else self.view
        return tuple(viewed[a] for a in self.axes(len(viewed)))

    def split(self, w: jax.Array) -> jax.Array:
        """``w`` as ``(*batch, *matrix)``: viewed, then the batch axes moved to the front
        (``w`` itself for a trivial stack)."""
        if self.trivial:
            return w
        x = w if self.view is None else w.reshape(self.view)
        axes = self.axes(x.ndim)
        return jnp.moveaxis(x, axes, tuple(range(len(axes))))

    def merge(self, stack: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The inverse of `split`: ``stack`` back to the parameter's ``shape``."""
        if self.trivial:
            return stack
        viewed = tuple(shape) if self.view is None else self.view
        axes = self.axes(len(viewed))
        return jnp.moveaxis(stack, tuple(range(len(axes))), axes).reshape(shape)

    def each(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (written for one matrix) mapped over the leading batch axes of its arguments
        and results: nested `jax.vmap`, one per batch axis."""
        for _ in self.batch_axes:
            fn = jax.vmap(fn)
        return fn

    def select(self, flags: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        """Per matrix of two split stacks, ``a``'s where ``flags`` (batch-shaped) is true, else
        ``b``'s."""
        return jnp.where(flags.reshape(flags.shape + (1,) * (a.ndim - flags.ndim)), a, b)

    def apply(self, fn: Callable[..., jax.Array], w: jax.Array, *others: jax.Array) -> jax.Array:
        """``fn(matrix, *other_matrices) -> matrix`` applied to every matrix of ``w`` (and the
        matching matrices of ``others``, shaped like ``w``); ``fn(w, *others)`` for a trivial
        stack."""
        if self.trivial:
            return fn(w, *others)
        stacked = self.each(fn)(self.split(w), *(self.split(o) for o in others))
        return self.merge(stacked, w.shape)


# The default: the parameter is one matrix.
ONE_MATRIX = MatrixStack(None, ())


def after(x: jax.Array, earlier: jax.Array) -> jax.Array:
    """``x``, bit for bit, computed only once ``earlier`` is: ``x * (1 + 0 * k)`` with ``k``
    the number of entries of ``earlier`` equal to themselves, capped at 1 (finite in every
    dtype; a scalar all-reduce where ``earlier`` is sharded). A data dependence XLA keeps: it
    does not fold ``0 * y`` for floats, whereas `jax.lax.optimization_barrier` is gone before
    the CPU runtime orders its work."""
    count = jnp.minimum(jnp.sum(earlier == earlier), 1)  # 0 or 1: finite in float16 too.
    return x * (1 + 0 * count.astype(x.dtype))


class InOrder:
    """Runs the work on stacked parameters one parameter after another.

    jaxlib up to 0.11 (CPU) splits a batched LAPACK call (Cholesky, SVD, eigh) over the
    intra-op thread pool and blocks a pool thread until its pieces finish: when as many such
    calls run at once as the pool has threads (two, on a 2-core machine), none finishes. The
    stacked constraints run one batched call at a time per parameter; this orders the
    parameters too, by making each stacked parameter's inputs depend on the previous one's
    result (`after`).
    """

    def __init__(self) -> None:
        self._last: Any = None

    def wait(self, value: Any, *arrays: jax.Array) -> tuple[jax.Array, ...]:
        """``arrays``, made to wait for the previous stacked result if ``value`` (a
        constraint or regularizer) stacks matrices."""
        if self._last is None or getattr(value, "matrix_stack", ONE_MATRIX).trivial:
            return arrays
        return tuple(after(a, self._last) if a.size else a for a in arrays)

    def done(self, value: Any, result: Any) -> Any:
        """Records ``result`` as the one the next stacked parameter waits for; returns it."""
        if not getattr(value, "matrix_stack", ONE_MATRIX).trivial and jnp.size(result):
            self._last = result
        return result


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):  # operator.index accepts True as 1.
        raise TypeError(f"{name} entries must be ints, got {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} entries must be ints, got {value!r}.") from None


def matrix_stack(owner: str, view: Any, batch_axes: Any) -> MatrixStack:
    """Validates the ``view`` and ``batch_axes`` arguments of ``owner``'s constructor.

    Raises:
      TypeError: for a ``batch_axes`` that is not an int or a tuple/list of ints, or a
        ``view`` that is not ``None`` or a tuple/list of ints.
      ValueError: for a view with an entry < 1, or fewer than two axes; for batch axes that
        repeat or fall outside the view (when one is given).
    """
    if not isinstance(batch_axes, (tuple, list)):
        if isinstance(batch_axes, bool) or not hasattr(batch_axes, "__index__"):
            raise TypeError(
                f"{owner} batch_axes must be an int or a tuple of ints, got {batch_axes!r}."
            )
        batch_axes = (batch_axes,)
    axes = tuple(batch_axes)
    axes = tuple(_int(f"{owner} batch_axes", a) for a in axes)
    shape = None
    if view is not None:
        if isinstance(view, bool) or not isinstance(view, (tuple, list)):
            raise TypeError(f"{owner} view must be None or a tuple of ints, got {view!r}.")
        shape = tuple(_int(f"{owner} view", d) for d in view)
        if len(shape) < 2 or any(d < 1 for d in shape):
            raise ValueError(
                f"{owner} view must be a shape of at least two axes, each >= 1, got {view!r}."
            )
    stack = MatrixStack(shape, axes)
    if shape is not None:  # The view's shape is known now: check the axes against it.
        stack.check(owner, shape, "")
    elif len(set(axes)) != len(axes):
        raise ValueError(f"{owner} batch_axes={axes} names an axis twice.")
    return stack
