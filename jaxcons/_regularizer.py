"""The regularizer protocol: penalties ``x -> scalar``, with optional proximal operators."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcons._configurable import Configurable, is_single_floating_array
from jaxcons._norms import accumulation_dtype
from jaxcons._paths import is_masked
from jaxcons._regularizer_ops import add_penalties
from jaxcons._rules import is_floating

__all__ = ["Regularizer", "summed_over_leaves"]


def summed_over_leaves(fn: Callable[[Any, jax.Array], jax.Array]) -> Callable[[Any, Any], Any]:
    """Wraps ``fn(self, x)`` written for one array so it also takes a whole pytree.

    On a pytree, the result is the sum of ``fn`` over every floating-point leaf (other leaves,
    such as integer arrays and `optax.MaskedNode`, are skipped). A single non-floating array is
    a ``TypeError``: regularizers act on floating-point parameters only.
    """
    if getattr(fn, "_jaxcons_leafwise", False):
        return fn

    @functools.wraps(fn)
    def wrapper(self: Any, x: Any) -> Any:
        if is_single_floating_array(self, x):
            return fn(self, jnp.asarray(x))
        leaves = jax.tree_util.tree_leaves(x, is_leaf=is_masked)
        return add_penalties([fn(self, jnp.asarray(v)) for v in leaves if is_floating(v)])

    wrapper._jaxcons_leafwise = True  # type: ignore[attr-defined]
    return wrapper


class Regularizer(Configurable):
    """Base class for regularizers: penalties ``x -> scalar`` added to the training loss.

    A subclass overrides ``__call__(self, x)`` for one floating-point array ``x`` and returns a
    scalar (the default is the zero penalty). The base class makes every subclass's
    ``__call__`` accept a whole pytree too, returning the sum over its floating-point leaves.
    Any plain callable ``x -> scalar`` is accepted wherever a regularizer is; subclass this
    class to get pytree calls, ``get_config`` / ``from_config`` and serialization.

    Optional hooks used by the rule engine and the transforms:

    * ``check(shape, path)``: raise ``ValueError`` when the regularizer cannot act on a
      parameter of that shape (a rank or an axis it does not support). Called once per trace.
    * ``prox(x, step)``: the proximal operator of ``step * R`` for one array,

      .. math:: \\operatorname{prox}_{sR}(x) = \\arg\\min_z \\tfrac12 \\|z - x\\|^2 + s\\,R(z),

      returning an array of ``x``'s shape and dtype; ``step`` may be a traced scalar.
      `jaxcons.proximal` needs it; ``None`` (the default) means there is no closed form.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> class L2Regularizer(jaxcons.Regularizer):
      ...   def __init__(self, l2=0.0):
      ...     self.l2 = l2
      ...   def __call__(self, x):
      ...     return self.l2 * jnp.sum(jnp.square(x))
      ...   def get_config(self):
      ...     return {"l2": self.l2}
      >>> L2Regularizer(0.5)({"kernel": jnp.ones((5, 5)), "bias": jnp.ones(5)})
      Array(15., dtype=float32)
    """

    prox: ClassVar[Callable[..., jax.Array] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None:
            cls.__call__ = summed_over_leaves(call)  # type: ignore[method-assign]

    @summed_over_leaves
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.zeros((), accumulation_dtype(x.dtype))
