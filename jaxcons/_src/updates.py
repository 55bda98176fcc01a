"""Per-leaf updates: aligning updates with params, the checked calls of a constraint, and
the delta that lands a projected value through ``optax.apply_updates``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcons._src.base import Constraint
from jaxcons._src.matrix_stacks import InOrder
from jaxcons._src.numerics import inward_bounds, wider_float
from jaxcons._src.rules import Rules
from jaxcons._src.tree import is_masked, path_str


def check_like(what: str, path: str, w: jax.Array, y: Any) -> jax.Array:
    """Returns ``y`` as an array after checking it has ``w``'s shape and dtype.

    Args:
      what: who produced ``y``, for the message (``"The constraint MaxNorm(...)"``).
      path: the parameter's path.
      w: the parameter (or the point ``y`` replaces).
      y: the output to check.

    Raises:
      ValueError: naming ``what``, the path and both shapes and dtypes.
    """
    y = jnp.asarray(y)
    if y.shape != w.shape or y.dtype != w.dtype:
        raise ValueError(
            f"{what} for parameter {path!r} returned an array of shape {tuple(y.shape)} and "
            f"dtype {y.dtype}, but the parameter has shape {tuple(w.shape)} and dtype "
            f"{w.dtype}: the output must keep its input's shape and dtype."
        )
    return y


def check_box(c: Constraint, path: str, w: jax.Array) -> None:
    """Raises ``ValueError`` naming the parameter when ``c``'s elementwise box holds no value
    of ``w``'s dtype somewhere (see `jaxcons._src.numerics.inward_bounds`)."""
    bounds = getattr(c, "elementwise_bounds", None)
    if bounds is not None:
        lower, upper = bounds
        inward_bounds(lower, upper, w.dtype, w.ndim, where=f"parameter {path!r}")


def call_leaf(c: Constraint, path: str, w: jax.Array) -> jax.Array:
    """``c(w)`` for the parameter at ``path``, checked to keep ``w``'s shape and dtype."""
    check_box(c, path, w)
    return check_like(f"The constraint {c!r}", path, w, c(w))


def project_leaf(c: Constraint, path: str, w: jax.Array, state: Any) -> tuple[jax.Array, Any]:
    """``c.project(w, state)``, checked: the shape and dtype of ``w``, the state's structure.

    Raises:
      ValueError: naming the parameter and the constraint, for an output of another shape or
        dtype, or a new state whose tree structure differs from the old one's.
    """
    check_box(c, path, w)
    result = c.project(w, state)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ValueError(
            f"{type(c).__name__}.project for parameter {path!r} must return a pair "
            f"(projected w, new state), got {type(result).__name__}."
        )
    y, new_state = result
    y = check_like(f"The constraint {c!r}", path, w, y)
    before = jax.tree_util.tree_structure(state)
    after = jax.tree_util.tree_structure(new_state)
    if before != after:
        raise ValueError(
            f"{type(c).__name__}.project for parameter {path!r} changed the structure of its "
            f"state from {before} to {after}: the state must keep the structure init returned."
        )
    return y, new_state


def require_params(params: optax.Params | None, transform: str) -> optax.Params:
    """Returns ``params``, or raises ``ValueError`` naming ``transform`` when they are missing."""
    if params is None:
        raise ValueError(
            f"jaxcons.{transform} needs the current params: call "
            "tx.update(updates, state, params) (optax.chain passes them on)."
        )
    return params


def _node_children(x: Any) -> list[tuple[Any, Any]]:
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x, is_leaf=is_masked)):
        return []
    children, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda n: n is not x)
    return [(keypath[0], child) for keypath, child in children]


def _first_mismatch(a: Any, b: Any, keys: tuple[Any, ...] = ()) -> str:
    """Where two pytrees first differ in container type or keys, for a message."""
    where = repr(path_str(keys)) if keys else "the top level"
    if type(a) is not type(b):
        return f"at {where} the params have a {type(a).__name__}, the updates a {type(b).__name__}"
    ca, cb = _node_children(a), _node_children(b)
    ka, kb = [k for k, _ in ca], [k for k, _ in cb]
    if ka != kb:
        return f"at {where} the params have children {ka}, the updates {kb}"
    for (k, x), (_, y) in zip(ca, cb, strict=True):
        found = _first_mismatch(x, y, (*keys, k))
        if found:
            return found
    return ""


def _aligned_updates(
    updates: optax.Updates, params: optax.Params, treedef: Any, transform: str
) -> list[Any]:
    """The leaves of ``updates`` in ``params``' leaf order; a clear error if they differ."""
    try:
        return treedef.flatten_up_to(updates)
    except (ValueError, TypeError):
        detail = _first_mismatch(params, updates) or "their tree structures differ"
        raise ValueError(
            f"jaxcons.{transform}: the updates do not have the structure of the params "
            f"({detail}). Pass gradients with the params' own containers (a flax FrozenDict "
            "and a dict are different pytrees: convert with flax.core.unfreeze or "
            "flax.core.freeze)."
        ) from None


def leaf_shapes(params: optax.Params) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of every array leaf of ``params``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_masked)
    return {path_str(k): tuple(jnp.shape(v)) for k, v in leaves if not is_masked(v)}


def check_updates_like_params(
    updates: optax.Updates,
    params: optax.Params,
    transform: str,
    shapes_at_init: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Raises ``ValueError`` naming the parameter when ``updates`` do not match ``params``
    leaf by leaf (containers, shapes), or when a parameter's shape is not the one the state
    was initialised for (``shapes_at_init``, as `leaf_shapes` gave it at ``init``).
    """
    p_leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_masked)
    u_leaves = _aligned_updates(updates, params, treedef, transform)
    for path, shape in leaf_shapes(params).items():
        then = None if shapes_at_init is None else shapes_at_init.get(path)
        if then is not None and then != shape:
            raise ValueError(
                f"jaxcons.{transform}: parameter {path!r} has shape {shape}, but the optimizer "
                f"state was initialised for shape {then}. A parameter whose shape changes "
                "needs a new optimizer state: state = tx.init(params)."
            )
    paths = list(leaf_shapes(params))
    arrays = [(p, u) for p, u in zip(p_leaves, u_leaves, strict=True) if not is_masked(p)]
    for path, (p, u) in zip(paths, arrays, strict=True):
        if not is_masked(u) and jnp.shape(u) != jnp.shape(p):
            raise ValueError(
                f"jaxcons.{transform}: the update of parameter {path!r} has shape "
                f"{tuple(jnp.shape(u))}, but the parameter has shape {tuple(jnp.shape(p))}: "
                "the updates (gradients) must match the params leaf by leaf."
            )


def map_governed(
    rules: Rules,
    updates: optax.Updates,
    params: optax.Params | None,
    transform: str,
    fn: Callable[[str, Any, jax.Array, jax.Array], jax.Array],
) -> optax.Updates:
    """Replaces the update of every leaf ``rules`` govern with ``fn(path, value, p, u)``.

    ``p`` and ``u`` are the leaf's parameter and update as arrays, ``value`` the governing
    rule's value; other updates pass through. Stacked parameters are processed one after
    another (`InOrder`).

    Raises:
      ValueError: naming ``transform``, when ``params`` is missing or ``updates`` is not
        structured like them.
    """
    params = require_params(params, transform)
    resolution = rules.resolve(params)
    p_leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_masked)
    out = _aligned_updates(updates, params, treedef, transform)
    order = InOrder()
    for i, path, value in resolution.active():
        p, u = order.wait(value, jnp.asarray(p_leaves[i]), jnp.asarray(out[i]))
        out[i] = order.done(value, fn(path, value, p, u))
    return jax.tree_util.tree_unflatten(treedef, out)


def landing(p: jax.Array, u: jax.Array) -> jax.Array:
    """Where ``optax.apply_updates`` puts ``p`` under update ``u``: ``p + u`` computed in the
    wider of the two dtypes and cast back to ``p``'s (explicitly: strict-promotion clean)."""
    wide = wider_float(p.dtype, u.dtype)
    return (p.astype(wide) + u.astype(wide)).astype(p.dtype)


def update_delta(p: jax.Array, y: jax.Array, u_dtype: Any) -> jax.Array:
    """The update (in ``u_dtype``) that moves ``p`` to ``y`` under ``optax.apply_updates``.

    The difference is taken in the wider of the two dtypes, where it is usually exact, so bf16
    params with float32 updates land on ``y`` itself rather than on a bf16-rounded difference.
    """
    wide = wider_float(p.dtype, u_dtype)
    return (y.astype(wide) - p.astype(wide)).astype(u_dtype)


def check_state_fits(c: Constraint, path: str, p: jax.Array, leaf_state: Any) -> None:
    """Raises ``ValueError`` naming the parameter when its state is not what ``c.init`` makes
    for a parameter of ``p``'s shape and dtype (a state kept from another shape)."""
    expected = jax.eval_shape(c.init, jax.ShapeDtypeStruct(p.shape, p.dtype))

    def described(tree: Any) -> list[tuple[tuple[int, ...], Any]]:
        return [(tuple(jnp.shape(x)), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(tree)]

    same = jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(leaf_state)
    if not same or described(expected) != described(leaf_state):
        raise ValueError(
            f"jaxcons.constrain: the state of {c!r} for parameter {path!r} (shapes "
            f"{[s for s, _ in described(leaf_state)]}) was not made for a parameter of shape "
            f"{tuple(p.shape)} and dtype {p.dtype} (its init makes shapes "
            f"{[s for s, _ in described(expected)]}). A parameter whose shape changes needs a "
            "new optimizer state: state = tx.init(params)."
        )
