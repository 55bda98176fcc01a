"""Weight constraints: the classes, their Keras shortcut names, and (de)serialization.

Everything here is also available from the top-level `jaxcons` namespace, except the
registry functions (`get`, `serialize`, `deserialize`, `register`), which live here as in
``keras.constraints``.
"""

from __future__ import annotations

from typing import Any

from jaxcons._constraint import Constraint, StatefulConstraint
from jaxcons._constraints import Clip, MaxNorm, MinMaxNorm, NonNeg, RadialConstraint, UnitNorm
from jaxcons._registry import Registry
from jaxcons._spectral import SpectralNorm

__all__ = [
    "Clip",
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "RadialConstraint",
    "SpectralNorm",
    "StatefulConstraint",
    "UnitNorm",
    "deserialize",
    "get",
    "max_norm",
    "min_max_norm",
    "non_neg",
    "radial_constraint",
    "register",
    "serialize",
    "spectral_norm",
    "unit_norm",
]

# Keras's shortcut names (and one for SpectralNorm, which Keras lacks).
max_norm = MaxNorm
min_max_norm = MinMaxNorm
non_neg = NonNeg
unit_norm = UnitNorm
radial_constraint = RadialConstraint
spectral_norm = SpectralNorm

_registry = Registry("constraint", Constraint)
for _cls in (
    Constraint,
    Clip,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    RadialConstraint,
    SpectralNorm,
    UnitNorm,
):
    _registry.add(_cls)
for _name, _factory in {
    "max_norm": MaxNorm,
    "min_max_norm": MinMaxNorm,
    "non_neg": NonNeg,
    "unit_norm": UnitNorm,
    "radial_constraint": RadialConstraint,
    "spectral_norm": SpectralNorm,
    # tf.keras 2.x legacy names.
    "maxnorm": MaxNorm,
    "nonneg": NonNeg,
    "unitnorm": UnitNorm,
}.items():
    _registry.add_shortcut(_name, _factory)


def get(identifier: Any) -> Any:
    """Returns a constraint from an identifier.

    Args:
      identifier: ``None``; a class name (``"MaxNorm"``) or snake_case name (``"max_norm"``,
        ``"min_max_norm"``, ``"non_neg"``, ``"unit_norm"``, ``"radial_constraint"``,
        ``"spectral_norm"``, and tf.keras's legacy ``"maxnorm"``, ``"nonneg"``,
        ``"unitnorm"``), built with its defaults; a dict from `serialize`; a `Constraint`;
        or any callable ``w -> w``.

    Returns:
      The constraint, or ``None`` for ``None``.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
      TypeError: for anything else.

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
