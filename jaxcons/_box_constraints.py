"""Elementwise boxes: `NonNeg` and `Clip`, exactly feasible through `jaxcons.constrain`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcons._numerics import inward_bounds
from jaxcons._protocol import Constraint
from jaxcons._validation import real_number

__all__ = ["Clip", "NonNeg"]


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

    Through `jaxcons.constrain` the applied parameters stay exactly inside the box. For
    bfloat16 and float16 parameters a bound the dtype cannot represent is rounded inward
    (``Clip(0, 0.3)`` clips bf16 weights at the bf16 just below 0.3), so no weight ever lies
    outside ``[a, b]`` in exact arithmetic; float32 and float64 round to nearest.

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
        w = jnp.asarray(w)
        lo, hi = inward_bounds(*self.elementwise_bounds, w.dtype)
        return jnp.clip(w, lo, hi)

    def get_config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}
