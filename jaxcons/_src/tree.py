"""Tree helpers below everything else: parameter paths and the leaves rules act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Attribute names that flax uses for the payload of a metadata box (linen `nn.Partitioned`,
# `nn.LogicallyPartitioned`, jaxcons' own boxes) or of an nnx `Variable`: trailing attribute
# keys with these names are dropped so the path names the parameter, not its container.
_PAYLOAD_KEYS = ("value", "raw_value")


def is_masked(x: Any) -> bool:
    """Whether ``x`` is an `optax.MaskedNode`: used as ``is_leaf`` wherever jaxcons flattens.

    A ``MaskedNode`` is an empty pytree; kept as a leaf, masked trees keep their paths and
    their leaves line up with the unmasked tree's.
    """
    return isinstance(x, optax.MaskedNode)


def key_name(key: Any) -> str:
    """Returns one path segment for a `jax.tree_util` key entry."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(keypath: Sequence[Any]) -> str:
    """Joins a `jax.tree_util` key path into a ``/``-separated string.

    Dict keys, attribute names and sequence indices each give one segment. Trailing attribute
    keys ``value`` / ``raw_value`` (the payload of a flax metadata box, of nested boxes, or of an
    nnx ``Variable``) are dropped, so linen (``params/Dense_0/kernel``), nnx
    (``layers/0/kernel``) and plain pytrees read alike; a dict key named ``value`` (a linen
    parameter or module of that name) is kept.

    Args:
      keypath: a key path, as produced by `jax.tree_util.tree_flatten_with_path`.

    Returns:
      The path string.

    Example:
      >>> import jax, jaxcons
      >>> (kp, _), = jax.tree_util.tree_flatten_with_path({"dense": [1.0]})[0]
      >>> jaxcons.path_str(kp)
      'dense/0'
    """
    keys = list(keypath)
    while (
        len(keys) > 1
        and isinstance(keys[-1], jax.tree_util.GetAttrKey)
        and keys[-1].name in _PAYLOAD_KEYS
    ):
        keys.pop()
    return "/".join(key_name(k) for k in keys)


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Flattens ``tree`` into ``[(path, leaf), ...]`` and its treedef.

    `optax.MaskedNode` entries are kept as leaves (they pass through every transform).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_masked)
    return [(path_str(kp), leaf) for kp, leaf in leaves], treedef


def paths(tree: Any) -> list[str]:
    """Lists the path of every leaf of ``tree``, in flattening order.

    Args:
      tree: any pytree: a params dict, a linen variables dict, an nnx ``State``.

    Returns:
      A list of ``/``-joined path strings, one per leaf.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.paths({"params": {"Dense_0": {"bias": jnp.zeros(2), "kernel": jnp.ones((3, 2))}}})
      ['params/Dense_0/bias', 'params/Dense_0/kernel']
    """
    flat, _ = flatten_with_paths(tree)
    return [p for p, _ in flat]


def is_floating(leaf: Any) -> bool:
    """Whether ``leaf`` is a floating-point array or scalar (the leaves rules act on)."""
    if isinstance(leaf, optax.MaskedNode) or leaf is None:
        return False
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float, np.generic)):
            return False
        dtype = jnp.result_type(leaf)
    return bool(jnp.issubdtype(dtype, jnp.floating))


def describe_leaf(leaf: Any) -> str:
    """A short description of a leaf for messages: its dtype, ``masked`` or its type."""
    if isinstance(leaf, optax.MaskedNode):
        return "masked"
    dtype = getattr(leaf, "dtype", None)
    return str(dtype) if dtype is not None else type(leaf).__name__


def is_single_floating_array(owner: Any, x: Any) -> bool:
    """Whether ``x`` is one array (rather than a pytree of them) that ``owner`` can act on.

    Raises:
      TypeError: naming ``owner``'s class and the dtype, for a single non-floating array.
    """
    if not isinstance(x, (jax.Array, np.ndarray, np.generic, float, int)):
        return False
    if not is_floating(x):
        raise TypeError(
            f"{type(owner).__name__} acts on floating-point arrays; got an array of "
            f"dtype {getattr(x, 'dtype', type(x).__name__)}."
        )
    return True
