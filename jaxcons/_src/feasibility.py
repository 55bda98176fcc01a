"""`violations`: how far each governed parameter is from its constraint's set, for logging."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxcons._src.constrain import _direct_rules
from jaxcons._src.matrix_stacks import ONE_MATRIX, InOrder
from jaxcons._src.numerics import accumulation_dtype
from jaxcons._src.rules import Rules, RulesLike
from jaxcons._src.tree import is_masked
from jaxcons._src.updates import call_leaf


def violations(
    params: optax.Params,
    rules: RulesLike | Rules | None = None,
    *,
    prefer: str | None = None,
    strict: bool | None = None,
) -> dict[str, jax.Array]:
    """How far each governed parameter is from its constraint's set: for logging each step.

    For every parameter ``w`` a rule governs, the largest absolute entry of ``w - P(w)``,
    with ``P`` the exact projection (``__call__``, as `apply_constraints` uses: `SpectralNorm`
    computes the exact largest singular value):

    .. math:: v(w) = \\max_i |w_i - P(w)_i|

    It is exactly ``0.0`` for a parameter its projection leaves unchanged: the built-in
    projections return feasible input bit for bit. For a box (`NonNeg`, `Clip`) the
    projection rounds each bound inward, so it lies inside the true bounds and a parameter
    outside them (a float32 ``0.3`` above ``Clip(max_value=0.3)``) never measures ``0.0``.
    A parameter just projected onto a norm bound can measure a few ulps (its norm computes as
    ``1.0000001`` and a second projection moves it by an ulp); a constraint that is not a
    projection (``MinMaxNorm(rate < 1)``) measures its next step. Pure and jit-compatible; the
    cost is one projection per governed leaf (an SVD for `SpectralNorm`).

    Args:
      params: the parameter pytree (declarations are honoured, as in `apply_constraints`).
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
        ``None``: the declared constraints only.
      prefer: where a declaration and an explicit rule differ, as in `constrain`.
      strict: raise if a rule acts on no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      ``{path: scalar}`` in the tree's flattening order, each scalar in at least float32; for
      a constraint with ``batch_axes`` (`Orthogonal`, `SpectralNorm`, `SingularValueClip`,
      `NuclearBall`), an array of the batch shape: one value per matrix.

    Raises:
      ValueError: as `apply_constraints`.
      TypeError: for a regularizer given as a constraint.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> params = {"kernel": jnp.array([[3.0], [4.0]]), "bias": jnp.array([0.5, -0.25])}
      >>> jaxcons.violations(params, {"kernel": jaxcons.MaxNorm(5.0), "bias": "non_neg"})
      {'bias': Array(0.25, dtype=float32), 'kernel': Array(0., dtype=float32)}
    """
    resolution = _direct_rules(params, rules, prefer, strict, "violations").resolve(params)
    leaves = jax.tree_util.tree_leaves(params, is_leaf=is_masked)
    out = {}
    order = InOrder()
    for i, path, c in resolution.active():
        (w,) = order.wait(c, jnp.asarray(leaves[i]))
        dtype = accumulation_dtype(w.dtype)
        gap = jnp.abs(w.astype(dtype) - order.done(c, call_leaf(c, path, w)).astype(dtype))
        stack = getattr(c, "matrix_stack", ONE_MATRIX)  # One value per matrix.
        per_matrix = stack.split(gap).reshape((*stack.batch_shape(w.shape), -1))
        out[path] = jnp.max(per_matrix, axis=-1, initial=0)
    return out
