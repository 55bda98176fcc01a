"""Rules from the constraints and regularizers declared on flax parameters."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from flax.core import meta

from jaxcons._paths import path_str
from jaxcons._penalties import as_regularizer_rules
from jaxcons._rules import Rules, RulesLike
from jaxcons._transforms import as_constraint_rules
from jaxcons.flax._boxes import Constrained

__all__ = [
    "constraint_rules",
    "declared",
    "exact_pattern",
    "regularizer_rules",
]

_PREFER = (None, "declared", "explicit")


def exact_pattern(path: str) -> str:
    """Returns a pattern matching exactly ``path``: the path itself when it is a plain glob.

    Paths with glob metacharacters (``*``, ``?``) or a ``re:`` prefix get an escaped
    ``re:`` regex instead.

    Example:
      >>> exact_pattern("params/Dense_0/kernel")
      'params/Dense_0/kernel'
      >>> exact_pattern("w*")
      're:w\\\\*'
    """
    if "*" in path or "?" in path or path.startswith("re:"):
        return "re:" + re.escape(path)
    return path


def _is_node(x: Any) -> bool:
    return isinstance(x, (meta.AxisMetadata, nnx.Variable))


def _box_declaration(box: meta.AxisMetadata, key: str) -> Any:
    """The declaration ``key`` of the first `Constrained` box in a chain of nested boxes."""
    while isinstance(box, meta.AxisMetadata):
        if isinstance(box, Constrained):
            return getattr(box, key)
        box = box.unbox()
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
    if isinstance(x, nnx.Module):
        x = nnx.state(x)
    nodes, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=_is_node)
    out = []
    for keypath, node in nodes:
        if isinstance(node, nnx.Variable):
            value = node.get_metadata().get(key)
            leaf = node.get_value()
        elif isinstance(node, meta.AxisMetadata):
            value = _box_declaration(node, key)
            leaf = meta.unbox(node)
        else:
            continue
        if value is not None:
            out.append((path_str(keypath), value, leaf))
    return out


def _combine(
    x: Any,
    explicit: RulesLike | Rules | None,
    prefer: str | None,
    key: str,
    as_rules: Callable[..., Rules],
) -> list[tuple[Any, Any]]:
    """Declared rules of ``x`` combined with ``explicit`` ones; see `constraint_rules`."""
    if prefer not in _PREFER:
        raise ValueError(f"prefer must be None, 'declared' or 'explicit', got {prefer!r}.")
    decls = declared(x, key)
    decl_rules = as_rules([(exact_pattern(p), v) for p, v, _ in decls], strict=False)
    declared_pairs = [(r.pattern, r.value) for r in decl_rules.entries]
    if explicit is None:
        return declared_pairs
    expl = as_rules(explicit, strict=False)
    explicit_pairs = [(r.pattern, r.value) for r in expl.entries]
    if prefer is None:
        conflicts = []
        for (path, _, leaf), (_, value) in zip(decls, declared_pairs, strict=True):
            rule = next((r for r in expl.entries if r.predicate(path, leaf)), None)
            if rule is not None:
                conflicts.append(
                    f"{path!r} (declared {value!r}; explicit rule {rule.description!r}: "
                    f"{rule.value!r})"
                )
        if conflicts:
            raise ValueError(
                f"{key.capitalize()} declared on a parameter and given by an explicit rule "
                f"too: {'; '.join(conflicts)}. Say which wins with prefer='declared' or "
                "prefer='explicit'."
            )
    if prefer == "explicit":
        return explicit_pairs + declared_pairs
    return declared_pairs + explicit_pairs


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
    an explicit rule (even one whose value is ``None``) is an error unless ``prefer`` says
    which wins: ``"declared"`` puts the declared rules first, ``"explicit"`` the explicit ones
    (first match wins).

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
        constraint name.

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
    return _combine(x, explicit, prefer, "constraint", as_constraint_rules)


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
    return _combine(x, explicit, prefer, "regularizer", as_regularizer_rules)
