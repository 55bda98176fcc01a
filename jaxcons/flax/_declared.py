"""Rules from the constraints and regularizers declared on flax parameters."""

from __future__ import annotations

from typing import Any

from jaxcons._src.constrain import as_constraint_rules
from jaxcons._src.declarations import combine
from jaxcons._src.penalty import as_regularizer_rules
from jaxcons._src.rules import Rules, RulesLike

__all__ = ["constraint_rules", "regularizer_rules"]


def _checked(
    x: Any, explicit: RulesLike | Rules | None, prefer: str | None, key: str
) -> list[tuple[Any, Any]]:
    """`combine`, except that no declaration and no explicit rule is an error."""
    as_rules = as_constraint_rules if key == "constraint" else as_regularizer_rules
    pairs = combine(x, explicit, prefer, key, as_rules)
    if not pairs and explicit is None:
        raise ValueError(
            f"No parameter of this {type(x).__name__} declares a {key}. A pure tree "
            "(nnx.to_pure_dict, nnx.as_pure, nn.unbox, or the arrays nnx.Optimizer.update "
            f"sees) has lost its declarations: pass the nnx model or nnx.state(model), or the "
            f"boxed linen params; or give explicit rules."
        )
    return pairs


def constraint_rules(
    x: Any, explicit: RulesLike | Rules | None = None, *, prefer: str | None = None
) -> list[tuple[Any, Any]]:
    """Returns constraint rules for every parameter of ``x`` that declares a constraint.

    Declarations are `jaxcons.flax.with_constraints` boxes in a linen tree and the
    ``constraint`` metadata of nnx variables (``nnx.Param(w, constraint=NonNeg())``,
    ``nnx.Linear(..., kernel_metadata={"constraint": MaxNorm(2.0)})``). Each rule's pattern
    is the parameter's exact path in the *unboxed* tree (glob metacharacters escaped), so the
    rules apply to what the optimizer sees: paths are relative to ``x``, so pass the tree you
    give ``tx.init`` (``variables["params"]`` for linen, not ``variables``; the model or
    ``nnx.state(model, nnx.Param)`` for nnx). Strict resolution then catches a mismatch.

    ``explicit`` rules are appended. A parameter that declares a constraint and also matches
    an explicit rule holding a different value (even ``None``) is an error unless ``prefer``
    says which wins: ``"declared"`` puts the declared rules first, ``"explicit"`` the explicit
    ones (first match wins). An explicit rule equal to the declaration is no conflict (so
    passing ``constraint_rules(variables)`` again as explicit rules is harmless). Rules that
    would never act after this combination (the losing side of ``prefer=`` on every
    parameter they match) are left out, so the result passes strict resolution.

    Args:
      x: a linen variables or params tree, an nnx ``Module`` or an nnx ``State``.
      explicit: further ``{pattern: constraint}`` rules, or ``None``.
      prefer: ``None`` (conflicts are errors), ``"declared"`` or ``"explicit"``.

    Returns:
      An ordered list of ``(pattern, constraint)`` pairs, usable wherever rules are taken
      (`jaxcons.constrain`, `jaxcons.apply_constraints`, `jaxcons.flax.TrainState`).

    Raises:
      ValueError: for a parameter with both a declared and an explicit constraint (and
        ``prefer=None``), naming its path; for an invalid ``prefer``; for an unknown
        constraint name; when nothing is declared and no explicit rules are given (a pure
        tree has lost its declarations).

    Example:
      >>> import jax.numpy as jnp, jaxcons, jaxcons.flax
      >>> from flax import nnx
      >>> class Model(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 2, rngs=rngs)
      ...     self.scale = nnx.Param(jnp.ones(2), constraint=jaxcons.NonNeg())
      >>> model = Model(nnx.Rngs(0))
      >>> jaxcons.flax.constraint_rules(model, {"**/kernel": jaxcons.Clip(-1.0, 1.0)})
      [('scale', NonNeg()), ('**/kernel', Clip(min_value=-1.0, max_value=1.0))]
    """
    return _checked(x, explicit, prefer, "constraint")


def regularizer_rules(
    x: Any, explicit: RulesLike | Rules | None = None, *, prefer: str | None = None
) -> list[tuple[Any, Any]]:
    """Returns regularizer rules for every parameter of ``x`` that declares a regularizer.

    The counterpart of `constraint_rules` for the ``regularizer`` declaration of
    `jaxcons.flax.with_constraints` boxes and nnx variable metadata; the rules are usable
    with `jaxcons.penalty`, `jaxcons.penalties`, `jaxcons.regularize`, `jaxcons.proximal`
    and `jaxcons.flax.TrainState`.

    Args:
      x: a linen variables or params tree, an nnx ``Module`` or an nnx ``State``.
      explicit: further ``{pattern: regularizer}`` rules, or ``None``.
      prefer: ``None`` (conflicts are errors), ``"declared"`` or ``"explicit"``.

    Returns:
      An ordered list of ``(pattern, regularizer)`` pairs.

    Raises:
      ValueError: as `constraint_rules`.

    Example:
      >>> import jax.numpy as jnp, jaxcons, jaxcons.flax
      >>> from flax import nnx
      >>> layer = nnx.Linear(2, 2, kernel_metadata={"regularizer": "l2"}, rngs=nnx.Rngs(0))
      >>> jaxcons.flax.regularizer_rules(layer)
      [('kernel', L2(l2=0.01))]
    """
    return _checked(x, explicit, prefer, "regularizer")
