"""Validation of hyper-parameters, shared by every constraint, regularizer and transform."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

__all__ = ["positive_int", "real_number"]


def _is_real_scalar(value: Any) -> bool:
    """A Python or NumPy int/float, or a 0-d integer/floating array; never a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        isinstance(value, (np.ndarray, jax.Array))
        and value.shape == ()
        and dtype is not None
        and np.dtype(dtype).kind in "iuf"
    )


def real_number(
    name: str, value: Any, *, minimum: float | None = None, strict: bool = False
) -> float:
    """Validates a finite real hyper-parameter and returns it as a Python float.

    Args:
      name: the argument's name, for the message.
      value: a Python or NumPy real scalar, or a concrete 0-d array; ``bool`` is rejected.
      minimum: the smallest allowed value (``None``: no bound).
      strict: require ``> minimum`` instead of ``>= minimum``.

    Raises:
      ValueError: naming the argument and the value.
    """
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{name} must be a concrete number when the object is built, got a traced value "
            f"{value!r}: hyper-parameters are static (use an optax schedule for a changing "
            f"learning rate)."
        )
    if not _is_real_scalar(value):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}.")
    return v


def positive_int(name: str, value: Any) -> int:
    """Validates a positive integer hyper-parameter (``bool`` rejected) and returns it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)
