"""Hyper-parameters given as optax schedules, evaluated at `jaxcons.constrain`'s step count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class Scheduled:
    """A hyper-parameter given as a schedule ``count -> value`` (an optax schedule).

    Attributes:
      name: the argument's name, for messages.
      schedule: the schedule.
      start: its value at step 0, as validated when the object was built.
    """

    def __init__(self, name: str, schedule: Callable[[jax.Array], Any], start: float):
        self.name = name
        self.schedule = schedule
        self.start = start

    def at(self, count: jax.Array) -> jax.Array:
        """The value at step ``count``, as a float32 scalar."""
        return jnp.asarray(self.schedule(count), jnp.float32)

    def __repr__(self) -> str:
        return repr(self.schedule)


def schedulable(name: str, value: Any, check: Callable[[str, Any], float]) -> float | Scheduled:
    """Validates a hyper-parameter that may be a number or a schedule.

    A number goes through ``check`` (e.g. `jaxcons._src.validation.real_number` with its bounds).
    A schedule is called at step 0 and that value goes through ``check``; later values are
    the schedule's own (an optax schedule stays between its end points).

    Returns:
      The checked number, or a `Scheduled`.

    Raises:
      ValueError: from ``check``, naming the argument (and saying it is the schedule's value
        at step 0).
    """
    if callable(value) and not isinstance(value, (jax.Array, np.ndarray, np.generic)):
        first = value(jnp.zeros((), jnp.int32))
        try:
            return Scheduled(name, value, check(name, first))
        except ValueError as e:
            raise ValueError(f"{e} (the value at step 0 of the schedule {value!r})") from None
    return check(name, value)


def start(value: float | Scheduled) -> float:
    """A hyper-parameter's value at step 0: for checks between hyper-parameters."""
    return value.start if isinstance(value, Scheduled) else value


# A hyper-parameter where a projection uses it: a number, or a schedule's value at a step (a
# float32 scalar set by `Constraint.at_step`, which `jaxcons.constrain` applies first; the base
# class rejects a direct call of a constraint that still holds a `Scheduled`).
Evaluated = float | jax.Array
