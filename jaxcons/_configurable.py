"""What constraints and regularizers share: a config round trip, repr, equality, leaf checks."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcons._rules import is_floating

__all__ = ["Configurable", "is_single_floating_array", "json_safe"]


def is_single_floating_array(owner: Any, x: Any) -> bool:
    """Whether ``x`` is one array (rather than a pytree of them) that ``owner`` can act on.

    Raises:
      TypeError: naming ``owner``'s class and the dtype, for a single non-floating array.
    """
    if not isinstance(x, (jax.Array, np.ndarray, np.generic, float, int)):
        return False
    if not is_floating(x):
        raise TypeError(
            f"{type(owner).__name__} acts on floating-point arrays; got an array of "
            f"dtype {getattr(x, 'dtype', type(x).__name__)}."
        )
    return True


def json_safe(value: Any) -> Any:
    """A config value with tuples as lists and 0-d arrays / NumPy scalars as Python scalars."""
    if isinstance(value, tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a config value (``2 == 2.0`` and ``[0, 1] == (0, 1)`` still)."""
    value = json_safe(value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


class Configurable:
    """Objects rebuilt from their constructor arguments: ``cls(**obj.get_config())``.

    Subclasses that take arguments override `get_config`; `from_config`, ``repr``, ``==`` and
    ``hash`` follow from it. The optional `check` hook lets the rule engine reject a parameter
    shape (with its path) once per trace.
    """

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` if this object cannot act on a leaf of ``shape`` at ``path``."""
        del shape, path

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments, so that ``cls(**config)`` rebuilds the object."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Rebuilds the object from the output of `get_config`."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def _identity(self) -> Any:
        """What equality and hashing compare: the config, or the object itself.

        A subclass that keeps state but does not override `get_config` would otherwise compare
        equal to every other instance of its class, and `jax.jit`, which caches on static
        values such as the constraints in flax boxes, would reuse the wrong one.
        """
        if type(self).get_config is Configurable.get_config and vars(self):
            return id(self)
        return _frozen(self.get_config())

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self._identity() == other._identity()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._identity()))
