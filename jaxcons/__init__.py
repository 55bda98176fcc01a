"""jaxcons: Keras-style weight constraints and regularizers for JAX, optax and flax."""

from jaxcons import constraints
from jaxcons._constraint import Constraint, StatefulConstraint
from jaxcons._constraints import Clip, NonNeg
from jaxcons._paths import path_str, paths
from jaxcons._rules import Rules, mask
from jaxcons._transforms import ConstrainState, apply_constraints, constrain
from jaxcons.constraints import non_neg

__version__ = "0.1.0"

__all__ = [
    "Clip",
    "ConstrainState",
    "Constraint",
    "NonNeg",
    "Rules",
    "StatefulConstraint",
    "apply_constraints",
    "constrain",
    "constraints",
    "mask",
    "non_neg",
    "path_str",
    "paths",
]
