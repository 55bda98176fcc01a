"""Weight constraints: the classes, their Keras snake_case names, and (de)serialization.

Every class and snake_case name here is also in the top-level `jaxcons` namespace; the
registry functions (`get`, `serialize`, `deserialize`, `register`) live here only, as in
``keras.constraints``. One module per family: boxes, norms, radial, l1, sparsity, spectral,
matrix, orthogonal, intersection.
"""

from __future__ import annotations

import sys
from typing import Any

from jaxcons._src.base import Constraint as Constraint
from jaxcons._src.base import StatefulConstraint as StatefulConstraint
from jaxcons._src.registry import CONSTRAINTS as _REGISTRY
from jaxcons.constraints._boxes import Clip as Clip
from jaxcons.constraints._boxes import NonNeg as NonNeg
from jaxcons.constraints._intersection import Intersection as Intersection
from jaxcons.constraints._l1 import L1Ball as L1Ball
from jaxcons.constraints._l1 import Simplex as Simplex
from jaxcons.constraints._matrix import PSD as PSD
from jaxcons.constraints._matrix import NuclearBall as NuclearBall
from jaxcons.constraints._matrix import SingularValueClip as SingularValueClip
from jaxcons.constraints._matrix import Symmetric as Symmetric
from jaxcons.constraints._norms import MaxNorm as MaxNorm
from jaxcons.constraints._norms import MinMaxNorm as MinMaxNorm
from jaxcons.constraints._norms import UnitNorm as UnitNorm
from jaxcons.constraints._orthogonal import Orthogonal as Orthogonal
from jaxcons.constraints._radial import RadialConstraint as RadialConstraint
from jaxcons.constraints._sparsity import NofM as NofM
from jaxcons.constraints._sparsity import TopK as TopK
from jaxcons.constraints._spectral import SpectralNorm as SpectralNorm

# The snake_case names, as in Keras: the classes themselves.
clip = Clip
intersection = Intersection
l1_ball = L1Ball
max_norm = MaxNorm
min_max_norm = MinMaxNorm
n_of_m = NofM
non_neg = NonNeg
nuclear_ball = NuclearBall
orthogonal = Orthogonal
psd = PSD
radial_constraint = RadialConstraint
simplex = Simplex
singular_value_clip = SingularValueClip
spectral_norm = SpectralNorm
symmetric = Symmetric
top_k = TopK
unit_norm = UnitNorm

__all__ = [
    "PSD",
    "Clip",
    "Constraint",
    "Intersection",
    "L1Ball",
    "MaxNorm",
    "MinMaxNorm",
    "NofM",
    "NonNeg",
    "NuclearBall",
    "Orthogonal",
    "RadialConstraint",
    "Simplex",
    "SingularValueClip",
    "SpectralNorm",
    "StatefulConstraint",
    "Symmetric",
    "TopK",
    "UnitNorm",
    "clip",
    "deserialize",
    "get",
    "intersection",
    "l1_ball",
    "max_norm",
    "min_max_norm",
    "n_of_m",
    "non_neg",
    "nuclear_ball",
    "orthogonal",
    "psd",
    "radial_constraint",
    "register",
    "serialize",
    "simplex",
    "singular_value_clip",
    "spectral_norm",
    "symmetric",
    "top_k",
    "unit_norm",
]


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
    return _REGISTRY.get(identifier)


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
    return _REGISTRY.serialize(constraint)


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
    return _REGISTRY.deserialize(config)


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
    return _REGISTRY.register(cls, name=name)


# Every public class of this namespace's own modules is a built-in: registered under its name
# and its `identifiers`.
_REGISTRY.add_builtins(
    obj
    for obj in (getattr(sys.modules[__name__], name) for name in __all__)
    if isinstance(obj, type) and obj.__module__.startswith(__name__ + ".")
)
