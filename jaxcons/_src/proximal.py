"""`proximal`: each regularizer's proximal operator applied after the optimizer's step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from jaxcons._src.base import Constraint
from jaxcons._src.constrain import _feasible_delta, _Label, _traced_once
from jaxcons._src.registry import CONSTRAINTS, REGULARIZERS
from jaxcons._src.rules import Rules, RulesLike, build_rules
from jaxcons._src.updates import call_leaf, check_like, landing, map_governed, update_delta
from jaxcons._src.validation import factor


class ProximalState(NamedTuple):
    """State of `proximal`.

    Attributes:
      count: the number of updates applied so far (int32); the learning-rate schedule is
        evaluated at it, as `optax.scale_by_schedule` does, so the same schedule given to
        the optimizer and to `proximal` gives matching step sizes.
    """

    count: jax.Array


def _check_learning_rate(learning_rate: Any) -> Any:
    """The schedule, or the step size as a Python float; a clear error for anything else."""
    if callable(learning_rate):
        return learning_rate
    try:
        return factor("learning_rate", learning_rate, positive=True)
    except ValueError:
        raise ValueError(
            f"learning_rate must be a finite number > 0 or an optax schedule "
            f"(a callable count -> step size), got {learning_rate!r}."
        ) from None


def _prox_delta(r: Any, label: _Label, p: jax.Array, u: jax.Array, step: Any) -> jax.Array:
    """``prox(p + u) - p`` for one parameter under a regularizer, its output checked."""
    x = landing(p, u)
    y = check_like(f"The proximal operator of {r!r}", label.path, x, r.prox(x, step))
    return update_delta(p, y, u.dtype)


# A fixed step size is static (it enters the maths as the Python float it is); a schedule's
# value is traced.
_prox_fixed_step = jax.jit(_prox_delta, static_argnums=(0, 1, 4))


_prox_scheduled_step = jax.jit(_prox_delta, static_argnums=(0, 1))


def _prox_operand(identifier: Any) -> Any:
    """A regularizer, or a constraint: the indicator of its set, whose proximal operator is
    the projection. Names and configs are looked up in whichever registry knows them."""
    if isinstance(identifier, Constraint) or CONSTRAINTS.knows(identifier):
        return CONSTRAINTS.get(identifier)
    return REGULARIZERS.get(identifier)


def _require_prox(path: str, r: Any) -> None:
    if isinstance(r, Constraint):
        return
    if not callable(getattr(r, "prox", None)):
        raise ValueError(
            f"jaxcons.proximal: the regularizer {r!r} for parameter {path!r} has no "
            f"proximal operator (prox). Put it in jaxcons.regularize or jaxcons.penalty "
            f"instead, or exempt the parameter from these rules."
        )


def proximal(
    rules: RulesLike | Rules,
    learning_rate: float | Callable[[jax.Array], jax.typing.ArrayLike],
    *,
    strict: bool | None = None,
) -> optax.GradientTransformation:
    """Applies each regularizer's proximal operator after the optimizer's step.

    Place it last in `optax.chain`: ``update(updates, state, params)`` returns updates ``u'``
    such that ``optax.apply_updates(params, u')`` is the proximal point of ``params + updates``:

    .. math:: u' = \\operatorname{prox}_{\\eta R}(p + u) - p, \\qquad
       \\operatorname{prox}_{\\eta R}(x) = \\arg\\min_z \\tfrac12 \\|z - x\\|^2 + \\eta R(z),

    with ``eta = learning_rate`` (or ``learning_rate(count)`` for a schedule). Closed forms:
    `L1` soft-thresholds by ``eta * l1`` (exact zeros); `L2` shrinks by
    ``1 / (1 + 2 * eta * l2)``; `L1L2` does both (the elastic net); `GroupLasso` soft-thresholds
    whole groups by ``eta * factor`` (whole columns exactly zero); `NuclearNorm`
    soft-thresholds singular values (exactly low rank). A zero produced here lands
    exactly (``p + (0 - p) == 0`` in IEEE arithmetic), as long as the updates have the
    parameters' dtype.

    The built-in operands are traced once per operand, shape, dtypes and step size, not once
    per parameter, so a tree of thousands of small parameters compiles as fast as a
    hand-written proximal step (``benchmarks/compile_time.py``).

    A constraint is accepted too: the proximal operator of the indicator of its set (0 inside,
    infinity outside) is the projection onto the set, whatever ``eta``, so
    ``proximal({"**/kernel": L1(1e-3), "**/bias": NonNeg()}, lr)`` soft-thresholds the kernels
    and projects the biases in one transform. It uses the constraint's exact ``__call__`` (an
    SVD for `Orthogonal`, not its fast per-step method) and, like `jaxcons.constrain`, lands
    exactly inside `NonNeg`'s and `Clip`'s boxes.

    When to prefer it to `penalty`/`regularize`: a (sub)gradient step on ``|w|`` never lands
    on zero (weights oscillate around it with amplitude ``~ eta * l1``), so sparsity from a
    penalty in the loss is only approximate; the proximal step gives exact zeros that can be
    pruned, and it is stable for any step size. With `optax.sgd` using the same learning rate
    this is proximal gradient descent (ISTA, Beck and Teboulle 2009).

    With adaptive optimizers (Adam, RMSProp) the gradient step is rescaled per coordinate but
    the proximal step uses the scalar ``eta``: the threshold is ``eta * l1`` in parameter
    units per step, whatever the gradient's scale. This is the "decoupled" form (for `L2`,
    ``x / (1 + 2 eta l2) ~ x (1 - 2 eta l2)``: AdamW's decay with ``weight_decay = 2 * l2``,
    Loshchilov and Hutter 2019), so the right factors differ from those of a penalty in the
    loss; tune them on this scale. Pass the optimizer's own learning rate or schedule.

    References:
      Parikh and Boyd, "Proximal Algorithms", 2014. Beck and Teboulle, "A fast iterative
      shrinkage-thresholding algorithm for linear inverse problems", SIAM J. Imaging Sci.,
      2009. Loshchilov and Hutter, "Decoupled weight decay regularization", ICLR 2019.

    Args:
      rules: ``{pattern: regularizer or constraint}`` or ``[(pattern, value), ...]``; first
        match wins, ``None`` exempts. Every governed regularizer needs a ``prox`` method;
        constraints (objects, names or configs) are projected.
      learning_rate: the step size ``eta`` (a finite float > 0) or an optax schedule
        ``count -> eta``.
      strict: raise if a rule matches no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      An `optax.GradientTransformation` whose state is a `ProximalState`.

    Raises:
      ValueError: when built, for a bad ``learning_rate``; at ``init``/``update`` when a rule
        matches nothing (``strict=True``), a regularizer cannot act on a parameter's shape or
        has no proximal operator (naming the parameter's path); at ``update`` when ``params``
        is missing.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> params = {"w": jnp.array([0.05, -0.5, 2.0])}
      >>> tx = optax.chain(optax.sgd(0.1), jaxcons.proximal({"w": jaxcons.L1(1.0)}, 0.1))
      >>> updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 0. , -0.4,  1.9], dtype=float32)
    """
    learning_rate = _check_learning_rate(learning_rate)
    resolved_rules = build_rules(rules, coerce=_prox_operand, strict=strict, kind="regularizer")

    def init_fn(params: optax.Params) -> ProximalState:
        for _, path, r in resolved_rules.resolve(params).active():
            _require_prox(path, r)
        return ProximalState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates, state: ProximalState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ProximalState]:
        step = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def prox_step(path: str, r: Any, p: jax.Array, u: jax.Array) -> jax.Array:
            _require_prox(path, r)
            if isinstance(r, Constraint) and type(r).traced_once and not r.is_scheduled:
                return _traced_once(r, _Label(path), p, u)
            if getattr(type(r), "traced_once", False):
                once = _prox_scheduled_step if callable(learning_rate) else _prox_fixed_step
                return once(r, _Label(path), p, u, step)
            if isinstance(r, Constraint):
                x = landing(p, u)
                return _feasible_delta(r, p, call_leaf(r, path, x), u.dtype)
            return _prox_delta(r, _Label(path), p, u, step)

        out = map_governed(resolved_rules, updates, params, "proximal", prox_step)
        # safe_int32_increment returns an array for an array (its stub says ArrayLike).
        count = cast(jax.Array, optax.safe_int32_increment(state.count))
        return out, ProximalState(count=count)

    # optax types a transform's state as any OptState; this update takes the ProximalState
    # its init makes.
    return optax.GradientTransformation(init_fn, cast(optax.TransformUpdateFn, update_fn))
