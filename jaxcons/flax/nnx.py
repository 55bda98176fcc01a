"""The nnx layers of `jaxcons.flax` (linen's live in `jaxcons.flax` itself).

Example:
  >>> import jax.numpy as jnp, jaxcons, jaxcons.flax.nnx
  >>> layer = jaxcons.flax.nnx.ActivityRegularization("l2")
  >>> _ = layer(jnp.ones((2, 3)))
  >>> layer.loss.get_value()
  Array(0.03, dtype=float32)
"""

from jaxcons.flax._activity import ActivityLoss
from jaxcons.flax._activity import NNXActivityRegularization as ActivityRegularization

__all__ = ["ActivityLoss", "ActivityRegularization"]
