"""`regularize`: the gradient of the rules' penalty added to the updates."""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxcons._src.declarations import DeclaredRules
from jaxcons._src.penalty import as_regularizer_rules, leaf_penalty
from jaxcons._src.rules import Rules, RulesLike
from jaxcons._src.updates import map_governed, require_params


def regularize(
    rules: RulesLike | Rules | None = None,
    *,
    prefer: str | None = None,
    strict: bool | None = None,
) -> optax.GradientTransformation:
    """Adds the gradient of the penalty to the incoming gradients (Keras's coupled semantics).

    Place it first in `optax.chain`, before the optimizer: ``update(grads, state, params)``
    returns

    .. math:: g' = g + \\nabla \\Omega(\\theta), \\qquad
       \\Omega(\\theta) = \\sum_p R_p(\\theta_p),

    so the optimizer sees the gradient of ``loss + penalty`` without the loss function having
    to add `jaxcons.penalty` (what Keras does with ``kernel_regularizer``). Parameters no rule
    governs keep their gradients untouched. With an adaptive optimizer (Adam) an `L2` here is
    Adam's coupled L2, not decoupled weight decay; `proximal` (or `optax.adamw`) gives the
    decoupled form.

    Regularizers declared on the parameters (linen boxes, nnx variable metadata) are honoured
    whenever ``init`` sees them, combined with ``rules`` as in `jaxcons.constrain`;
    ``regularize()`` means "the declared regularizers only".

    Args:
      rules: ``{pattern: regularizer}`` or ``[(pattern, regularizer), ...]``; first match wins,
        a value ``None`` exempts. Regularizers may be `Regularizer` objects, plain callables
        ``x -> scalar``, names or config dicts. ``None`` (or empty): the declared ones only.
      prefer: where a declaration and an explicit rule differ: ``None`` (an error),
        ``"declared"`` or ``"explicit"``.
      strict: raise if a rule acts on no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      An `optax.GradientTransformation` whose state is `optax.EmptyState`.

    Raises:
      ValueError: at ``init`` when there are no rules and nothing is declared; at
        ``init``/``update`` when a rule acts on nothing (``strict=True``) or a regularizer
        cannot act on a parameter's shape; at ``update`` when ``params`` is missing.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> params = {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.ones(2)}
      >>> tx = optax.chain(jaxcons.regularize({"kernel": jaxcons.L2(0.5)}), optax.sgd(0.1))
      >>> grads = {"kernel": jnp.zeros(2), "bias": jnp.zeros(2)}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["kernel"]
      Array([ 0.9, -1.8], dtype=float32)
    """
    return _regularize(rules, prefer=prefer, strict=strict, optional=False)


def _regularize(
    rules: RulesLike | Rules | None,
    *,
    prefer: str | None,
    strict: bool | None,
    optional: bool,
    declared: bool = True,
) -> optax.GradientTransformation:
    """`regularize`; with ``optional``, finding nothing to govern is no error; without
    ``declared``, the explicit rules alone (declarations are counted elsewhere)."""
    explicit = None if rules is None else as_regularizer_rules(rules, strict=strict)
    governing = DeclaredRules(
        explicit, prefer, "regularizer", as_regularizer_rules, "regularize", optional
    )

    def for_tree(params: optax.Params, *, again: bool) -> Rules | None:
        if not declared:
            return explicit if explicit is not None and len(explicit) else None
        return governing.for_tree(params, again=again)

    def init_fn(params: optax.Params) -> optax.EmptyState:
        resolved_rules = for_tree(params, again=True)
        if resolved_rules is not None:
            resolved_rules.resolve(params)
        return optax.EmptyState()

    def update_fn(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        resolved_rules = for_tree(require_params(params, "regularize"), again=False)
        if resolved_rules is None:
            return updates, state

        def add_gradient(path: str, r: Any, p: jax.Array, u: jax.Array) -> jax.Array:
            g = jax.grad(lambda x: leaf_penalty(r, x, path))(p)
            return u + g.astype(u.dtype)

        return map_governed(resolved_rules, updates, params, "regularize", add_gradient), state

    return optax.GradientTransformation(init_fn, update_fn)
