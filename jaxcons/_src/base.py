"""The base classes: `Configurable`, `Constraint`, `StatefulConstraint`, `Regularizer`."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcons._src.numerics import accumulation_dtype, add_penalties
from jaxcons._src.schedules import Scheduled
from jaxcons._src.tree import is_floating, is_masked, is_single_floating_array


def json_safe(value: Any) -> Any:
    """A config value with tuples as lists and 0-d arrays / NumPy scalars as Python scalars."""
    if isinstance(value, (tuple, list)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return value.tolist()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a config value (``2 == 2.0`` and ``[0, 1] == (0, 1)`` still)."""
    value = json_safe(value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


_NOT_INHERITED = ("identifiers", "keras_equivalent", "traced_once")


class Configurable:
    """Objects rebuilt from their constructor arguments: ``cls(**obj.get_config())``.

    Subclasses that take arguments override `get_config`; `from_config`, ``repr``, ``==`` and
    ``hash`` follow from it. The optional `check` hook lets the rule engine reject a parameter
    shape (with its path) once per trace.

    Facts about a class are class attributes, declared by each class for itself: a subclass
    does not inherit them (it may compute something else), so one that does not declare a
    fact gets the safe default.

    Attributes:
      identifiers: the string identifiers `get` accepts besides the class name (the
        snake_case name, then legacy tf.keras names), each building `from_identifier`'s
        object. Built-in classes only; default ``()``.
      keras_equivalent: the dotted name of the Keras 3 class that takes the same arguments
        and computes the same thing (``"keras.constraints.MaxNorm"``), for
        `jaxcons.keras.from_keras`; ``None`` (the default) for none.
      traced_once: whether `jaxcons.constrain` and `jaxcons.proximal` may trace this class's
        per-parameter update once per object, shape and dtypes (a nested ``jax.jit``) rather
        than once per parameter: true only for pure, stateless functions of the array that
        run under ``jit`` as they are. Default ``False``.
    """

    identifiers: ClassVar[tuple[str, ...]] = ()
    keras_equivalent: ClassVar[str | None] = None
    traced_once: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _NOT_INHERITED:
            if name not in cls.__dict__:
                setattr(cls, name, getattr(Configurable, name))

    @classmethod
    def from_identifier(cls) -> Any:
        """The object a string identifier of this class (``identifiers``) builds: ``cls()``."""
        return cls()

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` if this object cannot act on a leaf of ``shape`` at ``path``."""
        del shape, path

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments, so that ``cls(**config)`` rebuilds the object."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Rebuilds the object from the output of `get_config`."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def _identity(self) -> Any:
        """What equality and hashing compare: the config, or the object itself.

        A subclass that keeps state but does not override `get_config` would otherwise compare
        equal to every other instance of its class, and `jax.jit`, which caches on static
        values such as the constraints in flax boxes, would reuse the wrong one.
        """
        if type(self).get_config is Configurable.get_config and vars(self):
            return id(self)
        return _frozen(self.get_config())

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self._identity() == other._identity()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._identity()))


def _leafwise(fn: Callable[[Any, jax.Array], jax.Array]) -> Callable[[Any, Any], Any]:
    """Wraps ``fn(self, w)`` written for one array so it also takes a whole pytree.

    On a pytree, every floating-point leaf is projected and every other leaf (integer arrays,
    `optax.MaskedNode`) is passed through. A single non-floating array is a ``TypeError``:
    constraints act on floating-point parameters only.
    """
    if getattr(fn, "_jaxcons_leafwise", False):
        return fn

    @functools.wraps(fn)
    def wrapper(self: Any, w: Any) -> Any:
        if self.is_scheduled:
            raise ValueError(
                f"{self!r} has hyper-parameters given as schedules, which need a step count: "
                "use it inside jaxcons.constrain (which evaluates them at its own step count), "
                "or call constraint.at_step(count)(w)."
            )
        if is_single_floating_array(self, w):
            return fn(self, w)
        return jax.tree_util.tree_map(
            lambda x: fn(self, x) if is_floating(x) else x, w, is_leaf=is_masked
        )

    wrapper._jaxcons_leafwise = True  # type: ignore[attr-defined]
    return wrapper


class Constraint(Configurable):
    """Base class for weight constraints: projections ``w -> w``, with optional state.

    The protocol, for one floating-point array ``w``:

    * ``__call__(w) -> w``: the exact projection, used by direct calls and
      `jaxcons.apply_constraints` (default: ``project(w, init(w))``'s array). The base class
      makes every subclass's ``__call__`` accept a whole pytree too: each floating-point leaf
      is projected, other leaves pass through.
    * ``init(w) -> state``: the state `jaxcons.constrain` keeps for this parameter between
      steps (default: `optax.EmptyState`, kept nowhere).
    * ``project(w, state) -> (w, state)``: the projection `jaxcons.constrain` applies after
      each update (default: ``(self(w), state)``). A constraint with state (the power
      iteration of `SpectralNorm`) or a cheaper per-step method overrides it.
    * ``check(shape, path)``: raise ``ValueError`` when the constraint cannot act on a
      parameter of that shape (an ``axis`` out of range, say). Called once per trace.
    * ``elementwise_bounds``: ``(lower, upper)`` for constraints whose set is an elementwise
      box, each ``None`` (unbounded), a float, or a NumPy array broadcastable to the
      parameter; `jaxcons.constrain` then keeps the applied parameters exactly inside it
      after ``optax.apply_updates``.

    * ``convex``: ``True`` when the set is convex and ``__call__`` is the Euclidean
      projection onto it, ``False`` when not, ``None`` (the default, and what a subclass that
      does not declare it gets) when not declared. A class attribute or, where it depends on
      the arguments, a property. `jaxcons.Intersection` accepts only members that declare
      ``True``, since Dykstra's algorithm finds the projection onto an intersection of
      convex sets only.
    * ``tangent(w, g) -> g``: the orthogonal projection of an update ``g`` onto the tangent
      space of the set at ``w`` (a point on it), for sets that are smooth manifolds (the
      spheres of `UnitNorm`, the Stiefel manifold of `Orthogonal`); returns an array of
      ``g``'s shape and dtype (checked). `jaxcons.tangent` needs it; ``None`` (the default)
      means the set has no tangent space, and `jaxcons.tangent` rejects the constraint when
      it initialises.

    Scalar hyper-parameters validated with ``jaxcons._src.schedules.schedulable`` may be optax
    schedules; `jaxcons.constrain` evaluates them at its own step count through `at_step`.

    A subclass must define ``__call__`` or ``project``: one that defines neither would leave
    every parameter as it is, so building it is a ``TypeError`` naming the class.

    Outputs are checked: a projection that changes the parameter's shape or dtype, or a
    ``project`` that changes the structure of its state, is a ``ValueError`` naming the
    parameter. Any plain callable ``w -> w`` is accepted wherever a constraint is; subclass
    this class to get pytree calls, ``get_config`` / ``from_config`` and serialization.

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

    elementwise_bounds: tuple[Any, Any] | None = None
    tangent: ClassVar[Callable[..., jax.Array] | None] = None
    convex: bool | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "convex" not in cls.__dict__:
            cls.convex = None
        call = cls.__dict__.get("__call__")
        if call is not None:
            cls.__call__ = _leafwise(call)  # type: ignore[method-assign]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        del args, kwargs
        _require_hooks(cls)
        return super().__new__(cls)

    @_leafwise
    def __call__(self, w: jax.Array) -> jax.Array:
        return self.project(w, self.init(w))[0]

    def init(self, w: jax.Array) -> Any:
        """Returns the state `jaxcons.constrain` keeps for parameter ``w`` (default: none)."""
        del w
        return optax.EmptyState()

    @property
    def is_scheduled(self) -> bool:
        """Whether a hyper-parameter was given as a schedule (``MaxNorm(linear_schedule(...))``)."""
        return any(isinstance(v, Scheduled) for v in vars(self).values())

    def at_step(self, count: jax.typing.ArrayLike) -> Constraint:
        """This constraint with every scheduled hyper-parameter evaluated at step ``count``.

        `jaxcons.constrain` calls it with its own step count; an unscheduled constraint
        returns itself.

        Args:
          count: the step (an int32 scalar, traced or not).

        Returns:
          A constraint of the same class whose hyper-parameters are numbers (float32 scalars).

        Example:
          >>> import jax.numpy as jnp, optax, jaxcons
          >>> c = jaxcons.MaxNorm(optax.linear_schedule(4.0, 1.0, 10))
          >>> c.at_step(5)(jnp.array([[3.0], [4.0]]))
          Array([[1.5],
                 [2. ]], dtype=float32)
        """
        scheduled = {k: v for k, v in vars(self).items() if isinstance(v, Scheduled)}
        if not scheduled:
            return self
        out = copy.copy(self)
        count = jnp.asarray(count)
        for key, value in scheduled.items():
            setattr(out, key, value.at(count))
        return out

    def project(self, w: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Projects ``w`` inside `jaxcons.constrain`; returns ``(projected w, new state)``."""
        return self(w), state


def _missing_hook(cls: type, missing: str, base: str, what: str) -> TypeError:
    near = [n for n in ("call", "projection", "proj", "apply", "prox") if n in dir(cls)]
    hint = f" It defines {', '.join(map(repr, near))}: the hook is {missing}." if near else ""
    return TypeError(
        f"{cls.__name__} subclasses jaxcons.{base} but defines no {missing}, so it would "
        f"{what}.{hint}"
    )


def _require_hooks(cls: type) -> None:
    """Raises ``TypeError`` for a class whose objects would silently do nothing."""
    if issubclass(cls, StatefulConstraint):
        for hook in ("init", "project"):
            if getattr(cls, hook) is getattr(StatefulConstraint, hook):
                raise _missing_hook(
                    cls, f"{hook}()", "StatefulConstraint", "have no per-step projection"
                )
    elif issubclass(cls, Constraint):
        if cls.__call__ is Constraint.__call__ and cls.project is Constraint.project:
            raise _missing_hook(
                cls,
                "__call__(self, w) or project(self, w, state)",
                "Constraint",
                "leave every parameter unchanged (and jaxcons.violations would report 0)",
            )
    elif issubclass(cls, Regularizer) and cls.__call__ is Regularizer.__call__:
        raise _missing_hook(cls, "__call__(self, x)", "Regularizer", "add nothing to the loss")


class StatefulConstraint(Constraint):
    """A constraint that must carry state across training steps (e.g. power-iteration vectors).

    The same protocol as `Constraint`, with ``init`` and ``project`` required: building a
    subclass that does not define both is a ``TypeError`` naming the class and the hook.
    ``__call__(w)`` stays the accurate projection without state, used by
    `jaxcons.apply_constraints` and direct calls.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> class RunningMaxClip(jaxcons.StatefulConstraint):
      ...   # Clips to the largest absolute value seen at the first step.
      ...   def init(self, w):
      ...     return jnp.max(jnp.abs(w))
      ...   def project(self, w, bound):
      ...     return jnp.clip(w, -bound, bound), bound
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = jaxcons.constrain({"w": RunningMaxClip()})
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([5.0, 0.0])}, state, params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 2., -2.], dtype=float32)
    """

    def init(self, w: jax.Array) -> Any:
        """Returns the initial state (a pytree of arrays) for parameter ``w``."""
        raise NotImplementedError(f"{type(self).__name__} must implement init(w).")

    def project(self, w: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Projects ``w`` using and updating ``state``."""
        raise NotImplementedError(f"{type(self).__name__} must implement project(w, state).")


class FunctionConstraint(Constraint):
    """A plain callable ``w -> w`` used as a constraint (rules wrap callables in it).

    Equal to another wrapper of the same callable; its ``repr`` is the callable's.
    """

    def __init__(self, fn: Callable[[jax.Array], jax.Array]):
        self.fn = fn

    def __call__(self, w: jax.Array) -> jax.Array:
        return self.fn(w)

    def __repr__(self) -> str:
        return repr(self.fn)

    def _identity(self) -> Any:
        return self.fn


def _summed_over_leaves(fn: Callable[[Any, jax.Array], jax.Array]) -> Callable[[Any, Any], Any]:
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
    scalar (building a subclass that does not is a ``TypeError``, since it would add nothing).
    The base class makes every subclass's ``__call__`` accept a whole pytree too, returning the
    sum over its floating-point leaves.
    Any plain callable ``x -> scalar`` is accepted wherever a regularizer is; subclass this
    class to get pytree calls, ``get_config`` / ``from_config`` and serialization.

    Optional hooks used by the rule engine and the transforms:

    * ``check(shape, path)``: raise ``ValueError`` when the regularizer cannot act on a
      parameter of that shape (a rank or an axis it does not support). Called once per trace.
    * ``prox(x, step)``: the proximal operator of ``step * R`` for one array,

      .. math:: \\operatorname{prox}_{sR}(x) = \\arg\\min_z \\tfrac12 \\|z - x\\|^2 + s\\,R(z),

      returning an array of ``x``'s shape and dtype (checked); ``step`` may be a traced
      scalar. `jaxcons.proximal` needs it; ``None`` (the default) means there is no closed
      form, and `jaxcons.proximal` rejects the regularizer when it initialises.

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
            cls.__call__ = _summed_over_leaves(call)  # type: ignore[method-assign]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        del args, kwargs
        _require_hooks(cls)
        return super().__new__(cls)

    @_summed_over_leaves
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.zeros((), accumulation_dtype(x.dtype))
