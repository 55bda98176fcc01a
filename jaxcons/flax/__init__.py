"""flax integration: declared constraints and regularizers, a TrainState, activity losses.

Requires flax (``pip install jaxcons[flax]``).

* `with_constraints` boxes a linen parameter with its constraint and regularizer
  (`Constrained`, a ``flax.core.meta.AxisMetadata`` like ``nn.Partitioned``); nnx parameters
  declare them as variable metadata (``nnx.Param(w, constraint=..., regularizer=...)``,
  ``nnx.Linear(..., kernel_metadata={"constraint": ...})``).
* `constraint_rules` / `regularizer_rules` turn declarations into path rules for
  `jaxcons.constrain`, `jaxcons.apply_constraints` and `jaxcons.penalty`, combined with
  explicit rules (a parameter with both is an error unless ``prefer=`` says which wins).
* `TrainState`: flax's linen train state that projects after every update and gives the
  regularization penalty for the loss.
* `ActivityRegularization` (linen), `jaxcons.flax.nnx.ActivityRegularization` (nnx) and
  `activity_losses`: Keras's activity regularization.

nnx: ``nnx.Optimizer(model, optax.chain(optax.adam(1e-3), jaxcons.constrain(rules)),
wrt=nnx.Param)`` works as is: its ``init`` sees ``Variable`` objects and its ``update`` raw
arrays, and both give the same paths (``layers/0/kernel``). Masks for ``optax.masked`` are the
one trap: a mask built from ``nnx.state(model, nnx.Param)`` holds ``Variable`` nodes that the
update's raw arrays do not match (optax raises a pytree structure error). Build it from
``nnx.as_pure(nnx.state(model, nnx.Param))`` (``nnx.pure`` before flax 0.12.7), or pass a
callable (``lambda p: jaxcons.mask(p, "**/bias")``).

Example:
  >>> import jax, jax.numpy as jnp, optax, flax.linen as nn, jaxcons, jaxcons.flax
  >>> class Model(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     init = jaxcons.flax.with_constraints(nn.initializers.ones, constraint=jaxcons.NonNeg())
  ...     return x * self.param("scale", init, (1, x.shape[-1]))
  >>> model = Model()
  >>> x = jnp.ones((2, 3))
  >>> state = jaxcons.flax.TrainState.create(
  ...     apply_fn=model.apply, params=model.init(jax.random.key(0), x)["params"],
  ...     tx=optax.sgd(1.0))
  >>> grads = jax.grad(lambda p: state.apply_fn({"params": p}, x).sum())(state.params)
  >>> state.apply_gradients(grads=grads).params["scale"].value
  Array([[0., 0., 0.]], dtype=float32)
"""

from jaxcons.flax import nnx as nnx
from jaxcons.flax._activity import ActivityLoss as ActivityLoss
from jaxcons.flax._activity import ActivityRegularization as ActivityRegularization
from jaxcons.flax._activity import activity_losses as activity_losses
from jaxcons.flax._boxes import Constrained as Constrained
from jaxcons.flax._boxes import with_constraints as with_constraints
from jaxcons.flax._declared import constraint_rules as constraint_rules
from jaxcons.flax._declared import regularizer_rules as regularizer_rules
from jaxcons.flax._train_state import TrainState as TrainState

__all__ = [
    "ActivityLoss",
    "ActivityRegularization",
    "Constrained",
    "TrainState",
    "activity_losses",
    "constraint_rules",
    "nnx",
    "regularizer_rules",
    "with_constraints",
]
