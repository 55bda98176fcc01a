"""`constrain` (an optax transform) and `apply_constraints` (the direct projection)."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcons._src.base import Constraint, FunctionConstraint
from jaxcons._src.declarations import DeclaredRules, required_rules
from jaxcons._src.matrix_stacks import InOrder
from jaxcons._src.numerics import inward_bounds, wider_float
from jaxcons._src.registry import CONSTRAINTS
from jaxcons._src.rules import Rules, RulesLike, build_rules
from jaxcons._src.scratch import new_buffers, write_scratch
from jaxcons._src.tree import is_masked
from jaxcons._src.updates import (
    call_leaf,
    check_state_fits,
    landing,
    map_governed,
    project_leaf,
    require_params,
    update_delta,
)
from jaxcons._src.validation import optional_bool


class ConstrainState(NamedTuple):
    """State of `constrain`.

    Its structure depends only on the rules and the parameters, never on the backend: a
    checkpoint written on GPU restores on CPU and vice versa, and a rule set without stateful
    constraints holds no arrays at all.

    Attributes:
      constraint_states: ``{path: state}`` for every parameter whose constraint keeps state
        (e.g. the power-iteration vector of `SpectralNorm`); constraints whose ``init``
        returns `optax.EmptyState` have no entry.
      scratch: ``{path: buffer}`` with ``constrain(..., scratch=True)`` (an opt-in CPU speed
        option): a buffer of the parameter's shape and dtype for every parameter whose
        constraint is not elementwise, holding the last unprojected ``params + updates``;
        empty otherwise. No result depends on its contents.
      count: the number of updates so far (int32), where a constraint has a hyper-parameter
        given as a schedule (evaluated at it, as `optax.scale_by_schedule` does); ``None``
        otherwise.
    """

    constraint_states: dict[str, Any]
    scratch: dict[str, jax.Array] = {}  # noqa: RUF012 (shared but never mutated)
    count: jax.Array | None = None


def _as_constraint(identifier: Any) -> Constraint:
    """`jaxcons.constraints.get`, with a plain callable wrapped in a `Constraint`."""
    c = CONSTRAINTS.get(identifier)
    return c if isinstance(c, Constraint) else FunctionConstraint(c)


def as_constraint_rules(rules: RulesLike | Rules, *, strict: bool | None = None) -> Rules:
    """Builds `Rules` whose values are `Constraint` objects (names, configs and plain
    callables are turned into constraints; a regularizer is a ``TypeError``)."""
    return build_rules(rules, coerce=_as_constraint, strict=strict, kind="constraint")


def _needs_no_correction(c: Constraint, p_dtype: Any, u_dtype: Any) -> bool:
    """Whether ``optax.apply_updates`` provably lands ``p + update_delta(p, y)`` in the box.

    True for boxes whose every bound is 0 (`NonNeg`, ``Clip(0, 0)``, for a ``y`` in the box),
    when ``u_dtype`` is the wider dtype. Proof for a
    lower bound 0 (an upper one is symmetric): ``y >= 0``, so in exact arithmetic
    ``y - p >= -p``; ``-p`` is representable in ``u_dtype`` (which holds every value of
    ``p.dtype``) and rounding is monotone, so ``t = fl(y - p) >= -p``, i.e. ``p + t >= 0``
    exactly, and rounding that sum to ``u_dtype`` and then to ``p.dtype`` (monotone, 0 fixed)
    keeps it ``>= 0``. This holds for any ``p``, feasible or not, and where subnormals are
    flushed to zero (still monotone, 0 still fixed); a NaN ``y`` keeps ``t`` either way. So
    the correction would never change ``t``.
    """
    bounds = c.elementwise_bounds
    assert bounds is not None  # Only asked about boxes (see _feasible_delta).
    if any(b is not None and np.any(np.asarray(b) != 0) for b in bounds):
        return False
    return wider_float(p_dtype, u_dtype) == np.dtype(u_dtype)


def _feasible_delta(c: Constraint, p: jax.Array, y: jax.Array, u_dtype: Any) -> jax.Array:
    """`update_delta`, corrected so that elementwise-box constraints land inside their box.

    ``optax.apply_updates`` computes ``p + t`` in the wider dtype and casts the sum back to
    ``p.dtype``, so ``p + (y - p)`` is ``y`` only up to rounding. Where that sum rounds out of
    the box, ``t`` moved one step of its own dtype back toward the inside is used instead.
    From ``y`` in the box that step always lands on the violated bound's side of it: ``t``
    rounded ``y - p`` to the nearest value of ``u_dtype`` (through the wider dtype), so no
    value of ``u_dtype`` lies strictly between ``t`` and ``y - p``, the next one toward the
    inside is at least as far as ``y - p``, and the roundings of ``apply_updates`` are
    monotone. This holds whichever dtype is wider (also for updates narrower than the
    params). Where the step overshoots the other bound (a box narrower than one step of
    ``u_dtype``) or ``p`` is far outside the box, the one of ``t`` and the step that lands
    closer to the box is kept. Boxes whose bounds are all 0 need no correction when the
    updates have the wider dtype (`_needs_no_correction`), and get none.
    """
    t = update_delta(p, y, u_dtype)
    if c.elementwise_bounds is None or _needs_no_correction(c, p.dtype, u_dtype):
        return t
    lo, hi = inward_bounds(*c.elementwise_bounds, p.dtype, p.ndim)

    def lands(delta: jax.Array) -> jax.Array:  # What optax.apply_updates computes.
        return landing(p, delta)

    def excess(z: jax.Array) -> jax.Array:  # How far outside the box (0 inside).
        out = jnp.zeros(z.shape, z.dtype)
        if hi is not None:
            out = jnp.maximum(out, z - hi)
        if lo is not None:
            out = jnp.maximum(out, lo - z)
        return out

    landed = lands(t)
    step = t
    if hi is not None:
        down = jnp.nextafter(t, jnp.array(-jnp.inf, t.dtype))
        step = jnp.where(landed > hi, down, step)
    if lo is not None:
        up = jnp.nextafter(t, jnp.array(jnp.inf, t.dtype))
        step = jnp.where(landed < lo, up, step)
    return jnp.where(excess(lands(step)) < excess(landed), step, t)


class _Label:
    """A parameter's path as a static argument of `jax.jit` that never causes a retrace.

    All labels are equal, so parameters that differ only in their path share one trace. The
    path is read only for error messages, while that trace runs: for the first parameter with
    that constraint, shape and dtypes, the one a check would have stopped at anyway (later
    ones have the same shapes and dtypes, so their checks pass or fail alike).
    """

    def __init__(self, path: str):
        self.path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Label)

    def __hash__(self) -> int:
        return 0


def _stateless_delta(c: Constraint, label: _Label, p: jax.Array, u: jax.Array) -> jax.Array:
    """``P(p + u) - p`` for one parameter under a stateless constraint, its output checked."""
    x = landing(p, u)
    y, _ = project_leaf(c, label.path, x, optax.EmptyState())
    return _feasible_delta(c, p, y, u.dtype)


# One cache for every transform: equal constraints share their traces (and, called outside
# `jax.jit`, their compiled programs), however many times `constrain` is called.
_traced_once = jax.jit(_stateless_delta, static_argnums=(0, 1))


def constrain(
    rules: RulesLike | Rules | None = None,
    *,
    prefer: str | None = None,
    strict: bool | None = None,
    scratch: bool | None = None,
) -> optax.GradientTransformation:
    """Projects parameters onto their constraints after each update.

    Place it last in `optax.chain` (`jaxcons.chain` does): ``update(updates, state, params)``
    returns updates ``u'`` such that ``optax.apply_updates(params, u')`` is the projection of
    ``params + updates``:

    .. math:: u' = P(p + u) - p

    Constraints declared where parameters are made (`jaxcons.flax.with_constraints` boxes,
    ``nnx.Param(..., constraint=...)`` / ``kernel_metadata``) are honoured whenever ``init``
    sees them: ``nnx.Optimizer``, flax's own ``TrainState`` and `jaxcons.flax.TrainState`
    all call it on the declaring tree. They combine with ``rules`` as in
    `jaxcons.flax.constraint_rules` (an equal explicit rule is no conflict, a different one
    is an error unless ``prefer`` says which wins); ``constrain()`` with no rules means
    "the declared constraints only". The rules are fixed at the first ``init`` (``update``
    of ``nnx.Optimizer`` sees plain arrays, which declare nothing).

    Parameters no rule governs keep their updates untouched. Each governed parameter goes
    through its constraint's ``project(x, state)``; constraints with state (`SpectralNorm`)
    keep it in this transform's `ConstrainState`. Every projected leaf is checked to keep
    its parameter's shape and dtype.

    Floating point: ``p + (P(x) - p)`` is not always bit-exactly ``P(x)``. Elementwise-box
    constraints (`NonNeg`, `Clip`) are corrected so that, from feasible ``params``, the applied
    parameters are exactly feasible; norm bounds (`MaxNorm`, `UnitNorm`, ...) may be exceeded
    by a few ulps. Use `apply_constraints` for an exact projection (and on initial weights).

    Speed: an elementwise constraint fuses into the kernel that ``optax.apply_updates`` runs.
    A constraint with a reduction (the column norms of `MaxNorm`) makes XLA keep
    ``x = p + u`` in a parameter-sized temporary; on GPU and TPU that costs next to nothing,
    on CPU ``scratch=True`` turns it into reused, donated memory (see ``jaxcons._src.scratch`` and
    ``benchmarks/train_step.py``) at the price of a state that holds one more copy of those
    parameters and whose structure follows the setting. The built-in stateless constraints
    are traced once per constraint, shape and dtypes rather than once per parameter, so a
    tree of thousands of small parameters compiles about as fast as with a hand-written
    projection (``benchmarks/compile_time.py``).

    Args:
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
        Constraints may be `Constraint` objects, plain callables, names or config dicts.
        ``None`` (or empty): the declared constraints only.
      prefer: where a declared constraint and an explicit rule differ: ``None`` (an error),
        ``"declared"`` or ``"explicit"``.
      strict: raise if a rule acts on no floating-point parameter (it matches nothing, or
        every parameter it matches is claimed by an earlier rule). ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.
      scratch: keep a scratch buffer in the state for every parameter whose constraint does
        not declare ``elementwise_bounds``: ``False`` or ``None`` (default, off: the state's
        structure is the same on every backend) or ``True`` (a CPU speed option for steps
        that donate their optimizer state).

    Returns:
      An `optax.GradientTransformation` whose state is a `ConstrainState`.

    Raises:
      ValueError: when built, for a ``scratch`` that is not ``True``, ``False`` or ``None``;
        at ``init`` when there are no rules and nothing is declared, or a declaration and an
        explicit rule conflict; at ``init``/``update`` when a rule acts on nothing
        (``strict=True``) or a constraint
        cannot act on a parameter's shape; at ``update`` when ``params`` is missing, the
        updates are not structured like them, or a constraint's output has the wrong shape
        or dtype.
      TypeError: when built, for a regularizer given as a constraint.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}
      >>> tx = optax.chain(optax.sgd(1.0), jaxcons.constrain({"bias": jaxcons.NonNeg()}))
      >>> state = tx.init(params)
      >>> grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([1.0, -1.0])}
      >>> updates, state = tx.update(grads, state, params)
      >>> optax.apply_updates(params, updates)["bias"]
      Array([0., 1.], dtype=float32)
      >>> state[1]
      ConstrainState(constraint_states={}, scratch={}, count=None)
    """
    return _constrain(rules, prefer=prefer, strict=strict, scratch=scratch, optional=False)


def _constrain(
    rules: RulesLike | Rules | None,
    *,
    prefer: str | None,
    strict: bool | None,
    scratch: bool | None,
    optional: bool,
) -> optax.GradientTransformation:
    """`constrain`; with ``optional``, finding nothing to govern is no error (`jaxcons.chain`
    always adds this transform, so that declared constraints are never lost)."""
    use_scratch = bool(optional_bool("scratch", scratch))
    explicit = None if rules is None else as_constraint_rules(rules, strict=strict)
    governing = DeclaredRules(
        explicit, prefer, "constraint", as_constraint_rules, "constrain", optional
    )

    def init_fn(params: optax.Params) -> ConstrainState:
        resolved_rules = governing.for_tree(params, again=True)
        if resolved_rules is None:
            return ConstrainState(constraint_states={}, scratch={})
        resolution = resolved_rules.resolve(params)
        leaves = jax.tree_util.tree_leaves(params, is_leaf=is_masked)
        active = list(resolution.active())
        states = {}
        for i, path, c in active:
            try:
                s = c.init(jnp.asarray(leaves[i]))
            except ValueError as e:  # The check knows the shape; the path is known here.
                raise ValueError(f"jaxcons.constrain, parameter {path!r}: {e}") from e
            if not isinstance(s, optax.EmptyState):
                states[path] = s
        buffers = new_buffers(active, leaves) if use_scratch else {}
        scheduled = any(c.is_scheduled for _, _, c in active)
        count = jnp.zeros([], jnp.int32) if scheduled else None
        return ConstrainState(constraint_states=states, scratch=buffers, count=count)

    def update_fn(
        updates: optax.Updates, state: ConstrainState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ConstrainState]:
        resolved_rules = governing.for_tree(require_params(params, "constrain"), again=False)
        if resolved_rules is None:
            return updates, state
        new_states = dict(state.constraint_states)
        new_scratch = dict(state.scratch)

        def project(path: str, c: Constraint, p: jax.Array, u: jax.Array) -> jax.Array:
            scheduled = c.is_scheduled
            if scheduled:  # Its values at this step are traced: no shared trace for it.
                c = c.at_step(_count(state, path, c))
            stateful = path in state.constraint_states or path in state.scratch
            if type(c).traced_once and not stateful and not scheduled:
                return _traced_once(c, _Label(path), p, u)
            x = landing(p, u)
            if path in state.scratch:
                x = new_scratch[path] = write_scratch(state.scratch[path], x)
            leaf_state = state.constraint_states.get(path, optax.EmptyState())
            if path in state.constraint_states:
                check_state_fits(c, path, p, leaf_state)
            y, leaf_state = project_leaf(c, path, x, leaf_state)
            if path in state.constraint_states:
                new_states[path] = leaf_state
            return _feasible_delta(c, p, y, u.dtype)

        out = map_governed(resolved_rules, updates, params, "constrain", project)
        # safe_int32_increment returns an array for an array (its stub says ArrayLike).
        count = (
            None
            if state.count is None
            else cast(jax.Array, optax.safe_int32_increment(state.count))
        )
        return out, ConstrainState(new_states, new_scratch, count)

    # optax types states as OptState, an array tree: a ConstrainState (whose count may be None)
    # is a pytree but not one of those, and update takes only the state its init makes.
    return optax.GradientTransformation(
        cast(optax.TransformInitFn, init_fn), cast(optax.TransformUpdateFn, update_fn)
    )


def _count(state: ConstrainState, path: str, c: Constraint) -> jax.Array:
    if state.count is None:
        raise ValueError(
            f"The constraint {c!r} for parameter {path!r} has a scheduled hyper-parameter, but "
            "this ConstrainState has no step count: it was made by an init that saw no "
            "scheduled constraint (initialise the transform on the parameters it updates)."
        )
    return state.count


def _direct_rules(
    params: optax.Params,
    rules: RulesLike | Rules | None,
    prefer: str | None,
    strict: bool | None,
    function: str,
) -> Rules:
    explicit = None if rules is None else as_constraint_rules(rules, strict=strict)
    return required_rules(params, explicit, prefer, "constraint", as_constraint_rules, function)


def apply_constraints(
    params: optax.Params,
    rules: RulesLike | Rules | None = None,
    *,
    prefer: str | None = None,
    strict: bool | None = None,
) -> optax.Params:
    """Applies constraints to ``params`` directly: the exact projection.

    Use it on initial weights, or after ``optax.apply_updates`` in a hand-written loop.
    Every constraint uses its exact ``__call__`` (`SpectralNorm` computes the exact largest
    singular value), checked to keep each parameter's shape and dtype.

    Args:
      params: the parameter pytree (declarations on boxed linen params or nnx variables are
        honoured, as in `constrain`).
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
        ``None``: the declared constraints only.
      prefer: where a declaration and an explicit rule differ, as in `constrain`.
      strict: raise if a rule acts on no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      A pytree like ``params`` with every governed leaf projected.

    Raises:
      ValueError: when a rule acts on no floating-point parameter (strict), a constraint
        cannot act on a parameter's shape (an ``axis`` out of range, naming the path), or a
        constraint returns an array of another shape or dtype.
      TypeError: for a regularizer given as a constraint.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> params = {"kernel": jnp.array([[3.0], [4.0]])}
      >>> jaxcons.apply_constraints(params, {"kernel": jaxcons.MaxNorm(1.0)})["kernel"]
      Array([[0.6],
             [0.8]], dtype=float32)
    """
    resolution = _direct_rules(params, rules, prefer, strict, "apply_constraints").resolve(params)
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_masked)
    order = InOrder()  # Stacked parameters one after another.
    for i, path, c in resolution.active():
        (w,) = order.wait(c, jnp.asarray(leaves[i]))
        leaves[i] = order.done(c, call_leaf(c, path, w))
    return jax.tree_util.tree_unflatten(treedef, leaves)
