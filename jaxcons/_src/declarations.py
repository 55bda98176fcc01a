"""Rules declared on the parameters themselves, combined with explicit ones.

Declarations live on flax objects: `jaxcons.flax.with_constraints` boxes in linen trees and
the ``constraint`` / ``regularizer`` metadata of nnx ``Variable`` objects. A tree can only hold
them when flax is loaded, so the engine finds flax in ``sys.modules`` and never imports it (nor
`jaxcons.flax`): a box declares through the ``__jaxcons_declarations__`` protocol, and
declarations work for users who never import `jaxcons.flax`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax

from jaxcons._src.patterns import exact_pattern
from jaxcons._src.rules import Rules
from jaxcons._src.tree import is_floating, path_str

_PREFER = (None, "declared", "explicit")


def declarations(tree: Any, key: str) -> int:
    """How many parameters of ``tree`` declare a ``key`` (0 when flax is not loaded)."""
    if _flax() is None:
        return 0
    return len(declared(tree, key))


def declared_paths(tree: Any, key: str) -> list[str]:
    """The paths of the parameters of ``tree`` that declare a ``key`` (none without flax)."""
    if _flax() is None:
        return []
    return [path for path, _, _ in declared(tree, key)]


def governing_rules(
    tree: Any,
    explicit: Rules | None,
    prefer: str | None,
    key: str,
    as_rules: Callable[..., Rules],
) -> Rules | None:
    """The rules that govern ``tree``: its declarations of ``key`` and ``explicit``, combined.

    Args:
      tree: the parameters as the transform sees them (boxed linen params, nnx ``State`` or
        ``Variable`` objects, or plain arrays, which declare nothing).
      explicit: the explicit rules (already coerced), or ``None``; an empty rule set counts
        as none.
      prefer: which wins where a declaration and an explicit rule disagree (see
        `jaxcons.flax.constraint_rules`).
      key: ``"constraint"`` or ``"regularizer"``.
      as_rules: builds `Rules` of that kind from pairs (``strict`` as keyword).

    Returns:
      ``explicit`` itself when ``tree`` declares nothing, the combined rules when it does, or
      ``None`` when there is nothing at all.
    """
    if prefer not in _PREFER:
        raise ValueError(f"prefer must be None, 'declared' or 'explicit', got {prefer!r}.")
    given = explicit if explicit is not None and len(explicit) else None
    if not declarations(tree, key):
        return given
    strict = True if given is None else given.strict
    return as_rules(combine(tree, given, prefer, key, as_rules), strict=strict)


def required_rules(
    tree: Any,
    explicit: Rules | None,
    prefer: str | None,
    key: str,
    as_rules: Callable[..., Rules],
    function: str,
) -> Rules:
    """`governing_rules`, where finding none is a ``ValueError`` naming ``function``."""
    found = governing_rules(tree, explicit, prefer, key, as_rules)
    if found is None:
        raise nothing_to_govern(function, key)
    return found


def nothing_to_govern(transform: str, key: str) -> ValueError:
    """The error of a transform that was given no rules and sees no declarations."""
    return ValueError(
        f"jaxcons.{transform} has no {key} rules and no parameter declares a {key}: pass "
        f"rules, or declare {key}s where parameters are made (jaxcons.flax.with_constraints, "
        f"nnx.Param(..., {key}=...)). Declarations are read from the tree init sees; a pure "
        "tree (nnx.to_pure_dict, nnx.as_pure, nn.unbox) has lost them."
    )


def _flax() -> tuple[Any, Any] | None:
    """``(flax.nnx, flax.core.meta)`` when flax is loaded, else ``None``: without flax no
    tree can hold a declaration, and the engine never imports flax itself."""
    nnx, meta = sys.modules.get("flax.nnx"), sys.modules.get("flax.core.meta")
    if nnx is None or meta is None:
        return None
    return nnx, meta


def _is_node(x: Any) -> bool:
    loaded = _flax()
    return loaded is not None and isinstance(x, (loaded[1].AxisMetadata, loaded[0].Variable))


def _box_declaration(box: Any, key: str) -> Any:
    """The declaration ``key`` of the first declaring box in a chain of nested boxes.

    A box declares when its class lists ``key`` in ``__jaxcons_declarations__`` (the
    protocol `jaxcons.flax.Constrained` follows); the value is its attribute of that name.
    """
    meta = sys.modules["flax.core.meta"]
    while isinstance(box, meta.AxisMetadata):
        if key in getattr(type(box), "__jaxcons_declarations__", ()):
            return getattr(box, key)
        box = box.unbox()
    return None


def _nodes(x: Any) -> list[tuple[str, Any, Any]]:
    """``(path, node, leaf)`` for every parameter of ``x``: ``node`` is its nnx ``Variable``
    or metadata box (``None`` for a plain leaf), ``leaf`` the unboxed value."""
    loaded = _flax()
    if loaded is None:
        leaves, _ = jax.tree_util.tree_flatten_with_path(x)
        return [(path_str(keypath), None, leaf) for keypath, leaf in leaves]
    nnx, meta = loaded
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
    if node is None:
        return None
    nnx, meta = sys.modules["flax.nnx"], sys.modules["flax.core.meta"]
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
    x: Any,
    explicit: Any,
    prefer: str | None,
    key: str,
    as_rules: Callable[..., Rules],
) -> list[tuple[Any, Any]]:
    """Declared rules of ``x`` combined with ``explicit`` ones; see
    `jaxcons.flax.constraint_rules`.

    ``key`` is ``"constraint"`` or ``"regularizer"``; ``as_rules`` builds `Rules` of that kind
    from pairs (``strict`` as keyword).
    """
    if prefer not in _PREFER:
        raise ValueError(f"prefer must be None, 'declared' or 'explicit', got {prefer!r}.")
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


def _pairs(rules: Rules | None) -> list[tuple[Any, Any]]:
    return [] if rules is None else [(r.pattern, r.value) for r in rules.entries]


class DeclaredRules:
    """The rules of a transform, fixed by the first tree its ``init`` (or ``update``) sees.

    ``nnx.Optimizer`` calls ``init`` on ``Variable`` objects, which carry their declarations,
    and ``update`` on plain arrays, which carry none: so the rules found at the first call are
    kept. A later ``init`` on a tree that yields other rules is an error, not a silent switch.

    Args:
      explicit: the explicit rules (coerced), or ``None``.
      prefer: as in `governing_rules`.
      key: ``"constraint"`` or ``"regularizer"``.
      as_rules: builds `Rules` of that kind from pairs.
      transform: the transform's name, for messages.
      optional: whether finding no rules at all is allowed (the transform then does nothing).
    """

    def __init__(
        self,
        explicit: Rules | None,
        prefer: str | None,
        key: str,
        as_rules: Callable[..., Rules],
        transform: str,
        optional: bool,
    ):
        if prefer not in _PREFER:
            raise ValueError(f"prefer must be None, 'declared' or 'explicit', got {prefer!r}.")
        self._args = (explicit, prefer, key, as_rules)
        self._transform = transform
        self._optional = optional
        self._found: list[Rules | None] = []

    def for_tree(self, tree: Any, *, again: bool) -> Rules | None:
        """The rules for ``tree``: found anew when ``again`` (at ``init``), else the kept ones."""
        if self._found and not again:
            return self._found[0]
        if self._optional:
            found = governing_rules(tree, *self._args)
        else:
            found = required_rules(tree, *self._args, self._transform)
        if self._found and _pairs(found) != _pairs(self._found[0]):
            raise ValueError(
                f"This jaxcons.{self._transform} transform was initialised on a tree that "
                f"declares other {self._args[2]}s ({_pairs(self._found[0])}; now "
                f"{_pairs(found)}): build one transform per model."
            )
        if not self._found:
            self._found.append(found)
        return self._found[0]
