"""`constrain` (an optax transform) and `apply_constraints` (the direct projection)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcons._constraint import StatefulConstraint
from jaxcons._rules import Rules, RulesLike

__all__ = ["ConstrainState", "apply_constraints", "as_constraint_rules", "constrain"]


class ConstrainState(NamedTuple):
    """State of `constrain`.

    Attributes:
      constraint_states: ``{path: state}`` for every parameter governed by a stateful
        constraint (e.g. the power-iteration vector of `SpectralNorm`); empty otherwise.
    """

    constraint_states: dict[str, Any]


def as_constraint_rules(rules: RulesLike | Rules, *, strict: bool = True) -> Rules:
    """Builds `Rules` whose values are constraints (names and configs are looked up)."""
    from jaxcons import constraints  # The registry module imports the classes.

    if isinstance(rules, Rules):
        return Rules(rules, strict=strict, kind="constraint")
    return Rules(rules, coerce=_coerce_constraint(constraints.get), strict=strict, kind="constraint")


def _coerce_constraint(get: Any) -> Any:
    def coerce(value: Any) -> Any:
        c = get(value)
        if not callable(c):
            raise TypeError(f"A constraint must be callable w -> w, got {value!r}.")
        return c

    return coerce


def _feasible_delta(c: Any, p: jax.Array, y: jax.Array, u_dtype: Any) -> jax.Array:
    """Returns ``t`` (in ``u_dtype``) such that ``p + t`` lands on the projection ``y``.

    ``p + (y - p)`` is ``y`` only up to rounding. For elementwise-box constraints the result
    of ``optax.apply_updates`` is recomputed here and any element that rounding pushed out of
    the box has ``t`` moved one ulp back inside (one step is always enough: the overshoot is
    at most half the spacing of ``t`` on the side it was rounded to).
    """
    t = (y - p).astype(u_dtype)
    bounds = getattr(c, "elementwise_bounds", None)
    if bounds is None:
        return t
    lo, hi = bounds
    landed = (p + t).astype(p.dtype)  # What optax.apply_updates computes.
    if hi is not None:
        t = jnp.where(landed > hi, jnp.nextafter(t, jnp.array(-jnp.inf, t.dtype)), t)
    if lo is not None:
        t = jnp.where(landed < lo, jnp.nextafter(t, jnp.array(jnp.inf, t.dtype)), t)
    return t


def constrain(rules: RulesLike | Rules, *, strict: bool = True) -> optax.GradientTransformation:
    """Projects parameters onto their constraints after each update.

    Place it last in `optax.chain`: ``update(updates, state, params)`` returns updates ``u'``
    such that ``optax.apply_updates(params, u')`` is the projection of ``params + updates``:

    .. math:: u' = P(p + u) - p

    Parameters no rule governs keep their updates untouched. Stateful constraints
    (`SpectralNorm`) keep their state in this transform's `ConstrainState`.

    Floating point: ``p + (P(x) - p)`` is not always bit-exactly ``P(x)``. Elementwise-box
    constraints (`NonNeg`, `Clip`) are corrected so the applied parameters are exactly
    feasible; norm bounds (`MaxNorm`, `UnitNorm`, ...) may be exceeded by a few ulps. Use
    `apply_constraints` for an exact projection.

    Args:
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
        Constraints may be `Constraint` objects, plain callables, names or config dicts.
      strict: raise if a rule matches no floating-point parameter (default).

    Returns:
      An `optax.GradientTransformation` whose state is a `ConstrainState`.

    Raises:
      ValueError: at ``init``/``update`` when a rule matches nothing (``strict=True``) or a
        constraint cannot act on a parameter's shape; at ``update`` when ``params`` is missing.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}
      >>> tx = optax.chain(optax.sgd(1.0), jaxcons.constrain({"bias": jaxcons.NonNeg()}))
      >>> state = tx.init(params)
      >>> grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([1.0, -1.0])}
      >>> updates, state = tx.update(grads, state, params)
      >>> optax.apply_updates(params, updates)["bias"]
      Array([0., 1.], dtype=float32)
    """
    resolved_rules = as_constraint_rules(rules, strict=strict)

    def init_fn(params: optax.Params) -> ConstrainState:
        resolution = resolved_rules.resolve(params)
        leaves = jax.tree_util.tree_leaves(params, is_leaf=_is_masked)
        states = {
            path: c.init(leaves[i])
            for i, path, c in resolution.active()
            if isinstance(c, StatefulConstraint)
        }
        return ConstrainState(constraint_states=states)

    def update_fn(
        updates: optax.Updates, state: ConstrainState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ConstrainState]:
        if params is None:
            raise ValueError(
                "jaxcons.constrain needs the current params: call "
                "tx.update(updates, state, params) (optax.chain passes them on)."
            )
        resolution = resolved_rules.resolve(params)
        p_leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_is_masked)
        u_leaves = treedef.flatten_up_to(updates)
        new_states = dict(state.constraint_states)
        out = list(u_leaves)
        for i, path, c in resolution.active():
            p, u = p_leaves[i], u_leaves[i]
            x = (p + u).astype(p.dtype)
            if isinstance(c, StatefulConstraint):
                y, new_states[path] = c.project(x, state.constraint_states[path])
            else:
                y = c(x)
            out[i] = _feasible_delta(c, p, y, u.dtype)
        return jax.tree_util.tree_unflatten(treedef, out), ConstrainState(new_states)

    return optax.GradientTransformation(init_fn, update_fn)


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def apply_constraints(
    params: optax.Params, rules: RulesLike | Rules, *, strict: bool = True
) -> optax.Params:
    """Applies constraints to ``params`` directly: the exact projection.

    Use it on initial weights, or after ``optax.apply_updates`` in a hand-written loop.
    Stateful constraints use their accurate stateless projection (`SpectralNorm` computes the
    exact largest singular value).

    Args:
      params: the parameter pytree.
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
      strict: raise if a rule matches no floating-point parameter (default).

    Returns:
      A pytree like ``params`` with every governed leaf projected.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> params = {"kernel": jnp.array([[3.0], [4.0]])}
      >>> jaxcons.apply_constraints(params, {"kernel": jaxcons.MaxNorm(1.0)})["kernel"]
      Array([[0.6],
             [0.8]], dtype=float32)
    """
    resolution = as_constraint_rules(rules, strict=strict).resolve(params)
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_is_masked)
    for i, _, c in resolution.active():
        leaves[i] = c(leaves[i])
    return jax.tree_util.tree_unflatten(treedef, leaves)
