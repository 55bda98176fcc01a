"""Validation of arguments, shared by every constraint, regularizer and transform."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.core
import numpy as np

Axis = int | tuple[int, ...] | None


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


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

    Returns:
      The value as a Python float.

    Raises:
      ValueError: naming the argument and the value.
    """
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{name} must be a concrete number when the object is built, got a traced value "
            f"{value!r}. For a hyper-parameter that changes during training, pass an optax "
            f"schedule (count -> value), which jaxcons.constrain evaluates at its own step count."
        )
    _no_schedule(name, value)
    if not _is_real_scalar(value):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}.")
    return v


def real_values(name: str, value: Any) -> float | np.ndarray:
    """Validates a hyper-parameter that is a finite real number or an array of them.

    Args:
      name: the argument's name, for the message.
      value: a real scalar (as `real_number` takes), or a non-empty nested list/tuple, NumPy
        array or concrete JAX array of finite integers or floats; ``bool`` is rejected.

    Returns:
      A Python float for a scalar (or a 0-d array), else a read-only float64 NumPy array.

    Raises:
      ValueError: naming the argument and the value (for an array: the first entry that is
        not finite, and its index).
    """
    if isinstance(value, jax.core.Tracer) or _is_real_scalar(value):
        return real_number(name, value)
    _no_schedule(name, value)
    expected = f"{name} must be a real number or an array of real numbers"
    if not isinstance(value, (list, tuple, np.ndarray, jax.Array)):
        raise ValueError(f"{expected}, got {value!r}.")
    try:
        array = np.asarray(value)
    except ValueError:  # A ragged nested list.
        raise ValueError(f"{expected}, got the ragged {value!r}.") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{expected}, got {value!r} (dtype {array.dtype}).")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got {value!r} of shape {array.shape}.")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {array[index]} at index {index}.")
    if array.ndim == 0:
        return float(array)
    array.flags.writeable = False
    return array


def factor(name: str, value: Any, *, positive: bool = False) -> float:
    """Validates a regularization factor or step size (finite, ``>= 0``; ``> 0`` if positive)."""
    return real_number(name, value, minimum=0.0, strict=positive)


def positive_number(name: str, value: Any) -> float:
    """Validates a finite hyper-parameter ``> 0`` (a radius, a bound) as `real_number` does."""
    return real_number(name, value, minimum=0.0, strict=True)


def _no_schedule(name: str, value: Any) -> None:
    if callable(value) and not isinstance(value, (jax.Array, np.ndarray, np.generic)):
        raise ValueError(
            f"{name} must be a number, got the callable {value!r}: this hyper-parameter takes "
            "no schedule (the README lists those that do)."
        )


def positive_int(name: str, value: Any) -> int:
    """Validates a positive integer hyper-parameter (``bool`` rejected) and returns it."""
    _no_schedule(name, value)
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def optional_bool(name: str, value: Any) -> bool | None:
    """Validates an option that is ``True``, ``False`` or ``None`` (the default behaviour)."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None, got {value!r}.")
    return value


def axis_argument(axis: Any) -> Axis:
    """Validates an ``axis`` constructor argument.

    Args:
      axis: an int, a non-empty list/tuple of ints, or ``None`` (every axis: the whole
        tensor is one slice, as Keras configs may say).

    Returns:
      The axis as a Python int, a tuple of Python ints, or ``None``.

    Raises:
      ValueError: naming the value, for anything else.
    """
    if axis is None:
        return None
    if _is_int(axis):
        return int(axis)
    if isinstance(axis, (list, tuple)) and axis and all(_is_int(a) for a in axis):
        return tuple(int(a) for a in axis)
    raise ValueError(f"axis must be an int, a non-empty list/tuple of ints, or None, got {axis!r}.")


def single_axis(owner: str, axis: Any) -> int:
    """Validates an ``axis`` argument that must name one axis: an int (``bool`` rejected)."""
    if not _is_int(axis):
        raise ValueError(f"{owner} axis must be an int (one axis), got {axis!r}.")
    return int(axis)


def axis_config(axis: Axis) -> int | list[int] | None:
    """``axis`` as a (JSON-safe) config value: a tuple becomes a list."""
    return list(axis) if isinstance(axis, tuple) else axis


def resolve_axes(axis: Axis, shape: Sequence[int], path: str, owner: str) -> tuple[int, ...]:
    """Turns ``axis`` into sorted non-negative axes for an array of ``shape``.

    Args:
      axis: an int or a tuple of ints, negative ones counting from the end; ``None`` for
        every axis.
      shape: the shape of the parameter.
      path: the parameter's path, for messages (``"<array>"`` on a direct call).
      owner: the class name of the constraint or regularizer, for messages.

    Returns:
      The axes, each in ``[0, len(shape))``, sorted.

    Raises:
      ValueError: naming the axis, the path and the shape, when an axis is out of range or
        two entries name the same axis.
    """
    ndim = len(shape)
    shape = tuple(shape)
    if axis is None:
        return tuple(range(ndim))
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
