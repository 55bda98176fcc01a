"""The opt-in CPU scratch buffer of `jaxcons.constrain` (``scratch=True``).

A projection with a reduction (the column norms of `MaxNorm`) reads ``x = p + u`` twice while
``optax.apply_updates`` still needs ``p``, so XLA materialises ``x``: one parameter-sized
temporary per constrained leaf. XLA:CPU allocates and page-faults that temporary on every call;
GPU and TPU take it from a memory pool. With the scratch on, the optimizer state keeps one
buffer of the parameter's shape and dtype for every such leaf and ``x`` is written into it, so
a step that donates its optimizer state reuses mapped memory. The price is one more copy of
those parameters in the state (and in checkpoints), and a state whose structure depends on
the setting; that is why it is off by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp


def new_buffers(active: Iterable[tuple[Any, str, Any]], leaves: list[Any]) -> dict[str, jax.Array]:
    """A zero buffer like the parameter for every governed leaf without elementwise bounds."""
    return {
        path: jnp.zeros_like(leaves[i])
        for i, path, c in active
        if getattr(c, "elementwise_bounds", None) is None
    }


def write_scratch(buffer: jax.Array, x: jax.Array) -> jax.Array:
    """``x``, written over the whole of ``buffer``.

    XLA drops the buffer's old contents and writes ``x`` straight into its (donated) memory
    instead of into a fresh temporary: no result depends on what the buffer held.
    """
    return jax.lax.dynamic_update_slice(buffer, x, (0,) * x.ndim)
