"""Elementwise boxes: `NonNeg` and `Clip`, exactly feasible through `jaxcons.constrain`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcons._src.base import Constraint
from jaxcons._src.numerics import inward_bounds
from jaxcons._src.validation import real_values


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

    identifiers = ("non_neg", "nonneg")
    keras_equivalent = "keras.constraints.NonNeg"
    traced_once = True
    convex = True

    elementwise_bounds = (0.0, None)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        return jnp.maximum(w, jnp.zeros((), w.dtype))


Bound = float | np.ndarray | None


def _shown(bound: Any) -> Any:
    """A bound as a config value: scalars as given, arrays as nested lists."""
    return bound.tolist() if isinstance(bound, np.ndarray) else bound


class Clip(Constraint):
    """Clips every weight into ``[min_value, max_value]``: the projection onto a box.

    .. math:: P(w) = \\min(\\max(w, a), b)

    Either bound may be ``None`` (a one-sided box: ``Clip(min_value=0.0)`` is `NonNeg`), a
    scalar, or an array broadcastable to the parameter (per-element bounds: a
    ``(out,)`` bound gives every column of a Dense kernel ``(in, out)`` its own interval).

    Through `jaxcons.constrain` the applied parameters stay exactly inside the box. For
    bfloat16 and float16 parameters a bound the dtype cannot represent is rounded inward
    (``Clip(0, 0.3)`` clips bf16 weights at the bf16 just below 0.3), entry by entry for
    array bounds, so no weight ever lies outside ``[a, b]`` in exact arithmetic; float32 and
    float64 round to nearest.

    Args:
      min_value: the lower bound ``a``: ``None``, a finite number, or an array of them.
      max_value: the upper bound ``b``: ``None``, a finite number, or an array of them, with
        ``a <= b`` everywhere. ``get_config`` holds array bounds as nested lists.

    Raises:
      TypeError: at construction, if both bounds are ``None``.
      ValueError: at construction, if a bound is not finite, the
        two bounds do not broadcast together, or ``min_value > max_value`` somewhere (the
        message names the index); when applied, for an array bound that does not broadcast
        to the parameter's shape (the message names the path and both shapes).

    References:
      Boyd and Vandenberghe, 2004. *Convex Optimization*, section 8.1.1 (projection onto a
      box is clipping each coordinate).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.Clip(0.0, 1.0)(jnp.array([-0.5, 0.25, 2.0]))
      Array([0.  , 0.25, 1.  ], dtype=float32)
      >>> jaxcons.Clip(max_value=[1.0, 0.5])(jnp.array([[3.0, 3.0], [-5.0, 0.25]]))
      Array([[ 1.  ,  0.5 ],
             [-5.  ,  0.25]], dtype=float32)
    """

    identifiers = ("clip",)
    traced_once = True
    convex = True
    elementwise_bounds: tuple[Any, Any] | None = None  # Each object's (set by __init__).

    def __init__(self, min_value: Any = None, max_value: Any = None):
        if min_value is None and max_value is None:
            raise TypeError("Clip needs at least one bound: min_value and max_value are both None.")
        lo = None if min_value is None else real_values("min_value", min_value)
        hi = None if max_value is None else real_values("max_value", max_value)
        if lo is not None and hi is not None:
            _check_ordered(lo, hi, min_value, max_value)
        self.min_value = _shown(lo) if isinstance(lo, np.ndarray) else min_value
        self.max_value = _shown(hi) if isinstance(hi, np.ndarray) else max_value
        self.elementwise_bounds = (lo, hi)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        shape = tuple(shape)
        bounds = self.elementwise_bounds
        assert bounds is not None  # Set by __init__.
        for name, bound in zip(("min_value", "max_value"), bounds, strict=True):
            if not isinstance(bound, np.ndarray):
                continue
            try:
                fits = np.broadcast_shapes(bound.shape, shape) == shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(
                    f"Clip {name} of shape {bound.shape} does not broadcast to parameter "
                    f"{path!r} of shape {shape}."
                )

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "<array>")
        bounds = self.elementwise_bounds
        assert bounds is not None  # Set by __init__.
        lo, hi = inward_bounds(*bounds, w.dtype, w.ndim)
        return jnp.clip(w, lo, hi)

    def get_config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}


def _check_ordered(
    lo: float | np.ndarray, hi: float | np.ndarray, min_value: Any, max_value: Any
) -> None:
    """Raises ``ValueError`` unless ``lo <= hi`` everywhere (they must broadcast together)."""
    if not isinstance(lo, np.ndarray) and not isinstance(hi, np.ndarray):
        if lo > hi:
            raise ValueError(
                f"Clip needs min_value <= max_value, got min_value={min_value!r} > "
                f"max_value={max_value!r}."
            )
        return
    crossing = first_crossing(
        lo,
        hi,
        f"Clip min_value of shape {np.shape(lo)} and max_value of shape {np.shape(hi)} do not "
        "broadcast together.",
    )
    if crossing is not None:
        index, low, high = crossing
        raise ValueError(
            f"Clip needs min_value <= max_value everywhere; at index {index} min_value is "
            f"{low} > max_value {high}."
        )


def first_crossing(lo: Bound, hi: Bound, mismatch: str) -> tuple[tuple[int, ...], Any, Any] | None:
    """Where a lower bound first exceeds an upper one, broadcast together: ``(index, lo, hi)``
    at that index, or ``None`` where ``lo <= hi`` everywhere.

    Raises:
      ValueError: with the message ``mismatch``, if the bounds do not broadcast together.
    """
    try:
        lo_a, hi_a = np.broadcast_arrays(np.asarray(lo), np.asarray(hi))
    except ValueError:
        raise ValueError(mismatch) from None
    crossed = np.argwhere(lo_a > hi_a)
    if not len(crossed):
        return None
    index = tuple(int(i) for i in crossed[0])
    return index, lo_a[index], hi_a[index]
