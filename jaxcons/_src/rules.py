"""Ordered ``(pattern, value)`` rules over parameter paths: first match wins, strict by default."""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import optax

from jaxcons._src.patterns import compile_pattern
from jaxcons._src.tree import describe_leaf, flatten_with_paths, is_floating, is_masked

RulesLike = Mapping[Any, Any] | Sequence[tuple[Any, Any]]


_CACHE_SIZE = 16


class Rule(NamedTuple):
    """One rule: the user's pattern, its printable form, its predicate and its value."""

    pattern: Any
    description: str
    predicate: Callable[[str, Any], bool]
    value: Any


class Resolution(NamedTuple):
    """Which rule governs each leaf of one tree structure.

    Attributes:
      paths: the path of every leaf, in flattening order.
      values: for every leaf, the value of the first rule matching it, or ``None`` when no
        rule matches, the rule's value is ``None``, or the leaf is not a floating-point array.
    """

    paths: tuple[str, ...]
    values: tuple[Any, ...]

    def active(self) -> Iterator[tuple[int, str, Any]]:
        """Yields ``(leaf_position, path, value)`` for every leaf that a rule acts on."""
        for i, (path, value) in enumerate(zip(self.paths, self.values, strict=True)):
            if value is not None:
                yield i, path, value


class Rules:
    """An ordered list of ``(pattern, value)`` rules over parameter paths.

    The first rule whose pattern matches a leaf's path gives that leaf its value; a value of
    ``None`` explicitly leaves matching leaves alone (useful to exempt parameters before a broad
    rule). Only floating-point array leaves are acted on: integer leaves, ``None`` and
    `optax.MaskedNode` pass through.

    With ``strict=True`` every rule must act on at least one floating-point leaf of the tree it
    is resolved against, or it is a ``ValueError``:

    * a rule that matches nothing names the pattern and the closest existing paths (and
      suggests ``"Dense_0/**"`` for a pattern ``"Dense_0"`` that names a module);
    * a rule that matches only leaves masked out by `optax.masked` or non-floating leaves
      says so;
    * a rule every one of whose leaves is claimed by an earlier rule (fully shadowed: put the
      specific rule before the broad one) names both patterns.

    Two leaves whose paths print the same (``{"a/b": x, "a": {"b": y}}``) cannot be told
    apart by rules, optimizer state or penalties: when a rule governs either, that is a
    ``ValueError`` naming the path, whatever ``strict`` says.

    Resolution runs in Python, once per tree structure (it is cached on the tree definition and
    the leaves' shapes and dtypes), so under `jax.jit` it costs nothing per step.

    Args:
      rules: a mapping ``{pattern: value}`` or a sequence of ``(pattern, value)`` pairs, in
        priority order. A pattern is a glob (``"**/kernel"``), a ``"re:<regex>"`` full-match
        regex, or a callable ``(path, leaf) -> bool``. Another `Rules` is copied (its values
        passed through ``coerce`` again).
      coerce: turns each non-``None`` value into the object used (e.g. ``constraints.get``).
      strict: whether a rule that matches nothing is an error.
      kind: what the values are, for error messages (``"constraint"``, ``"regularizer"``).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> rules = jaxcons.Rules({"**/embedding": None, "**": "non_neg"})
      >>> params = {"embedding": jnp.ones(2), "dense": {"kernel": jnp.ones(2)}}
      >>> [(path, value) for _, path, value in rules.resolve(params).active()]
      [('dense/kernel', 'non_neg')]
    """

    def __init__(
        self,
        rules: RulesLike | Rules,
        *,
        coerce: Callable[[Any], Any] = lambda v: v,
        strict: bool = True,
        kind: str = "value",
    ):
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {strict!r}.")
        if isinstance(rules, Rules):
            # Re-coerce: the given rules may hold names or configs (``coerce`` is idempotent on
            # objects it already produced, e.g. ``constraints.get`` on a constraint).
            self.entries: tuple[Rule, ...] = tuple(
                r._replace(value=None if r.value is None else coerce(r.value))
                for r in rules.entries
            )
        else:
            self.entries = tuple(
                Rule(pattern, *compile_pattern(pattern), None if v is None else coerce(v))
                for pattern, v in _as_pairs(rules, kind)
            )
        self.strict = strict
        self.kind = kind
        self._cache: OrderedDict[Any, Resolution] = OrderedDict()

    def __repr__(self) -> str:
        body = ", ".join(f"{r.description!r}: {r.value!r}" for r in self.entries)
        return f"Rules({{{body}}}, strict={self.strict})"

    def __len__(self) -> int:
        return len(self.entries)

    def resolve(self, tree: Any) -> Resolution:
        """Resolves the rules against ``tree``; see the class docstring.

        Args:
          tree: the pytree (parameters, updates, or a masked tree) to match paths against.

        Returns:
          A `Resolution`: for every leaf, its path and the governing rule's value.

        Raises:
          ValueError: with ``strict=True``, when a rule matches no leaf; or when a value's
            ``check(shape, path)`` hook rejects a leaf (an axis out of range, say).
        """
        # The cache key needs no path strings: build them (the costly part of flattening a
        # big tree) only on a miss.
        leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_masked)
        signature = tuple(
            (getattr(leaf, "shape", None), getattr(leaf, "dtype", None) or type(leaf))
            for leaf in leaves
        )
        key = (treedef, signature)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        flat, _ = flatten_with_paths(tree)
        resolution = self._resolve(flat)
        self._cache[key] = resolution
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return resolution

    def _resolve(self, flat: list[tuple[str, Any]]) -> Resolution:
        matched_usable = [False] * len(self.entries)
        matched_other: list[list[str]] = [[] for _ in self.entries]
        # For every rule, the first rule of each usable leaf it matches ({} once it governs one).
        claimed_by: list[dict[int, str] | None] = [{} for _ in self.entries]
        values: list[Any] = []
        for path, leaf in flat:
            usable = is_floating(leaf)
            masked = isinstance(leaf, optax.MaskedNode)
            first = None
            for j, rule in enumerate(self.entries):
                if masked and not isinstance(rule.pattern, str):
                    continue  # Predicates are only ever called with arrays.
                if not rule.predicate(path, leaf):
                    continue
                if usable:
                    matched_usable[j] = True
                else:
                    matched_other[j].append(f"{path} ({describe_leaf(leaf)})")
                if first is None:
                    first = j
                    if not self.strict:
                        break
                    if usable:
                        claimed_by[j] = None
                elif usable and (claimed := claimed_by[j]) is not None:
                    claimed.setdefault(first, path)
            value = None
            if first is not None and usable:
                value = self.entries[first].value
                check = getattr(value, "check", None)
                if value is not None and callable(check):
                    assert not isinstance(leaf, optax.MaskedNode)  # It is usable: floating.
                    check(tuple(leaf.shape) if hasattr(leaf, "shape") else (), path)
            values.append(value)
        all_paths = [p for p, _ in flat]
        _check_distinct_paths(all_paths, values)
        if self.strict:
            for j, rule in enumerate(self.entries):
                if not matched_usable[j]:
                    raise ValueError(
                        _unmatched_message(self.kind, rule, all_paths, matched_other[j])
                    )
                shadowing = claimed_by[j]
                if shadowing:
                    raise ValueError(self._shadowed_message(rule, shadowing))
        return Resolution(tuple(all_paths), tuple(values))

    def _shadowed_message(self, rule: Rule, shadowing: dict[int, str]) -> str:
        earlier = ", ".join(
            f"{self.entries[k].description!r} (e.g. {path!r})" for k, path in shadowing.items()
        )
        return (
            f"{self.kind} rule {rule.description!r} never acts: every parameter it matches is "
            f"already claimed by the earlier rule {earlier}, and the first matching rule wins. "
            f"Put the more specific rule {rule.description!r} first, or remove it; "
            "strict=False allows shadowed rules."
        )


def _check_distinct_paths(paths: list[str], values: list[Any]) -> None:
    """Raises ``ValueError`` when a governed leaf shares its path with another leaf."""
    if len(set(paths)) == len(paths):
        return
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        j = seen.setdefault(path, i)
        if j != i and (values[i] is not None or values[j] is not None):
            raise ValueError(
                f"Two parameters have the same path {path!r} (a dict key containing '/' next "
                "to nested keys that spell the same path, e.g. {'a/b': x, 'a': {'b': y}}): "
                "rules, optimizer state and penalties are keyed by path and cannot tell them "
                "apart. Rename one of the keys."
            )


def build_rules(
    rules: RulesLike | Rules,
    *,
    coerce: Callable[[Any], Any],
    strict: bool | None,
    kind: str,
) -> Rules:
    """Returns ``rules`` as `Rules` of ``kind`` whose values went through ``coerce``.

    ``strict=None`` means ``True`` for a mapping or sequence, and the object's own setting for a
    `Rules`. A `Rules` object already of ``kind`` with that strictness is returned as is, so its
    resolution cache carries over between calls.
    """
    if isinstance(rules, Rules):
        strict = rules.strict if strict is None else strict
        if rules.kind == kind and rules.strict == strict:
            return rules
    return Rules(rules, coerce=coerce, strict=True if strict is None else strict, kind=kind)


def _as_pairs(rules: Any, kind: str) -> list[tuple[Any, Any]]:
    if isinstance(rules, Mapping):
        return list(rules.items())
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TypeError(
            f"{kind} rules must be a mapping {{pattern: {kind}}} or a sequence of "
            f"(pattern, {kind}) pairs; got {rules!r} of type {type(rules).__name__}. "
            f"To cover every parameter, use {{'**': ...}}."
        )
    pairs = []
    for i, item in enumerate(rules):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"{kind} rule #{i} must be a (pattern, {kind}) pair, got {item!r}.")
        pairs.append((item[0], item[1]))
    return pairs


def _unmatched_message(kind: str, rule: Rule, all_paths: list[str], others: list[str]) -> str:
    msg = f"{kind} rule {rule.description!r} matches no parameter"
    if others:
        shown = ", ".join(others[:5])
        masked = any(o.endswith("(masked)") for o in others)
        what = "masked out by optax.masked, or " if masked else ""
        msg += (
            f": it matches only leaves that are {what}not floating-point arrays ({shown}), "
            f"which a {kind} never acts on"
        )
    elif not all_paths:
        msg += " (the tree has no leaves)"
    else:
        pattern = rule.pattern
        if isinstance(pattern, str) and not pattern.startswith("re:"):
            _, below = compile_pattern(pattern.rstrip("/") + "/**")
            if any(below(p, None) for p in all_paths):
                suggestion = pattern.rstrip("/") + "/**"
                return (
                    f"{msg}: {pattern!r} names a module, not a parameter. To cover its "
                    f"parameters, use {suggestion!r}."
                )
        query = rule.description if isinstance(pattern, str) else ""
        query = query[3:] if query.startswith("re:") else query
        close = difflib.get_close_matches(query, all_paths, n=3, cutoff=0.0) if query else []
        close = close or all_paths[:3]
        msg += f". Closest paths: {', '.join(repr(p) for p in close)}"
    return msg + ". Fix the pattern, or pass strict=False to allow rules that match nothing."


def mask(tree: Any, pattern: Any, *, strict: bool = True) -> Any:
    """Builds a boolean pytree that is ``True`` where ``pattern`` matches a leaf's path.

    Usable as the ``mask`` of `optax.masked` (or `optax.add_decayed_weights`).

    Args:
      tree: the parameter pytree.
      pattern: a glob, a ``"re:"`` regex or a callable ``(path, leaf) -> bool``.
      strict: raise if the pattern matches no leaf.

    Returns:
      A pytree of Python bools with the structure of ``tree``.

    Raises:
      ValueError: with ``strict=True``, when the pattern matches no leaf.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.mask({"kernel": jnp.ones(2), "bias": jnp.zeros(2)}, "kernel")
      {'bias': False, 'kernel': True}
    """
    description, predicate = compile_pattern(pattern)
    flat, treedef = flatten_with_paths(tree)
    out = [bool(predicate(path, leaf)) for path, leaf in flat]
    if strict and not any(out):
        rule = Rule(pattern, description, predicate, None)
        raise ValueError(_unmatched_message("mask", rule, [p for p, _ in flat], []))
    return jax.tree_util.tree_unflatten(treedef, out)
