"""Rules declared on the parameters themselves, combined with explicit ones.

Declarations live on flax objects: `jaxcons.flax.with_constraints` boxes in linen trees and
the ``constraint`` / ``regularizer`` metadata of nnx ``Variable`` objects. A tree can only hold
them when flax is loaded, so the core reads them through `jaxcons.flax` only then and never
imports flax itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from jaxcons._rules import Rules

__all__ = [
    "DeclaredRules",
    "declarations",
    "governing_rules",
    "nothing_to_govern",
    "required_rules",
]

_PREFER = (None, "declared", "explicit")


def declarations(tree: Any, key: str) -> int:
    """How many parameters of ``tree`` declare a ``key`` (0 when flax is not loaded)."""
    if "flax" not in sys.modules:
        return 0
    from jaxcons.flax._declared import declared

    return len(declared(tree, key))


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
    from jaxcons.flax._declared import combine

    strict = True if given is None else given.strict
    return as_rules(combine(tree, given, prefer, key), strict=strict)


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
