"""The constraint protocol: stateless projections and stateful ones."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax

from jaxcons._configurable import Configurable, is_single_floating_array
from jaxcons._paths import is_masked
from jaxcons._rules import is_floating

__all__ = ["Constraint", "StatefulConstraint", "leafwise"]


def leafwise(fn: Callable[[Any, jax.Array], jax.Array]) -> Callable[[Any, Any], Any]:
    """Wraps ``fn(self, w)`` written for one array so it also takes a whole pytree.

    On a pytree, every floating-point leaf is projected and every other leaf (integer arrays,
    `optax.MaskedNode`) is passed through. A single non-floating array is a ``TypeError``:
    constraints act on floating-point parameters only.
    """
    if getattr(fn, "_jaxcons_leafwise", False):
        return fn

    @functools.wraps(fn)
    def wrapper(self: Any, w: Any) -> Any:
        if is_single_floating_array(self, w):
            return fn(self, w)
        return jax.tree_util.tree_map(
            lambda x: fn(self, x) if is_floating(x) else x,
            w,
            is_leaf=is_masked,
        )

    wrapper._jaxcons_leafwise = True  # type: ignore[attr-defined]
    return wrapper


class Constraint(Configurable):
    """Base class for weight constraints: pure projections ``w -> w``.

    A subclass overrides ``__call__(self, w)`` for one array ``w`` and returns an array of the
    same shape and dtype (the default is the identity). The base class makes every subclass's
    ``__call__`` accept a whole pytree too: each floating-point leaf is projected, other leaves
    pass through. Any plain callable ``w -> w`` is accepted wherever a constraint is; subclass
    this class to get pytree calls, ``get_config`` / ``from_config`` and serialization.

    Optional hooks used by the rule engine:

    * ``check(shape, path)``: raise ``ValueError`` when the constraint cannot apply to a
      parameter of that shape (an ``axis`` out of range, say). Called once per trace.
    * ``elementwise_bounds``: ``(lower, upper)`` (either may be ``None``) for constraints whose
      feasible set is an elementwise box; `jaxcons.constrain` uses it to keep such parameters
      exactly feasible after ``optax.apply_updates``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> class CenterAround(jaxcons.Constraint):
      ...   def __init__(self, ref_value):
      ...     self.ref_value = ref_value
      ...   def __call__(self, w):
      ...     return w - w.mean() + self.ref_value
      ...   def get_config(self):
      ...     return {"ref_value": self.ref_value}
      >>> CenterAround(1.0)({"w": jnp.array([0.0, 2.0, 4.0])})["w"]
      Array([-1.,  1.,  3.], dtype=float32)
    """

    elementwise_bounds: ClassVar[tuple[float | None, float | None] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None:
            cls.__call__ = leafwise(call)  # type: ignore[method-assign]

    @leafwise
    def __call__(self, w: jax.Array) -> jax.Array:
        return w


class StatefulConstraint(Constraint):
    """A constraint that carries state across training steps (e.g. power-iteration vectors).

    Subclasses implement:

    * ``init(w) -> state``: the initial state (a pytree of arrays) for parameter ``w``.
    * ``project(w, state) -> (w, state)``: the jit-compatible projection used by
      `jaxcons.constrain`, which keeps each parameter's state in its optimizer state.
    * ``__call__(w)``: the accurate projection with no state to carry (used by
      `jaxcons.apply_constraints` and direct calls).

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> class RunningMaxClip(jaxcons.StatefulConstraint):
      ...   # Clips to the largest absolute value seen at the first step.
      ...   def init(self, w):
      ...     return jnp.max(jnp.abs(w))
      ...   def project(self, w, bound):
      ...     return jnp.clip(w, -bound, bound), bound
      ...   def __call__(self, w):
      ...     return w
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = jaxcons.constrain({"w": RunningMaxClip()})
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([5.0, 0.0])}, state, params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 2., -2.], dtype=float32)
    """

    def init(self, w: jax.Array) -> Any:
        """Returns the initial state for parameter ``w``."""
        raise NotImplementedError(f"{type(self).__name__} must implement init(w).")

    def project(self, w: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Projects ``w`` using and updating ``state``."""
        raise NotImplementedError(f"{type(self).__name__} must implement project(w, state).")
