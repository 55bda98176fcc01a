"""The built-in constraints: thin classes over the pure math in `jaxcons._projections`."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxcons._constraint import Constraint

__all__ = ["Clip", "NonNeg"]


def _check_bound(name: str, value: Any, *, allow_negative: bool = True) -> float:
    """Validates a scalar bound and returns it as a Python float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        hasattr(value, "shape") and getattr(value, "shape", None) == ()
    ):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if not allow_negative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}.")
    return v


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
        lo = _check_bound("min_value", min_value)
        hi = _check_bound("max_value", max_value)
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
        return jnp.clip(w, jnp.asarray(lo, w.dtype), jnp.asarray(hi, w.dtype))

    def get_config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}
