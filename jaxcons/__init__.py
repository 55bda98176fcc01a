"""jaxcons: Keras-style weight constraints and regularizers for JAX, optax and flax.

One flat namespace: the transforms and functions of the engine (``jaxcons._src``), and every
built-in constraint and regularizer with its Keras snake_case name. The registry functions
(``get``, ``serialize``, ``deserialize``, ``register``) live in `jaxcons.constraints` and
`jaxcons.regularizers`, as in Keras. The adapters (`jaxcons.flax`, `jaxcons.keras`) are
imported on their own.
"""

import importlib.metadata

from jaxcons import constraints as constraints
from jaxcons import regularizers as regularizers
from jaxcons._src.base import Constraint as Constraint
from jaxcons._src.base import Regularizer as Regularizer
from jaxcons._src.base import StatefulConstraint as StatefulConstraint
from jaxcons._src.chain import chain as chain
from jaxcons._src.constrain import ConstrainState as ConstrainState
from jaxcons._src.constrain import apply_constraints as apply_constraints
from jaxcons._src.constrain import constrain as constrain
from jaxcons._src.feasibility import violations as violations
from jaxcons._src.lipschitz import spectral_norm_bound as spectral_norm_bound
from jaxcons._src.lipschitz import spectral_norm_bounds as spectral_norm_bounds
from jaxcons._src.penalty import activity_penalty as activity_penalty
from jaxcons._src.penalty import penalties as penalties
from jaxcons._src.penalty import penalty as penalty
from jaxcons._src.proximal import ProximalState as ProximalState
from jaxcons._src.proximal import proximal as proximal
from jaxcons._src.regularize import regularize as regularize
from jaxcons._src.rules import Rules as Rules
from jaxcons._src.rules import mask as mask
from jaxcons._src.tangent import tangent as tangent
from jaxcons._src.tree import path_str as path_str
from jaxcons._src.tree import paths as paths
from jaxcons.constraints import PSD as PSD
from jaxcons.constraints import Clip as Clip
from jaxcons.constraints import Intersection as Intersection
from jaxcons.constraints import L1Ball as L1Ball
from jaxcons.constraints import MaxNorm as MaxNorm
from jaxcons.constraints import MinMaxNorm as MinMaxNorm
from jaxcons.constraints import NofM as NofM
from jaxcons.constraints import NonNeg as NonNeg
from jaxcons.constraints import NuclearBall as NuclearBall
from jaxcons.constraints import Orthogonal as Orthogonal
from jaxcons.constraints import RadialConstraint as RadialConstraint
from jaxcons.constraints import Simplex as Simplex
from jaxcons.constraints import SingularValueClip as SingularValueClip
from jaxcons.constraints import SpectralNorm as SpectralNorm
from jaxcons.constraints import Symmetric as Symmetric
from jaxcons.constraints import TopK as TopK
from jaxcons.constraints import UnitNorm as UnitNorm
from jaxcons.constraints import clip as clip
from jaxcons.constraints import intersection as intersection
from jaxcons.constraints import l1_ball as l1_ball
from jaxcons.constraints import max_norm as max_norm
from jaxcons.constraints import min_max_norm as min_max_norm
from jaxcons.constraints import n_of_m as n_of_m
from jaxcons.constraints import non_neg as non_neg
from jaxcons.constraints import nuclear_ball as nuclear_ball
from jaxcons.constraints import orthogonal as orthogonal
from jaxcons.constraints import psd as psd
from jaxcons.constraints import radial_constraint as radial_constraint
from jaxcons.constraints import simplex as simplex
from jaxcons.constraints import singular_value_clip as singular_value_clip
from jaxcons.constraints import spectral_norm as spectral_norm
from jaxcons.constraints import symmetric as symmetric
from jaxcons.constraints import top_k as top_k
from jaxcons.constraints import unit_norm as unit_norm
from jaxcons.constraints._orthogonal import OrthogonalState as OrthogonalState
from jaxcons.constraints._spectral import SpectralNormState as SpectralNormState
from jaxcons.regularizers import L1 as L1
from jaxcons.regularizers import L1L2 as L1L2
from jaxcons.regularizers import L2 as L2
from jaxcons.regularizers import GroupLasso as GroupLasso
from jaxcons.regularizers import NuclearNorm as NuclearNorm
from jaxcons.regularizers import OrthogonalRegularizer as OrthogonalRegularizer
from jaxcons.regularizers import group_lasso as group_lasso
from jaxcons.regularizers import l1 as l1
from jaxcons.regularizers import l1_l2 as l1_l2
from jaxcons.regularizers import l2 as l2
from jaxcons.regularizers import nuclear_norm as nuclear_norm
from jaxcons.regularizers import orthogonal_regularizer as orthogonal_regularizer

__version__ = importlib.metadata.version("jaxcons")

__all__ = [
    "Clip",
    "ConstrainState",
    "Constraint",
    "GroupLasso",
    "Intersection",
    "L1",
    "L1Ball",
    "L1L2",
    "L2",
    "MaxNorm",
    "MinMaxNorm",
    "NofM",
    "NonNeg",
    "NuclearBall",
    "NuclearNorm",
    "Orthogonal",
    "OrthogonalRegularizer",
    "OrthogonalState",
    "PSD",
    "ProximalState",
    "RadialConstraint",
    "Regularizer",
    "Rules",
    "Simplex",
    "SingularValueClip",
    "SpectralNorm",
    "SpectralNormState",
    "StatefulConstraint",
    "Symmetric",
    "TopK",
    "UnitNorm",
    "activity_penalty",
    "apply_constraints",
    "chain",
    "clip",
    "constrain",
    "constraints",
    "group_lasso",
    "intersection",
    "l1",
    "l1_ball",
    "l1_l2",
    "l2",
    "mask",
    "max_norm",
    "min_max_norm",
    "n_of_m",
    "non_neg",
    "nuclear_ball",
    "nuclear_norm",
    "orthogonal",
    "orthogonal_regularizer",
    "path_str",
    "paths",
    "penalties",
    "penalty",
    "proximal",
    "psd",
    "radial_constraint",
    "regularize",
    "regularizers",
    "simplex",
    "singular_value_clip",
    "spectral_norm",
    "spectral_norm_bound",
    "spectral_norm_bounds",
    "symmetric",
    "tangent",
    "top_k",
    "unit_norm",
    "violations",
]
