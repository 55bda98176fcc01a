"""`chain`: an optimizer with regularization, proximal steps and constraints, each in its place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import optax

from jaxcons._src.constrain import _constrain
from jaxcons._src.declarations import declarations, declared_paths, nothing_to_govern
from jaxcons._src.proximal import proximal as proximal_transform
from jaxcons._src.regularize import _regularize
from jaxcons._src.rules import Rules, RulesLike
from jaxcons._src.tangent import tangent as tangent_transform
from jaxcons._src.updates import check_updates_like_params, leaf_shapes, require_params


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
    tangent: bool | RulesLike | Rules | None = None,
    declared_regularizers: str | None = None,
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
           jaxcons.proximal(proximal, learning_rate),     # prox of the step (if asked for)
           jaxcons.constrain(constraints),                # projection, last
       )

    With a schedule-free optimizer (``optax.contrib.schedule_free_adamw`` and the like) the
    constraints hold for the params users evaluate, ``schedule_free_eval_params``: the
    chain projects the optimizer's base iterate ``z`` and moves the params to match (exact
    for convex sets up to rounding). Placed by hand after a schedule-free optimizer,
    `jaxcons.constrain` would project only the interpolated params and the evaluated ones
    would leave the set.

    The regularize and constrain parts are always there, so that constraints declared on the
    parameters (linen boxes, nnx variable metadata) are honoured as soon as ``init`` sees them,
    with or without explicit rules (combined as in `jaxcons.constrain`); with neither rules
    nor declarations they pass updates through. Its state is the `optax.chain` state of the
    parts, in that order.

    **Declared regularizers count once, in the loss**, by default: they are loss terms, as in
    Keras, and `jaxcons.penalty` (or ``state.penalty`` of `jaxcons.flax.TrainState`) adds
    them there. So the chain must be told what to do with them: ``init`` on parameters that
    declare regularizers raises unless ``declared_regularizers`` is ``"loss"`` (the loss adds
    ``jaxcons.penalty(...)``; the chain leaves them alone) or ``"chain"`` (the chain adds
    their gradient, combined with ``regularizers``; then keep them out of the loss, or they
    count twice).

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
      declared_regularizers: where regularizers declared on the parameters count: ``"loss"``
        (in the loss, with `jaxcons.penalty`; the chain ignores them) or ``"chain"`` (their
        gradient is added here); ``None`` (default): an error at ``init`` if any is declared.
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
      ValueError: for ``proximal`` without ``learning_rate`` or ``learning_rate`` without
        ``proximal``, for ``tangent`` without ``constraints`` or of another type; at
        ``init``, when no rules are given and the parameters declare nothing; and as the
        parts raise.

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
        if hasattr(optimizer, "gradient_transformation"):
            hint = (
                f" ({type(optimizer).__name__} is not one itself: wrap the whole chain, "
                f"optax.MultiSteps(jaxcons.chain(opt, ...), every_k_schedule=k)"
                ".gradient_transformation(), so that the constraints act once per real step; "
                "or pass ms.gradient_transformation() here)"
            )
        elif callable(optimizer):
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
    if declared_regularizers not in (None, "loss", "chain"):
        raise ValueError(
            f"jaxcons.chain: declared_regularizers must be None, 'loss' or 'chain', got "
            f"{declared_regularizers!r}."
        )
    tangent_rules = _tangent_rules(tangent, constraints)
    parts: list[Any] = [
        _regularize(
            regularizers,
            prefer=prefer,
            strict=strict,
            optional=True,
            declared=declared_regularizers == "chain",
        )
    ]
    if tangent_rules is not None:
        parts.append(tangent_transform(tangent_rules, strict=strict))
    opt_index = len(parts)
    parts.append(optimizer)
    if proximal is not None:
        assert learning_rate is not None  # Checked above: proximal needs it.
        parts.append(proximal_transform(proximal, learning_rate, strict=strict))
    parts.append(
        _constrain(constraints, prefer=prefer, strict=strict, scratch=scratch, optional=True)
    )
    tx = optax.chain(*parts)
    given = constraints is not None or regularizers is not None or proximal is not None

    shapes_at_init: dict[str, tuple[int, ...]] = {}

    def init_fn(params: optax.Params) -> Any:
        shapes_at_init.clear()
        shapes_at_init.update(leaf_shapes(params))
        declared = declared_paths(params, "regularizer")
        if declared and declared_regularizers is None:
            raise ValueError(
                f"jaxcons.chain: the parameters declare regularizers ({', '.join(declared)}), "
                "and declared regularizers count once. Say where: "
                "declared_regularizers='loss' if the loss adds them (jaxcons.penalty(model) or "
                "state.penalty(params)), or declared_regularizers='chain' to add their gradient "
                "here instead (and keep them out of the loss)."
            )
        if not given and not (declarations(params, "constraint") or declared):
            raise nothing_to_govern("chain", "constraint or regularizer")
        # optax.chain's state is the tuple of its parts' states (typed as any OptState).
        state = cast(tuple[Any, ...], tx.init(params))
        if _schedule_free(state[opt_index], top=True) and len(parts) != 3:
            raise ValueError(
                "jaxcons.chain: proximal steps and tangent projections are not supported with "
                "a schedule-free optimizer (its evaluated params are an average they do not see)."
            )
        return state

    def update_fn(
        updates: optax.Updates, state: Any, params: optax.Params | None = None
    ) -> tuple[optax.Updates, Any]:
        check_updates_like_params(updates, require_params(params, "chain"), "chain", shapes_at_init)
        if not _schedule_free(state[opt_index], top=True):
            return tx.update(updates, state, params)
        return _schedule_free_update(parts, updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def _schedule_free(opt_state: Any, *, top: bool) -> bool:
    """Whether ``opt_state`` is the state of ``optax.contrib.schedule_free`` (at the top).

    Raises:
      ValueError: for a schedule-free state nested inside the optimizer's (a schedule-free
        optimizer inside ``optax.chain`` or another wrapper), whose base iterate this chain
        cannot reach to keep it feasible.
    """
    from optax.contrib import ScheduleFreeState

    if isinstance(opt_state, ScheduleFreeState):
        return True
    nested = jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, ScheduleFreeState)
    )
    if top and any(isinstance(x, ScheduleFreeState) for x in nested):
        raise ValueError(
            "jaxcons.chain: the optimizer wraps a schedule-free optimizer inside another "
            "transform. Pass optax.contrib.schedule_free(...) (or schedule_free_adamw, ...) "
            "itself as the optimizer, so that its base iterate z can be kept feasible."
        )
    return False


def _schedule_free_update(
    parts: list[Any], updates: optax.Updates, state: Any, params: optax.Params | None
) -> tuple[optax.Updates, Any]:
    """One step of regularize, a schedule-free optimizer and constrain, feasible throughout.

    Schedule-free methods (Defazio et al., 2024) keep a base iterate ``z`` (the state's
    ``z``), an average ``x = (1 - c) x + c z`` (what ``schedule_free_eval_params`` returns)
    and the point ``y = b1 x + (1 - b1) z`` where gradients are taken (the params). For a
    convex set, projecting ``z`` after each step keeps ``x`` and ``y``, convex combinations
    of feasible points, feasible too. So the constraints project ``z``, and ``y`` (the
    returned update) is moved by what that changes: ``(b1 c + 1 - b1) (P(z) - z)``.
    """
    regularize, optimizer, constrain = parts
    params = require_params(params, "chain")
    grads, reg_state = regularize.update(updates, state[0], params)
    step, sf_state = optimizer.update(grads, state[1], params)
    z_old, z_new = state[1].z, sf_state.z
    z_step = jax.tree.map(lambda new, old: new - old, z_new, z_old)
    z_proj_step, con_state = constrain.update(z_step, state[2], z_old)
    z_proj = optax.apply_updates(z_old, z_proj_step)
    total = sf_state.weight_sum
    c = jnp.where(total > 0, (total - state[1].weight_sum) / jnp.where(total > 0, total, 1), 0)
    b1 = sf_state.b1
    move = (b1 * c + 1 - b1).astype(jnp.float32)

    def corrected(u: jax.Array, zp: jax.Array, zn: jax.Array) -> jax.Array:
        shift = (zp.astype(jnp.float32) - zn.astype(jnp.float32)) * move
        return (u.astype(jnp.float32) + shift).astype(u.dtype)

    new_updates = jax.tree.map(corrected, step, z_proj, z_new)
    return new_updates, (reg_state, sf_state._replace(z=z_proj), con_state)


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
