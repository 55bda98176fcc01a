"""Weight constraints: the classes, their Keras shortcut names, and (de)serialization.

Everything here is also available from the top-level `jaxcons` namespace, except the
registry functions (`get`, `serialize`, `deserialize`, `register`), which live here as in
``keras.constraints``.
"""

from __future__ import annotations

from typing import Any

from jaxcons import _builtins, regularizers
from jaxcons._protocol import Constraint, StatefulConstraint
from jaxcons._registry import Registry

_registry = Registry("constraint", Constraint)
_registry.add(Constraint)
_registry.add_builtins(_builtins.CONSTRAINTS)
_registry.counterpart = regularizers._registry
regularizers._registry.counterpart = _registry

globals().update(_builtins.public_names(_builtins.CONSTRAINTS))

__all__ = [
    "Constraint",
    "StatefulConstraint",
    "deserialize",
    "get",
    "register",
    "serialize",
]
__all__ += list(_builtins.public_names(_builtins.CONSTRAINTS))  # The built-ins, from their table.
__all__.sort()


def get(identifier: Any) -> Any:
    """Returns a constraint from an identifier.

    Args:
      identifier: ``None``; a class name (``"MaxNorm"``) or snake_case name (``"max_norm"``,
        ``"non_neg"``, ...; tf.keras's legacy ``"maxnorm"``, ``"nonneg"``, ``"unitnorm"``),
        built with its defaults; a dict from `serialize`; a `Constraint`; or any callable
        ``w -> w``.

    Returns:
      The constraint, or ``None`` for ``None``.

    Raises:
      ValueError: for an unknown name (listing the valid ones; a regularizer's name is said
        to be one), or a name whose class needs arguments.
      TypeError: for a regularizer object, a class instead of an instance, or anything else.

    Example:
      >>> import jaxcons
      >>> jaxcons.constraints.get("non_neg")
      NonNeg()
      >>> jaxcons.constraints.get("maxnorm")
      MaxNorm(max_value=2.0, axis=0)
      >>> jaxcons.constraints.get({"class_name": "UnitNorm", "config": {"axis": [0, 1]}})
      UnitNorm(axis=[0, 1])
    """
    return _registry.get(identifier)


def serialize(constraint: Constraint) -> dict[str, Any]:
    """Returns a JSON-safe ``{"class_name": ..., "config": ...}`` dict for a constraint.

    Args:
      constraint: a registered `Constraint` (built-in classes are registered).

    Returns:
      ``{"class_name": name, "config": get_config()}``, with tuples as lists and NumPy scalars
      as Python numbers.

    Raises:
      ValueError: for a plain function or an unregistered class.

    Example:
      >>> import jaxcons
      >>> jaxcons.constraints.serialize(jaxcons.Clip(0.0, 1.0))
      {'class_name': 'Clip', 'config': {'min_value': 0.0, 'max_value': 1.0}}
    """
    return _registry.serialize(constraint)


def deserialize(config: dict[str, Any] | str) -> Constraint:
    """Rebuilds a constraint from `serialize`'s output (or from a name).

    Args:
      config: a dict from `serialize`, or a string identifier as `get` takes.

    Returns:
      The constraint, built with ``cls.from_config(config["config"])``.

    Raises:
      ValueError: for an unknown class name (listing the valid ones) or a malformed dict.

    Example:
      >>> import jaxcons
      >>> c = jaxcons.constraints.MinMaxNorm(0.5, 2.0, rate=0.5, axis=(0, 1))
      >>> jaxcons.constraints.deserialize(jaxcons.constraints.serialize(c)) == c
      True
    """
    return _registry.deserialize(config)


def register(cls: type | None = None, *, name: str | None = None) -> Any:
    """Class decorator registering a custom `Constraint` subclass for `get`/`deserialize`.

    Args:
      cls: the class (when used as ``@register``).
      name: the name to register it under (default: the class name), when used as
        ``@register(name=...)``.

    Returns:
      The class itself, or a decorator when called with only ``name``.

    Raises:
      TypeError: for a class that does not subclass `Constraint`.
      ValueError: for a name already taken by another class or a built-in shortcut.

    Example:
      >>> import jaxcons
      >>> @jaxcons.constraints.register
      ... class Halve(jaxcons.Constraint):
      ...   def __call__(self, w):
      ...     return w / 2
      >>> jaxcons.constraints.deserialize(jaxcons.constraints.serialize(Halve()))
      Halve()
    """
    return _registry.register(cls, name=name)
