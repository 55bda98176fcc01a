"""jaxcons: Keras-style weight constraints and regularizers for JAX, optax and flax.

One flat namespace: the built-in constraints and regularizers (with their Keras snake_case
aliases) come from the table in ``jaxcons._builtins``; the registry functions live in
`jaxcons.constraints` and `jaxcons.regularizers`, as in Keras.
"""

import importlib.metadata

from jaxcons import _builtins, constraints, regularizers
from jaxcons._chain import chain
from jaxcons._constrain import ConstrainState, apply_constraints, constrain, violations
from jaxcons._matrix_constraints import OrthogonalState
from jaxcons._penalties import activity_penalty, penalties, penalty
from jaxcons._protocol import Constraint, Regularizer, StatefulConstraint
from jaxcons._regularize import ProximalState, proximal, regularize
from jaxcons._rules import Rules, mask
from jaxcons._spectral_constraint import SpectralNormState
from jaxcons._tangent import tangent
from jaxcons._tree import path_str, paths

__version__ = importlib.metadata.version("jaxcons")

_BUILTIN_NAMES = {
    **_builtins.public_names(_builtins.CONSTRAINTS),
    **_builtins.public_names(_builtins.REGULARIZERS),
}
globals().update(_BUILTIN_NAMES)

__all__ = [
    "ConstrainState",
    "Constraint",
    "OrthogonalState",
    "ProximalState",
    "Regularizer",
    "Rules",
    "SpectralNormState",
    "StatefulConstraint",
    "activity_penalty",
    "apply_constraints",
    "chain",
    "constrain",
    "constraints",
    "mask",
    "path_str",
    "paths",
    "penalties",
    "penalty",
    "proximal",
    "regularize",
    "regularizers",
    "violations",
    "tangent",
]
__all__ += list(_BUILTIN_NAMES)  # The built-ins, from their table.
__all__.sort()
