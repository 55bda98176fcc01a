"""Penalties over parameter trees (`penalty`, `penalties`) and on outputs (`activity_penalty`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcons._src.declarations import required_rules
from jaxcons._src.numerics import accumulation_dtype, add_penalties
from jaxcons._src.registry import REGULARIZERS
from jaxcons._src.rules import Rules, RulesLike, build_rules
from jaxcons._src.tree import is_floating, is_masked


def as_regularizer_rules(rules: RulesLike | Rules, *, strict: bool | None = None) -> Rules:
    """Builds `Rules` whose values are regularizers (names and configs are looked up; a
    constraint is a ``TypeError``)."""
    return build_rules(rules, coerce=REGULARIZERS.get, strict=strict, kind="regularizer")


def leaf_penalty(regularizer: Any, x: jax.Array, path: str | None) -> jax.Array:
    """Calls ``regularizer(x)`` and checks that it returned a scalar (in at least float32).

    Raises:
      ValueError: naming the parameter's path (``None``: a layer's outputs), if the result is
        not a scalar.
    """
    value = jnp.asarray(regularizer(x))
    if value.shape != ():
        target = "a layer's outputs" if path is None else f"parameter {path!r}"
        raise ValueError(
            f"The regularizer {regularizer!r} for {target} returned an array of shape "
            f"{value.shape}; a regularizer must return a scalar (sum it)."
        )
    return value.astype(accumulation_dtype(value.dtype))


def regularizer_rules_for(
    params: optax.Params,
    rules: RulesLike | Rules | None,
    prefer: str | None,
    strict: bool | None,
    function: str,
) -> Rules:
    """The regularizer rules governing ``params``: declared ones and ``rules``, combined.

    Raises:
      ValueError: naming ``function``, when there are no rules and nothing is declared.
    """
    explicit = None if rules is None else as_regularizer_rules(rules, strict=strict)
    return required_rules(params, explicit, prefer, "regularizer", as_regularizer_rules, function)


def _governed(
    params: optax.Params,
    rules: RulesLike | Rules | None,
    prefer: str | None,
    strict: bool | None,
    function: str,
) -> Iterator[tuple[str, jax.Array, Any]]:
    resolution = regularizer_rules_for(params, rules, prefer, strict, function).resolve(params)
    leaves = jax.tree_util.tree_leaves(params, is_leaf=is_masked)
    for i, path, r in resolution.active():
        yield path, leaves[i], r


def penalties(
    params: optax.Params,
    rules: RulesLike | Rules | None = None,
    *,
    prefer: str | None = None,
    strict: bool | None = None,
) -> dict[str, jax.Array]:
    """The penalty of every parameter a rule governs, by path: for logging.

    This is what Keras exposes as ``layer.losses``, keyed by parameter path.

    Args:
      params: the parameter pytree.
      rules: ``{pattern: regularizer}`` or ``[(pattern, regularizer), ...]``; first match
        wins, a value ``None`` exempts. Regularizers may be `Regularizer` objects, plain
        callables ``x -> scalar``, names or config dicts. Regularizers declared on the
        parameters (linen boxes, nnx variables) are honoured too, as in `jaxcons.constrain`;
        ``rules=None``: the declared ones only.
      prefer: where a declaration and an explicit rule differ: ``None`` (an error),
        ``"declared"`` or ``"explicit"``.
      strict: raise if a rule matches no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      ``{path: scalar}`` in the tree's flattening order, each scalar in at least float32.

    Raises:
      ValueError: when a rule matches nothing (``strict=True``), a regularizer cannot act on a
        parameter's shape, or a regularizer returns a non-scalar.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.array([1.0, -1.0])}
      >>> jaxcons.penalties(params, {"kernel": "l2", "bias": jaxcons.L1(0.1)})
      {'bias': Array(0.2, dtype=float32), 'kernel': Array(0.04, dtype=float32)}
    """
    governed = _governed(params, rules, prefer, strict, "penalties")
    return {path: leaf_penalty(r, x, path) for path, x, r in governed}


def penalty(
    params: optax.Params,
    rules: RulesLike | Rules | None = None,
    *,
    prefer: str | None = None,
    strict: bool | None = None,
) -> jax.Array:
    """The total penalty of a parameter tree: add it to the loss.

    .. math:: \\Omega(\\theta) = \\sum_{\\text{governed leaves } p} R_p(\\theta_p)

    where ``R_p`` is the regularizer of the first rule matching ``p``'s path. Pure and
    jit-/grad-compatible (rules are resolved once per trace); each leaf's penalty is a
    reduction of that leaf, so sharded parameters are reduced where they live.

    Args:
      params: the parameter pytree.
      rules: ``{pattern: regularizer}`` or ``[(pattern, regularizer), ...]``; first match
        wins, a value ``None`` exempts; ``rules=None``: the declared regularizers only.
      prefer: as in `penalties`.
      strict: raise if a rule matches no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      A scalar in at least float32 (0.0 when no parameter is governed).

    Raises:
      ValueError: as `penalties`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxcons
      >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.array([1.0, -1.0])}
      >>> rules = {"kernel": jaxcons.L2(0.5), "bias": jaxcons.L1(0.1)}
      >>> jaxcons.penalty(params, rules)
      Array(2.2, dtype=float32)
      >>> jax.grad(jaxcons.penalty)(params, rules)["bias"]
      Array([ 0.1, -0.1], dtype=float32)
    """
    governed = _governed(params, rules, prefer, strict, "penalty")
    return add_penalties([leaf_penalty(r, x, path) for path, x, r in governed])


def activity_penalty(regularizer: Any, outputs: Any) -> jax.Array:
    """The activity penalty of a layer's outputs, divided by the batch size (as Keras does).

    .. math:: \\Omega(y) = R(y) / \\text{batch size}

    The batch size is the size of the first axis, so the weighting of weight and activity
    penalties does not change with it. A pytree of outputs gets the sum over its
    floating-point leaves, each divided by its own batch size; a scalar output is not divided
    and an empty batch gives 0, as in Keras.

    Args:
      regularizer: a `Regularizer`, a callable ``x -> scalar``, a name or a config dict;
        ``None`` gives 0.
      outputs: an array (or a pytree of arrays) of layer outputs, batch first.

    Returns:
      A scalar in at least float32.

    Raises:
      ValueError: if the regularizer returns a non-scalar.

    Example:
      The Keras documentation's example: a Dense(5) layer with an all-ones kernel, on an
      input of twos.

      >>> import jax.numpy as jnp, jaxcons
      >>> outputs = (2.0 * jnp.ones((5, 5))) @ jnp.ones((5, 5))
      >>> jaxcons.activity_penalty(jaxcons.L2(0.01), outputs)
      Array(5., dtype=float32)
    """
    reg = REGULARIZERS.get(regularizer)
    if reg is None:
        return jnp.zeros((), jnp.float32)
    leaves = jax.tree_util.tree_leaves(outputs, is_leaf=is_masked)
    terms = []
    for y in leaves:
        if not is_floating(y):
            continue
        y = jnp.asarray(y)
        value = leaf_penalty(reg, y, None)
        if y.ndim > 0:  # Keras divides with divide_no_nan: an empty batch gives 0.
            value = value / y.shape[0] if y.shape[0] else jnp.zeros((), value.dtype)
        terms.append(value)
    return add_penalties(terms)
