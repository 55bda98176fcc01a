"""Rules from the constraints and regularizers declared on flax parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from flax.core import meta

from jaxcons._constrain import as_constraint_rules
from jaxcons._patterns import exact_pattern
from jaxcons._penalties import as_regularizer_rules
from jaxcons._rules import Rules, RulesLike
from jaxcons._tree import is_floating, path_str
from jaxcons.flax._boxes import Constrained

__all__ = [
    "combine",
    "constraint_rules",
    "declared",
    "regularizer_rules",
]

_PREFER = (None, "declared", "explicit")


def _is_node(x: Any) -> bool:
    return isinstance(x, (meta.AxisMetadata, nnx.Variable))


def _box_declaration(box: meta.AxisMetadata, key: str) -> Any:
    """The declaration ``key`` of the first `Constrained` box in a chain of nested boxes."""
    while isinstance(box, meta.AxisMetadata):
        if isinstance(box, Constrained):
            return getattr(box, key)
        box = box.unbox()
    return None


def _nodes(x: Any) -> list[tuple[str, Any, Any]]:
    """``(path, node, leaf)`` for every parameter of ``x``: ``node`` is its nnx ``Variable``
    or metadata box (``None`` for a plain leaf), ``leaf`` the unboxed value."""
    if isinstance(x, nnx.Module):
        x = nnx.state(x)
    nodes, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=_is_node)
    out = []
    for keypath, node in nodes:
        if isinstance(node, nnx.Variable):
            out.append((path_str(keypath), node, node.get_value()))
        elif isinstance(node, meta.AxisMetadata):
            out.append((path_str(keypath), node, meta.unbox(node)))
        else:
            out.append((path_str(keypath), None, node))
    return out


def _declaration(node: Any, key: str) -> Any:
    if isinstance(node, nnx.Variable):
        return node.get_metadata().get(key)
    if isinstance(node, meta.AxisMetadata):
        return _box_declaration(node, key)
    return None


def declared(x: Any, key: str) -> list[tuple[str, Any, Any]]:
    """Lists ``(path, value, leaf)`` for every parameter of ``x`` declaring ``key``.

    Args:
      x: a linen variables or params tree (with `Constrained` boxes), an nnx ``Module``, or an
        nnx ``State`` (or any pytree of nnx ``Variable`` objects).
      key: ``"constraint"`` or ``"regularizer"``.

    Returns:
      The declarations, in the tree's flattening order; paths are those of the unboxed tree.
    """
    out = []
    for path, node, leaf in _nodes(x):
        value = _declaration(node, key)
        if value is not None:
            out.append((path, value, leaf))
    return out


def _drop_overridden(
    first: list[Any], second: list[Any], leaves: list[tuple[str, Any]]
) -> list[Any]:
    """The rules of ``second`` (Rule entries) that still act on some leaf after ``first``.

    A rule of ``second`` that matches at least one parameter, every one of which a rule of
    ``first`` already claims, would never act: jaxcons put it there itself (the losing side
    of ``prefer=``, or a declaration repeated by an equal explicit rule), so it is dropped
    rather than reported as shadowed. A rule that matches nothing is kept, so that strict
    resolution still reports it.
    """
    kept = []
    for rule in second:
        hits = [(p, leaf) for p, leaf in leaves if rule.predicate(p, leaf)]
        if hits and all(any(r.predicate(p, leaf) for r in first) for p, leaf in hits):
            continue
        kept.append(rule)
    return kept


def combine(
    x: Any, explicit: RulesLike | Rules | None, prefer: str | None, key: str
) -> list[tuple[Any, Any]]:
    """Declared rules of ``x`` combined with ``explicit`` ones; see `constraint_rules`.

    ``key`` is ``"constraint"`` or ``"regularizer"``.
    """
    if prefer not in _PREFER:
        raise ValueError(f"prefer must be None, 'declared' or 'explicit', got {prefer!r}.")
    as_rules: Callable[..., Rules] = (
        as_constraint_rules if key == "constraint" else as_regularizer_rules
    )
    decls = declared(x, key)
    decl_rules = as_rules([(exact_pattern(p), v) for p, v, _ in decls], strict=False)
    if explicit is None:
        return [(r.pattern, r.value) for r in decl_rules.entries]
    expl = as_rules(explicit, strict=False)
    if prefer is None:
        conflicts = []
        for (path, _, leaf), decl in zip(decls, decl_rules.entries, strict=True):
            rule = next((r for r in expl.entries if r.predicate(path, leaf)), None)
            if rule is not None and rule.value != decl.value:
                conflicts.append(
                    f"{path!r} (declared {decl.value!r}; explicit rule {rule.description!r}: "
                    f"{rule.value!r})"
                )
        if conflicts:
            raise ValueError(
                f"{key.capitalize()} declared on a parameter and given by an explicit rule "
                f"too: {'; '.join(conflicts)}. Say which wins with prefer='declared' or "
                "prefer='explicit'."
            )
    first, second = decl_rules.entries, expl.entries
    if prefer == "explicit":
        first, second = second, first
    leaves = [(p, leaf) for p, _, leaf in _nodes(x) if is_floating(leaf)]
    combined = list(first) + _drop_overridden(list(first), list(second), leaves)
    return [(r.pattern, r.value) for r in combined]


def _checked(
    x: Any, explicit: RulesLike | Rules | None, prefer: str | None, key: str
) -> list[tuple[Any, Any]]:
    """`combine`, except that no declaration and no explicit rule is an error."""
    pairs = combine(x, explicit, prefer, key)
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
