"""`Constrained`: a linen metadata box declaring a parameter's constraint and regularizer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
from flax.core import meta

from jaxcons import constraints, regularizers

__all__ = ["Constrained", "with_constraints"]


class Constrained(flax.struct.PyTreeNode, meta.AxisMetadata):
    """A linen parameter boxed with its constraint and regularizer.

    Like ``flax.linen.Partitioned``, it is a `flax.core.meta.AxisMetadata` box: linen unboxes
    it when a module reads the parameter (``apply`` sees plain arrays), while the variables
    returned by ``init`` keep it, so the declaration travels with the parameters through
    ``jax.jit``, ``TrainState.apply_gradients``, gradients (``jax.grad`` of a boxed tree is
    boxed) and checkpoints. The constraint and regularizer are static metadata (part of the
    tree structure, not leaves). `jaxcons.flax.constraint_rules` and
    `jaxcons.flax.regularizer_rules` turn the boxes of a tree into rules.

    A box's path is the parameter's: the payload's ``value`` key is dropped
    (``params/Dense_0/kernel``).

    Attributes:
      value: the parameter (or a further metadata box, e.g. ``nn.Partitioned``).
      constraint: the parameter's constraint, or ``None``.
      regularizer: the parameter's regularizer, or ``None``.

    Example:
      >>> import jax.numpy as jnp, jaxcons, jaxcons.flax
      >>> box = jaxcons.flax.Constrained(jnp.ones(2), constraint=jaxcons.NonNeg())
      >>> box.unbox()
      Array([1., 1.], dtype=float32)
      >>> jaxcons.paths({"scale": box})
      ['scale']
    """

    # The declarations the engine reads off this box (jaxcons._src.declarations).
    __jaxcons_declarations__ = ("constraint", "regularizer")

    value: Any
    constraint: Any = flax.struct.field(default=None, pytree_node=False)
    regularizer: Any = flax.struct.field(default=None, pytree_node=False)

    def unbox(self) -> Any:
        """Returns the boxed value (one level: a nested box stays boxed)."""
        return self.value

    def replace_boxed(self, val: Any) -> Constrained:
        """Returns a box with the same metadata around ``val``."""
        return self.replace(value=val)

    def get_partition_spec(self) -> jax.sharding.PartitionSpec:
        """The partitioning of a boxed ``nn.Partitioned`` value; replicated otherwise.

        Makes ``nn.get_partition_spec`` and ``nn.get_sharding`` see through the box.
        """
        inner: Callable[[], jax.sharding.PartitionSpec] | None = getattr(
            self.value, "get_partition_spec", None
        )
        return inner() if callable(inner) else jax.sharding.PartitionSpec()

    def get_sharding(self, mesh: jax.sharding.Mesh) -> jax.sharding.Sharding:
        """The sharding of a boxed ``nn.Partitioned`` value on ``mesh``; replicated otherwise."""
        inner: Callable[[jax.sharding.Mesh], jax.sharding.Sharding] | None = getattr(
            self.value, "get_sharding", None
        )
        if callable(inner):
            return inner(mesh)
        return jax.sharding.NamedSharding(mesh, self.get_partition_spec())

    def add_axis(self, index: int, params: dict[Any, Any]) -> Constrained:
        """Refuses lifted transforms that stack parameters (``nn.scan``, ``nn.vmap``).

        A declared constraint or regularizer is written for one layer's parameter; on the
        stacked parameter an ``axis`` argument would point at the wrong axis, so the box
        refuses rather than constrain the wrong thing.

        Raises:
          ValueError: always.
        """
        del params
        raise ValueError(
            f"A jaxcons.flax.with_constraints parameter (constraint={self.constraint!r}, "
            f"regularizer={self.regularizer!r}) cannot be stacked by a lifted transform "
            f"(nn.scan / nn.vmap adding axis {index}): the declaration is written for one "
            "layer's parameter. Use a plain initializer and give explicit rules for the "
            "stacked parameter instead."
        )

    def remove_axis(self, index: int, params: dict[Any, Any]) -> Constrained:
        """Refuses lifted transforms, as `add_axis` does.

        Raises:
          ValueError: always.
        """
        return self.add_axis(index, params)


def with_constraints(
    init_fn: Callable[..., Any], constraint: Any = None, regularizer: Any = None
) -> Callable[..., Constrained]:
    """Wraps a parameter initializer so that the parameter is boxed with its declarations.

    The linen counterpart of Keras's ``add_weight(constraint=..., regularizer=...)``, used
    like ``nn.with_partitioning``::

      scale = self.param("scale", with_constraints(nn.initializers.ones, constraint=NonNeg()),
                         shape)
      nn.Dense(4, kernel_init=with_constraints(init, constraint=MaxNorm(2.0),
                                               regularizer=L2(1e-4)))

    `jaxcons.flax.TrainState` picks the declarations up by itself; elsewhere
    `jaxcons.flax.constraint_rules` / `regularizer_rules` turn them into rules for
    `jaxcons.constrain`, `jaxcons.apply_constraints` and `jaxcons.penalty`.

    Composes with ``nn.with_partitioning`` in either order (``with_constraints(
    nn.with_partitioning(init, names), ...)`` boxes a ``Partitioned`` parameter).
    Boxed and unboxed trees read alike: every trailing payload key is dropped from a path,
    so ``Dense_0/kernel`` names the parameter whether it sits in one box, two nested boxes
    or none.

    Args:
      init_fn: the initializer ``(key, *args, **kwargs) -> array``.
      constraint: a constraint (a `jaxcons.Constraint`, a callable ``w -> w``, a name or a
        config dict), or ``None``.
      regularizer: a regularizer (a `jaxcons.Regularizer`, a callable ``x -> scalar``, a name
        or a config dict), or ``None``.

    Returns:
      An initializer returning a `Constrained` box.

    Raises:
      ValueError: for an unknown constraint or regularizer name.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxcons, jaxcons.flax
      >>> class Scale(nn.Module):
      ...   @nn.compact
      ...   def __call__(self, x):
      ...     init = jaxcons.flax.with_constraints(nn.initializers.ones, constraint="non_neg")
      ...     return x * self.param("scale", init, (1, x.shape[-1]))
      >>> variables = Scale().init(jax.random.key(0), jnp.ones((1, 2)))
      >>> variables["params"]["scale"].constraint
      NonNeg()
      >>> jaxcons.flax.constraint_rules(variables["params"])
      [('scale', NonNeg())]
    """
    c = constraints.get(constraint)
    r = regularizers.get(regularizer)

    @functools.wraps(init_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Constrained:
        return Constrained(init_fn(*args, **kwargs), constraint=c, regularizer=r)

    return wrapper
