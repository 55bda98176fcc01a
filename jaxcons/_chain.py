"""`chain`: an optimizer with regularization, proximal steps and constraints, each in its place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from jaxcons._constrain import constrain
from jaxcons._regularize import proximal as proximal_transform
from jaxcons._regularize import regularize
from jaxcons._rules import Rules, RulesLike
from jaxcons._tangent import tangent as tangent_transform

__all__ = ["chain"]


def chain(
    optimizer: optax.GradientTransformation,
    *,
    constraints: RulesLike | Rules | None = None,
    regularizers: RulesLike | Rules | None = None,
    proximal: RulesLike | Rules | None = None,
    learning_rate: float | Callable[[jax.Array], jax.typing.ArrayLike] | None = None,
    strict: bool | None = None,
    scratch: bool | None = None,
    tangent: bool | RulesLike | Rules | None = None,
) -> optax.GradientTransformation:
    """Wraps an optimizer with jaxcons's transforms, each where it must go.

    `jaxcons.regularize`, `jaxcons.proximal` and `jaxcons.constrain` cannot see their place
    in `optax.chain`, and placed wrongly they fail silently (a projection before the
    optimizer is undone by its step; a penalty gradient added after it is not scaled by
    the learning rate). This builds the one correct order:

    .. code-block:: python

       optax.chain(
           jaxcons.regularize(regularizers),              # g + grad(penalty)
           jaxcons.tangent(constraints),                  # g onto the tangent spaces
           optimizer,                                     # the step
           jaxcons.proximal(proximal, learning_rate),     # prox of the step
           jaxcons.constrain(constraints),                # projection, last
       )

    leaving out the parts not asked for. Its state is the `optax.chain` state of those parts,
    in that order.

    Args:
      optimizer: an `optax.GradientTransformation` (``optax.adam(1e-3)``, ...).
      constraints: constraint rules for `jaxcons.constrain`, or ``None``.
      regularizers: regularizer rules for `jaxcons.regularize` (the penalty's gradient is
        added before the optimizer: Keras's coupled semantics), or ``None``.
      proximal: regularizer rules for `jaxcons.proximal` (exact proximal steps after the
        optimizer), or ``None``; needs ``learning_rate``.
      learning_rate: the optimizer's step size (a float or an optax schedule), for
        ``proximal`` only.
      strict: passed to every part (``None``: each rule set's own default, ``True``).
      scratch: passed to `jaxcons.constrain`.
      tangent: ``True`` to project the gradients onto the tangent spaces of the constraints'
        sets (`jaxcons.tangent` with the ``constraints`` rules; every governed constraint
        must have one, e.g. `UnitNorm`, `Orthogonal`), making the optimizer step Riemannian
        with `jaxcons.constrain` as the retraction; or tangent rules of their own (a subset
        of the parameters, when other constraints have no tangent space); ``None`` or
        ``False`` (default): no projection.

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      TypeError: for an ``optimizer`` that is not an `optax.GradientTransformation` (a rule
        mapping given first by mistake, or an optimizer factory not called).
      ValueError: when no rules are given at all, for ``proximal`` without
        ``learning_rate`` or ``learning_rate`` without ``proximal``, for ``tangent`` without
        ``constraints`` or of another type, and as the parts raise.

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
    if constraints is None and regularizers is None and proximal is None:
        raise ValueError(
            "jaxcons.chain was given no constraints, regularizers or proximal rules: pass at "
            "least one (or use the optimizer alone)."
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
    if scratch is not None and constraints is None:
        raise ValueError(
            f"jaxcons.chain got scratch={scratch!r} but no constraints: the scratch buffer is "
            "an option of jaxcons.constrain."
        )
    tangent_rules = _tangent_rules(tangent, constraints)
    parts: list[Any] = []
    if regularizers is not None:
        parts.append(regularize(regularizers, strict=strict))
    if tangent_rules is not None:
        parts.append(tangent_transform(tangent_rules, strict=strict))
    parts.append(optimizer)
    if proximal is not None:
        parts.append(proximal_transform(proximal, learning_rate, strict=strict))
    if constraints is not None:
        parts.append(constrain(constraints, strict=strict, scratch=scratch))
    return optax.chain(*parts)


def _tangent_rules(tangent: Any, constraints: Any) -> Any:
    """The rules `chain` gives `jaxcons.tangent` (``None``: no tangent projection)."""
    if tangent is None or tangent is False:
        return None
    if not (tangent is True or isinstance(tangent, (Rules, Mapping, list, tuple))):
        raise ValueError(
            f"jaxcons.chain got tangent={tangent!r}: expected True (the constraints' own "
            "tangent spaces), tangent rules {pattern: constraint}, False or None."
        )
    if constraints is None:
        raise ValueError(
            f"jaxcons.chain got tangent={tangent!r} but no constraints: a step projected onto "
            "tangent spaces leaves the set to second order and needs jaxcons.constrain as the "
            "retraction; pass the same rules as constraints=."
        )
    return constraints if tangent is True else tangent
