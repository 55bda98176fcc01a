"""Activity regularization layers (linen and nnx) and the helper that sums their losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxcons import regularizers
from jaxcons._src.penalty import activity_penalty

__all__ = ["ActivityLoss", "ActivityRegularization", "NNXActivityRegularization", "activity_losses"]

LOSSES = "losses"


class ActivityRegularization(nn.Module):
    """Identity layer that records an activity penalty on its input (linen).

    The flax counterpart of ``keras.layers.ActivityRegularization``: it returns its input
    unchanged and sows

    .. math:: R(x) / \\text{batch size}

    (`jaxcons.activity_penalty`) into the ``"losses"`` collection. Apply the model with
    ``mutable=["losses"]`` and add `jaxcons.flax.activity_losses` of the returned
    collections to the loss. Nothing is recorded during ``init``, so the variables ``init``
    returns hold no stale losses; pass only ``{"params": ...}`` to ``apply``, as a ``losses``
    collection passed in would be appended to.

    Attributes:
      regularizer: a `jaxcons.Regularizer`, a callable ``x -> scalar``, a name or a config.

    Example:
      >>> import jax, jax.numpy as jnp, jaxcons, jaxcons.flax
      >>> layer = jaxcons.flax.ActivityRegularization(jaxcons.regularizers.L2(0.01))
      >>> y, collections = layer.apply({}, 2.0 * jnp.ones((5, 5)), mutable=["losses"])
      >>> jaxcons.flax.activity_losses(collections)
      Array(0.2, dtype=float32)
    """

    regularizer: Any

    @nn.compact
    def __call__(self, x: Any) -> Any:
        regularizer = regularizers.get(self.regularizer)
        if not self.is_initializing():
            self.sow(LOSSES, "activity_regularization", activity_penalty(regularizer, x))
        return x


class ActivityLoss(nnx.Intermediate):
    """The nnx variable type holding the loss recorded by `jaxcons.flax.nnx.ActivityRegularization`.

    Filter on it like any variable type (``nnx.state(model, ActivityLoss)``); it is not an
    ``nnx.Param``, so ``nnx.grad`` and ``nnx.Optimizer(wrt=nnx.Param)`` leave it alone.
    """


class NNXActivityRegularization(nnx.Module):
    """Identity layer that records an activity penalty on its input (nnx).

    Exported as ``jaxcons.flax.nnx.ActivityRegularization``. Each call returns its input
    unchanged and sets its `ActivityLoss` variable to

    .. math:: R(x) / \\text{batch size}

    (`jaxcons.activity_penalty`): the loss of the latest call, so repeated forward passes
    (evaluation loops, ``nnx.jit``) neither accumulate nor retrace. Add
    `jaxcons.flax.activity_losses` of the model to the loss inside the function that ran the
    forward pass (the recorded value is then traced and differentiable). A layer instance
    called several times in one forward pass records its last call only: use one instance
    per call site.

    Args:
      regularizer: a `jaxcons.Regularizer`, a callable ``x -> scalar``, a name or a config.

    Example:
      >>> import jax.numpy as jnp, jaxcons, jaxcons.flax.nnx
      >>> layer = jaxcons.flax.nnx.ActivityRegularization(jaxcons.regularizers.L2(0.01))
      >>> y = layer(2.0 * jnp.ones((5, 5)))
      >>> jaxcons.flax.activity_losses(layer)
      Array(0.2, dtype=float32)
    """

    def __init__(self, regularizer: Any):
        self.regularizer = regularizers.get(regularizer)
        self.loss = ActivityLoss(jnp.zeros((), jnp.float32))

    def __call__(self, x: Any) -> Any:
        self.loss.set_value(activity_penalty(self.regularizer, x))
        return x


def activity_losses(x: Any) -> jax.Array:
    """Sums the activity losses recorded by ActivityRegularization layers.

    Args:
      x: for linen, the collections returned by ``model.apply(..., mutable=["losses"])``
        (or any mapping with a ``"losses"`` collection; an empty mapping gives 0); for nnx,
        the model or a ``State`` (its `ActivityLoss` variables are summed).

    Returns:
      The total, a scalar (0.0 when nothing was recorded).

    Raises:
      ValueError: for a non-empty mapping without a ``"losses"`` collection, or a pure nnx
        ``State`` (raw arrays: the activity losses cannot be told apart).

    Example:
      >>> import jax.numpy as jnp, jaxcons.flax
      >>> jaxcons.flax.activity_losses({"losses": {"act": (jnp.float32(1.5), jnp.float32(2.0))}})
      Array(3.5, dtype=float32)
    """
    if isinstance(x, nnx.Module):
        x = nnx.state(x, ActivityLoss)
    if isinstance(x, nnx.State):
        nodes = jax.tree_util.tree_leaves(x, is_leaf=lambda v: isinstance(v, nnx.Variable))
        if nodes and not any(isinstance(v, nnx.Variable) for v in nodes):
            raise ValueError(
                "activity_losses cannot tell activity losses apart in a pure nnx State (its "
                "Variables were replaced by raw arrays); pass the model, or "
                "nnx.state(model, ActivityLoss)."
            )
        x = [v.get_value() for v in nodes if isinstance(v, ActivityLoss)]
    elif isinstance(x, Mapping):
        if x and LOSSES not in x:
            raise ValueError(
                f"activity_losses expects the collections returned by "
                f"model.apply(..., mutable=[{LOSSES!r}]), which hold a {LOSSES!r} "
                f"collection; got a mapping with keys {sorted(map(str, x))}."
            )
        x = x.get(LOSSES, {})
    return jnp.asarray(sum(jax.tree_util.tree_leaves(x), 0.0))
