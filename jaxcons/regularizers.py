"""Weight regularizers: the classes, their Keras alias names, and (de)serialization.

Everything here is also available from the top-level `jaxcons` namespace, except the
registry functions (`get`, `serialize`, `deserialize`, `register`), which live here as in
``keras.regularizers``.

The aliases (`l1`, `l2`, `l1_l2`, `orthogonal_regularizer`, `group_lasso`) are the classes
themselves, as in Keras 3, so ``l1_l2()`` has the class defaults ``l1=0.0, l2=0.0``; the
string identifier ``"l1_l2"`` gives ``L1L2(l1=0.01, l2=0.01)``, as the Keras documentation
promises.
"""

from __future__ import annotations

from typing import Any

from jaxcons import _builtins
from jaxcons._protocol import Regularizer
from jaxcons._registry import Registry

_registry = Registry("regularizer", Regularizer)
_registry.add(Regularizer)
_registry.add_builtins(_builtins.REGULARIZERS)

globals().update(_builtins.public_names(_builtins.REGULARIZERS))

__all__ = [
    "Regularizer",
    "deserialize",
    "get",
    "register",
    "serialize",
]
__all__ += list(_builtins.public_names(_builtins.REGULARIZERS))  # The built-ins, from their table.
__all__.sort()


def get(identifier: Any) -> Any:
    """Returns a regularizer from an identifier.

    Args:
      identifier: ``None``; a class name (``"L1"``) or snake_case name (``"l1"`` and ``"l2"``
        give factor 0.01, ``"l1_l2"`` gives ``L1L2(l1=0.01, l2=0.01)``,
        ``"orthogonal_regularizer"``, ``"group_lasso"``), built with those defaults; a dict from
        `serialize`; a `Regularizer`; or any callable ``x -> scalar``.

    Returns:
      The regularizer, or ``None`` for ``None``.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
      TypeError: for anything else.

    Example:
      >>> import jaxcons
      >>> jaxcons.regularizers.get("l1_l2")
      L1L2(l1=0.01, l2=0.01)
    """
    return _registry.get(identifier)


def serialize(regularizer: Regularizer) -> dict[str, Any]:
    """Returns a JSON-safe ``{"class_name": ..., "config": ...}`` dict for a regularizer.

    Factors are kept as the exact Python floats given (Keras stores 0.01 as 0.009999999776).

    Args:
      regularizer: a registered `Regularizer` (built-in classes are registered).

    Returns:
      ``{"class_name": name, "config": get_config()}``, JSON-safe.

    Raises:
      ValueError: for a plain function or an unregistered class.

    Example:
      >>> import jaxcons
      >>> jaxcons.regularizers.serialize(jaxcons.L1(0.01))
      {'class_name': 'L1', 'config': {'l1': 0.01}}
    """
    return _registry.serialize(regularizer)


def deserialize(config: dict[str, Any] | str) -> Regularizer:
    """Rebuilds a regularizer from `serialize`'s output (or from a name).

    Args:
      config: a dict from `serialize`, or a string identifier as `get` takes.

    Returns:
      The regularizer, built with ``cls.from_config(config["config"])``.

    Raises:
      ValueError: for an unknown class name (listing the valid ones) or a malformed dict.

    Example:
      >>> import jaxcons
      >>> jaxcons.regularizers.deserialize({"class_name": "L2", "config": {"l2": 0.5}})
      L2(l2=0.5)
    """
    return _registry.deserialize(config)


def register(cls: type | None = None, *, name: str | None = None) -> Any:
    """Class decorator registering a custom `Regularizer` subclass for `get`/`deserialize`.

    Args:
      cls: the class (when used as ``@register``).
      name: the name to register it under (default: the class name), when used as
        ``@register(name=...)``.

    Returns:
      The class itself, or a decorator when called with only ``name``.

    Raises:
      TypeError: for a class that does not subclass `Regularizer`.
      ValueError: for a name already taken by another class or a built-in shortcut.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> @jaxcons.regularizers.register
      ... class SumSquares(jaxcons.Regularizer):
      ...   def __call__(self, x):
      ...     return jnp.sum(x * x)
      >>> jaxcons.regularizers.deserialize(jaxcons.regularizers.serialize(SumSquares()))
      SumSquares()
    """
    return _registry.register(cls, name=name)
