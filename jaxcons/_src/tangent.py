"""`tangent`: updates projected onto the tangent spaces of the constraints' sets (Riemannian
steps with any optax optimizer)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxcons._src.base import Constraint
from jaxcons._src.constrain import as_constraint_rules
from jaxcons._src.rules import Rules, RulesLike
from jaxcons._src.updates import check_like, map_governed


def _require_tangent(path: str, c: Constraint) -> None:
    if not callable(getattr(c, "tangent", None)):
        raise ValueError(
            f"jaxcons.tangent: the constraint {c!r} for parameter {path!r} has no tangent space "
            "(its set is not a smooth manifold with a tangent projection; UnitNorm and "
            "Orthogonal have one). Leave the parameter out of the tangent rules: map it to "
            "None there, or give jaxcons.chain(..., tangent=rules) rules naming only the "
            "manifold parameters."
        )


def tangent(
    rules: RulesLike | Rules, *, strict: bool | None = None
) -> optax.GradientTransformation:
    """Projects each governed parameter's update onto the tangent space of its set.

    Place it before the optimizer (after `jaxcons.regularize`, if any, so the penalty's
    gradient is projected too) and `jaxcons.constrain` with the same rules last, as the
    retraction back onto the set: ``update(grads, state, params)`` returns

    .. math:: g' = P_{T_\\theta \\mathcal{M}}(g)

    for every parameter ``theta`` a rule governs, where ``M`` is its constraint's set
    (a sphere per slice for `UnitNorm`, the Stiefel manifold for `Orthogonal`):

    .. code-block:: python

       optax.chain(jaxcons.tangent(rules), optax.adam(1e-3), jaxcons.constrain(rules))

    With `optax.sgd` this is Riemannian gradient descent with the projection as retraction
    (Absil, Mahony and Sepulchre, 2008, ch. 4): the step leaves the manifold only to second
    order in the learning rate, so the retraction moves the parameters less and a cheap one
    (`Orthogonal`'s Newton-Schulz steps) has less to correct. With an adaptive optimizer
    (Adam) the moments mix tangent vectors of past points without transporting them, and the
    per-coordinate scaling takes the step slightly out of the tangent space; the projection
    of the gradient still removes its normal part, which is what would fight the constraint.
    Parameters no rule governs keep their updates untouched.

    Args:
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]`` as for
        `jaxcons.constrain`; first match wins, ``None`` exempts. Every governed constraint
        needs a ``tangent`` method.
      strict: raise if a rule acts on no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      An `optax.GradientTransformation` whose state is `optax.EmptyState`.

    Raises:
      ValueError: at ``init``/``update`` when a rule acts on nothing (``strict=True``), a
        constraint cannot act on a parameter's shape, or a constraint has no tangent space
        (naming the parameter's path and the constraint); at ``update`` when ``params`` is
        missing or a tangent projection returns another shape or dtype.
      TypeError: when built, for a regularizer given as a constraint.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> params = {"w": jnp.array([[1.0], [0.0]])}
      >>> rules = {"w": jaxcons.UnitNorm(axis=0)}
      >>> tx = jaxcons.tangent(rules)
      >>> g, _ = tx.update({"w": jnp.array([[2.0], [3.0]])}, tx.init(params), params)
      >>> g["w"]  # The radial component (along w) is gone.
      Array([[0.],
             [3.]], dtype=float32)
    """
    resolved_rules = as_constraint_rules(rules, strict=strict)

    def init_fn(params: optax.Params) -> optax.EmptyState:
        for _, path, c in resolved_rules.resolve(params).active():
            _require_tangent(path, c)
        return optax.EmptyState()

    def update_fn(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        def project(path: str, c: Any, p: jax.Array, u: jax.Array) -> jax.Array:
            _require_tangent(path, c)
            return check_like(f"The tangent projection of {c!r}", path, u, c.tangent(p, u))

        return map_governed(resolved_rules, updates, params, "tangent", project), state

    return optax.GradientTransformation(init_fn, update_fn)
