"""Weight regularizers: the classes, their Keras alias names, and (de)serialization.

Every class and alias here is also in the top-level `jaxcons` namespace; the registry
functions (`get`, `serialize`, `deserialize`, `register`) live here only, as in
``keras.regularizers``. One module per family: elementwise (`L1`, `L2`, `L1L2`) and structured
(`OrthogonalRegularizer`, `GroupLasso`, `NuclearNorm`).

The aliases (`l1`, `l2`, `l1_l2`, `orthogonal_regularizer`, `group_lasso`, `nuclear_norm`) are
the classes themselves, as in Keras 3, so ``l1_l2()`` has the class defaults ``l1=0.0,
l2=0.0``; the string identifier ``"l1_l2"`` gives ``L1L2(l1=0.01, l2=0.01)``, as the Keras
documentation promises.
"""

from __future__ import annotations

import sys
from typing import Any

from jaxcons._src.base import Regularizer as Regularizer
from jaxcons._src.registry import REGULARIZERS as _REGISTRY
from jaxcons.regularizers._elementwise import L1 as L1
from jaxcons.regularizers._elementwise import L1L2 as L1L2
from jaxcons.regularizers._elementwise import L2 as L2
from jaxcons.regularizers._structured import GroupLasso as GroupLasso
from jaxcons.regularizers._structured import NuclearNorm as NuclearNorm
from jaxcons.regularizers._structured import OrthogonalRegularizer as OrthogonalRegularizer

# The snake_case names, as in Keras: the classes themselves.
group_lasso = GroupLasso
l1 = L1
l1_l2 = L1L2
l2 = L2
nuclear_norm = NuclearNorm
orthogonal_regularizer = OrthogonalRegularizer

__all__ = [
    "L1",
    "L1L2",
    "L2",
    "GroupLasso",
    "NuclearNorm",
    "OrthogonalRegularizer",
    "Regularizer",
    "deserialize",
    "get",
    "group_lasso",
    "l1",
    "l1_l2",
    "l2",
    "nuclear_norm",
    "orthogonal_regularizer",
    "register",
    "serialize",
]


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
    return _REGISTRY.get(identifier)


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
    return _REGISTRY.serialize(regularizer)


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
    return _REGISTRY.deserialize(config)


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
    return _REGISTRY.register(cls, name=name)


# Every public class of this namespace's own modules is a built-in: registered under its name
# and its `identifiers`.
_REGISTRY.add_builtins(
    obj
    for obj in (getattr(sys.modules[__name__], name) for name in __all__)
    if isinstance(obj, type) and obj.__module__.startswith(__name__ + ".")
)
