"""Weight constraints: the classes, their Keras shortcut names, and (de)serialization.

Everything here is also available from the top-level `jaxcons` namespace, except the
registry functions (`get`, `serialize`, `deserialize`, `register`), which live here as in
``keras.constraints``.
"""

from __future__ import annotations

from typing import Any

from jaxcons._constraint import Constraint, StatefulConstraint
from jaxcons._constraints import Clip, NonNeg
from jaxcons._registry import Registry

__all__ = [
    "Clip",
    "Constraint",
    "NonNeg",
    "StatefulConstraint",
    "deserialize",
    "get",
    "non_neg",
    "register",
    "serialize",
]

non_neg = NonNeg

_registry = Registry("constraint", Constraint)
for _cls in (Constraint, Clip, NonNeg):
    _registry.add(_cls)
for _name, _factory in {
    "non_neg": NonNeg,
    "nonneg": NonNeg,  # tf.keras 2.x legacy name.
}.items():
    _registry.add_shortcut(_name, _factory)


def get(identifier: Any) -> Any:
    """Returns a constraint from an identifier.

    Args:
      identifier: ``None``; a class name (``"MaxNorm"``) or snake_case name (``"max_norm"``,
        and tf.keras's legacy ``"maxnorm"``, ``"nonneg"``, ``"unitnorm"``), built with its
        defaults; a dict from `serialize`; a `Constraint`; or any callable ``w -> w``.

    Returns:
      The constraint, or ``None`` for ``None``.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
      TypeError: for anything else.

    Example:
      >>> import jaxcons
      >>> jaxcons.constraints.get("non_neg")
      NonNeg()
    """
    return _registry.get(identifier)


def serialize(constraint: Constraint) -> dict[str, Any]:
    """Returns a JSON-safe ``{"class_name": ..., "config": ...}`` dict for a constraint.

    Raises:
      ValueError: for a plain function or an unregistered class.

    Example:
      >>> import jaxcons
      >>> jaxcons.constraints.serialize(jaxcons.Clip(0.0, 1.0))
      {'class_name': 'Clip', 'config': {'min_value': 0.0, 'max_value': 1.0}}
    """
    return _registry.serialize(constraint)


def deserialize(config: dict[str, Any] | str) -> Constraint:
    """Rebuilds a constraint from `serialize`'s output (or from a name)."""
    return _registry.deserialize(config)


def register(cls: type | None = None, *, name: str | None = None) -> Any:
    """Class decorator registering a custom `Constraint` subclass for `get`/`deserialize`.

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
