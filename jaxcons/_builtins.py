"""The one table of built-in constraints and regularizers.

Each row feeds the registry (class name and string identifiers for ``get``/``deserialize``),
the snake_case alias exported by `jaxcons.constraints` / `jaxcons.regularizers` (Keras's
``max_norm``, ``l1`` ...), and the public ``__all__`` of those modules and of `jaxcons`.
A new built-in is one class and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from jaxcons._box_constraints import Clip, NonNeg
from jaxcons._intersection import Intersection
from jaxcons._l1_constraints import L1Ball, Simplex
from jaxcons._matrix_constraints import PSD, NuclearBall, Orthogonal, SingularValueClip
from jaxcons._norm_constraints import MaxNorm, MinMaxNorm, UnitNorm
from jaxcons._radial_constraint import RadialConstraint
from jaxcons._sparsity_constraints import NofM, TopK
from jaxcons._spectral_constraint import SpectralNorm
from jaxcons._weight_regularizers import (
    L1,
    L1L2,
    L2,
    GroupLasso,
    NuclearNorm,
    OrthogonalRegularizer,
)

__all__ = ["CONSTRAINTS", "REGULARIZERS", "Builtin", "public_names"]


class Builtin(NamedTuple):
    """One built-in.

    Attributes:
      cls: the class (registered under its name).
      alias: the snake_case name: a module attribute bound to the class, and a string
        identifier that builds ``factory()``.
      legacy: further string identifiers (tf.keras 2.x names) that build ``factory()``.
      factory: what the string identifiers build (default: the class with its defaults).
    """

    cls: type
    alias: str
    legacy: tuple[str, ...] = ()
    factory: Callable[[], Any] | None = None

    def build(self) -> Any:
        """The object a string identifier of this row stands for."""
        return (self.factory or self.cls)()


CONSTRAINTS: tuple[Builtin, ...] = (
    Builtin(NonNeg, "non_neg", ("nonneg",)),
    Builtin(Clip, "clip"),
    Builtin(MaxNorm, "max_norm", ("maxnorm",)),
    Builtin(MinMaxNorm, "min_max_norm"),
    Builtin(UnitNorm, "unit_norm", ("unitnorm",)),
    Builtin(RadialConstraint, "radial_constraint"),
    Builtin(SpectralNorm, "spectral_norm"),
    Builtin(L1Ball, "l1_ball"),
    Builtin(Simplex, "simplex"),
    Builtin(TopK, "top_k"),
    Builtin(NofM, "n_of_m"),
    Builtin(Intersection, "intersection"),
    Builtin(SingularValueClip, "singular_value_clip"),
    Builtin(NuclearBall, "nuclear_ball"),
    Builtin(PSD, "psd"),
    Builtin(Orthogonal, "orthogonal"),
)

REGULARIZERS: tuple[Builtin, ...] = (
    Builtin(L1, "l1"),
    Builtin(L2, "l2"),
    # Keras 3 rejects this documented identifier; we give what its documentation promises.
    Builtin(L1L2, "l1_l2", factory=lambda: L1L2(l1=0.01, l2=0.01)),
    Builtin(OrthogonalRegularizer, "orthogonal_regularizer"),
    Builtin(GroupLasso, "group_lasso"),
    Builtin(NuclearNorm, "nuclear_norm"),
)


def public_names(table: tuple[Builtin, ...]) -> dict[str, type]:
    """``{name: class}`` for every class name and snake_case alias of ``table``."""
    out: dict[str, type] = {}
    for row in table:
        out[row.cls.__name__] = row.cls
        out[row.alias] = row.cls
    return out
