"""jaxcons: Keras-style weight constraints and regularizers for JAX, optax and flax."""

import importlib.metadata

from jaxcons import constraints, regularizers
from jaxcons._constraint import Constraint, StatefulConstraint
from jaxcons._paths import path_str, paths
from jaxcons._penalties import activity_penalty, penalties, penalty
from jaxcons._regularize import ProximalState, proximal, regularize
from jaxcons._rules import Rules, mask
from jaxcons._spectral import SpectralNormState
from jaxcons._transforms import ConstrainState, apply_constraints, constrain
from jaxcons.constraints import (
    Clip,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    RadialConstraint,
    SpectralNorm,
    UnitNorm,
    max_norm,
    min_max_norm,
    non_neg,
    radial_constraint,
    spectral_norm,
    unit_norm,
)
from jaxcons.regularizers import (
    L1,
    L1L2,
    L2,
    GroupLasso,
    OrthogonalRegularizer,
    Regularizer,
    group_lasso,
    l1,
    l1_l2,
    l2,
    orthogonal_regularizer,
)

__version__ = importlib.metadata.version("jaxcons")

__all__ = [
    "Clip",
    "ConstrainState",
    "Constraint",
    "GroupLasso",
    "L1",
    "L1L2",
    "L2",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "OrthogonalRegularizer",
    "ProximalState",
    "RadialConstraint",
    "Regularizer",
    "Rules",
    "SpectralNorm",
    "SpectralNormState",
    "StatefulConstraint",
    "UnitNorm",
    "activity_penalty",
    "apply_constraints",
    "constrain",
    "constraints",
    "group_lasso",
    "l1",
    "l1_l2",
    "l2",
    "mask",
    "max_norm",
    "min_max_norm",
    "non_neg",
    "orthogonal_regularizer",
    "path_str",
    "paths",
    "penalties",
    "penalty",
    "proximal",
    "radial_constraint",
    "regularize",
    "regularizers",
    "spectral_norm",
    "unit_norm",
]
