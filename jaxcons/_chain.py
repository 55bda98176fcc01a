"""`chain`: an optimizer with regularization, proximal steps and constraints, each in its place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from jaxcons._constrain import _constrain
from jaxcons._declarations import declarations, nothing_to_govern
from jaxcons._regularize import _regularize
from jaxcons._regularize import proximal as proximal_transform
from jaxcons._rules import Rules, RulesLike

__all__ = ["chain"]


def chain(
    optimizer: optax.GradientTransformation,
    *,
    constraints: RulesLike | Rules | None = None,
    regularizers: RulesLike | Rules | None = None,
    proximal: RulesLike | Rules | None = None,
    learning_rate: float | Callable[[jax.Array], jax.typing.ArrayLike] | None = None,
    prefer: str | None = None,
    strict: bool | None = None,
    scratch: bool | None = None,
) -> optax.GradientTransformation:
    """Wraps an optimizer with jaxcons's transforms, each where it must go.

    `jaxcons.regularize`, `jaxcons.proximal` and `jaxcons.constrain` cannot see their place
    in `optax.chain`, and placed wrongly they fail silently (a projection before the
    optimizer is undone by its step; a penalty gradient added after it is not scaled by
    the learning rate). This builds the one correct order:

    .. code-block:: python

       optax.chain(
           jaxcons.regularize(regularizers),              # g + grad(penalty)
           optimizer,                                     # the step
           jaxcons.proximal(proximal, learning_rate),     # prox of the step (if asked for)
           jaxcons.constrain(constraints),                # projection, last
       )

    The regularize and constrain parts are always there, so that regularizers and
    constraints declared on the parameters (linen boxes, nnx variable metadata) are honoured
    as soon as ``init`` sees them, with or without explicit rules (combined as in
    `jaxcons.constrain`); with neither rules nor declarations they pass updates through. Its
    state is the `optax.chain` state of the parts, in that order.

    Args:
      optimizer: an `optax.GradientTransformation` (``optax.adam(1e-3)``, ...).
      constraints: constraint rules for `jaxcons.constrain`, or ``None`` (declared only).
      regularizers: regularizer rules for `jaxcons.regularize` (the penalty's gradient is
        added before the optimizer: Keras's coupled semantics), or ``None`` (declared only).
      proximal: regularizer rules for `jaxcons.proximal` (exact proximal steps after the
        optimizer), or ``None``; needs ``learning_rate``.
      learning_rate: the optimizer's step size (a float or an optax schedule), for
        ``proximal`` only.
      prefer: where a declaration and an explicit rule differ: ``None`` (an error),
        ``"declared"`` or ``"explicit"``.
      strict: passed to every part (``None``: each rule set's own default, ``True``).
      scratch: passed to `jaxcons.constrain`.

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      TypeError: for an ``optimizer`` that is not an `optax.GradientTransformation` (a rule
        mapping given first by mistake, or an optimizer factory not called).
      ValueError: for ``proximal`` without ``learning_rate`` or ``learning_rate`` without
        ``proximal``; at ``init``, when no rules are given and the parameters declare
        nothing; and as the parts raise.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> params = {"kernel": jnp.array([[3.0], [4.0]]), "bias": jnp.array([0.5])}
      >>> tx = jaxcons.chain(
      ...     optax.sgd(0.1),
      ...     constraints={"kernel": jaxcons.MaxNorm(1.0), "bias": jaxcons.NonNeg()},
      ...     regularizers={"kernel": jaxcons.L2(0.01)})
      >>> grads = {"kernel": jnp.zeros((2, 1)), "bias": jnp.array([10.0])}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> new = optax.apply_updates(params, updates)
      >>> new["bias"], jnp.linalg.norm(new["kernel"]).round(6)
      (Array([0.], dtype=float32), Array(1., dtype=float32))
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        hint = ""
        if callable(optimizer):
            hint = " (an optimizer factory such as optax.adam must be called: optax.adam(1e-3))"
        elif isinstance(optimizer, (dict, list, tuple)):
            hint = " (rules go in constraints=, regularizers= or proximal=)"
        raise TypeError(
            f"jaxcons.chain needs an optax.GradientTransformation as its first argument, got "
            f"{optimizer!r} of type {type(optimizer).__name__}{hint}."
        )
    if proximal is not None and learning_rate is None:
        raise ValueError(
            "jaxcons.chain(proximal=...) needs learning_rate=: the step size of the proximal "
            "operator (pass the optimizer's own learning rate or schedule)."
        )
    if proximal is None and learning_rate is not None:
        raise ValueError(
            f"jaxcons.chain got learning_rate={learning_rate!r} but no proximal rules: it is "
            "only used by proximal=; the optimizer has its own learning rate."
        )
    parts: list[Any] = [_regularize(regularizers, prefer=prefer, strict=strict, optional=True)]
    parts.append(optimizer)
    if proximal is not None:
        parts.append(proximal_transform(proximal, learning_rate, strict=strict))
    parts.append(
        _constrain(constraints, prefer=prefer, strict=strict, scratch=scratch, optional=True)
    )
    tx = optax.chain(*parts)
    if constraints is not None or regularizers is not None or proximal is not None:
        return tx

    def init_fn(params: optax.Params) -> Any:
        if not (declarations(params, "constraint") or declarations(params, "regularizer")):
            raise nothing_to_govern("chain", "constraint or regularizer")
        return tx.init(params)

    return optax.GradientTransformation(init_fn, tx.update)
