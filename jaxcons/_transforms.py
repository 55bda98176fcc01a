"""`constrain` (an optax transform) and `apply_constraints` (the direct projection)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcons._constraint import StatefulConstraint
from jaxcons._paths import is_masked
from jaxcons._rules import Rules, RulesLike, build_rules

__all__ = [
    "ConstrainState",
    "apply_constraints",
    "as_constraint_rules",
    "constrain",
    "map_governed",
    "update_delta",
]


class ConstrainState(NamedTuple):
    """State of `constrain`.

    Attributes:
      constraint_states: ``{path: state}`` for every parameter governed by a stateful
        constraint (e.g. the power-iteration vector of `SpectralNorm`); empty otherwise.
      scratch: ``{path: buffer}``, a buffer of the parameter's shape and dtype for every
        parameter whose constraint is not elementwise, when `constrain`'s scratch is on
        (by default on CPU only); empty otherwise. It holds the last unprojected
        ``params + updates`` and is only there to give XLA donated memory to write that
        intermediate into: no result depends on its contents.
    """

    constraint_states: dict[str, Any]
    scratch: dict[str, jax.Array] = {}  # noqa: RUF012 (shared but never mutated)


def as_constraint_rules(rules: RulesLike | Rules, *, strict: bool | None = None) -> Rules:
    """Builds `Rules` whose values are constraints (names and configs are looked up)."""
    from jaxcons import constraints  # The registry module imports the classes.

    return build_rules(rules, coerce=constraints.get, strict=strict, kind="constraint")


def map_governed(
    rules: Rules,
    updates: optax.Updates,
    params: optax.Params | None,
    transform: str,
    fn: Callable[[str, Any, jax.Array, jax.Array], jax.Array],
) -> optax.Updates:
    """Replaces the update of every leaf ``rules`` govern with ``fn(path, value, p, u)``.

    The shared body of the transforms that act on ``params + updates`` (`constrain`,
    `jaxcons.regularize`, `jaxcons.proximal`): ``p`` and ``u`` are the leaf's parameter and
    update as arrays, ``value`` the governing rule's value; other updates pass through.

    Raises:
      ValueError: naming ``transform``, when ``params`` is missing.
    """
    if params is None:
        raise ValueError(
            f"jaxcons.{transform} needs the current params: call "
            "tx.update(updates, state, params) (optax.chain passes them on)."
        )
    resolution = rules.resolve(params)
    p_leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_masked)
    out = treedef.flatten_up_to(updates)
    for i, path, value in resolution.active():
        out[i] = fn(path, value, jnp.asarray(p_leaves[i]), jnp.asarray(out[i]))
    return jax.tree_util.tree_unflatten(treedef, out)


def update_delta(p: jax.Array, y: jax.Array, u_dtype: Any) -> jax.Array:
    """The update (in ``u_dtype``) that moves ``p`` to ``y`` under ``optax.apply_updates``.

    The difference is taken in the wider of the two dtypes, where it is usually exact, so bf16
    params with float32 updates land on ``y`` itself rather than on a bf16-rounded difference.
    """
    wide = jnp.promote_types(p.dtype, u_dtype)
    return (y.astype(wide) - p.astype(wide)).astype(u_dtype)


def _feasible_delta(c: Any, p: jax.Array, y: jax.Array, u_dtype: Any) -> jax.Array:
    """`update_delta`, corrected so that elementwise-box constraints land inside their box.

    ``optax.apply_updates`` computes ``p + t`` in the wider dtype and casts the sum back to
    ``p.dtype``, so ``p + (y - p)`` is ``y`` only up to rounding. Where that sum rounds out of
    the box, the difference taken in ``p``'s own dtype and moved one ulp back inside is used
    instead: in a single dtype the overshoot is at most half the spacing of ``t`` on the side
    it was rounded to, so from a feasible ``p`` one step lands inside. Where neither lands
    inside (only possible when ``p`` itself is far outside a narrow box), the one that lands
    closer to the box is kept.
    """
    t = update_delta(p, y, u_dtype)
    bounds = getattr(c, "elementwise_bounds", None)
    if bounds is None:
        return t
    lo, hi = bounds
    wide = jnp.promote_types(p.dtype, u_dtype)

    def lands(delta: jax.Array) -> jax.Array:  # What optax.apply_updates computes.
        return (p.astype(wide) + delta.astype(wide)).astype(p.dtype)

    def excess(z: jax.Array) -> jax.Array:  # How far outside the box (0 inside).
        out = jnp.zeros(z.shape, z.dtype)
        if hi is not None:
            out = jnp.maximum(out, z - jnp.asarray(hi, z.dtype))
        if lo is not None:
            out = jnp.maximum(out, jnp.asarray(lo, z.dtype) - z)
        return out

    fallback = y - p
    landed = lands(fallback)
    if hi is not None:
        down = jnp.nextafter(fallback, jnp.array(-jnp.inf, p.dtype))
        fallback = jnp.where(landed > hi, down, fallback)
    if lo is not None:
        up = jnp.nextafter(fallback, jnp.array(jnp.inf, p.dtype))
        fallback = jnp.where(landed < lo, up, fallback)
    better = excess(lands(fallback)) < excess(lands(t))
    return jnp.where(better, fallback.astype(u_dtype), t)


def constrain(
    rules: RulesLike | Rules, *, strict: bool | None = None, scratch: bool | None = None
) -> optax.GradientTransformation:
    """Projects parameters onto their constraints after each update.

    Place it last in `optax.chain`: ``update(updates, state, params)`` returns updates ``u'``
    such that ``optax.apply_updates(params, u')`` is the projection of ``params + updates``:

    .. math:: u' = P(p + u) - p

    Parameters no rule governs keep their updates untouched. Stateful constraints
    (`SpectralNorm`) keep their state in this transform's `ConstrainState`.

    Floating point: ``p + (P(x) - p)`` is not always bit-exactly ``P(x)``. Elementwise-box
    constraints (`NonNeg`, `Clip`) are corrected so that, from feasible ``params``, the applied
    parameters are exactly feasible; norm bounds (`MaxNorm`, `UnitNorm`, ...) may be exceeded
    by a few ulps. Use `apply_constraints` for an exact projection (and on initial weights).

    Speed and the scratch buffer: an elementwise constraint fuses into the kernel that
    ``optax.apply_updates`` runs, at no extra memory. A constraint that needs a reduction
    (the column norms of `MaxNorm`) reads ``x = p + u`` twice, once for the norms and once
    for the update, and ``p`` stays alive until the end, so XLA materialises ``x``: one
    parameter-sized temporary per constrained leaf. On GPU and TPU temporaries come from a
    memory pool and cost next to nothing. On XLA:CPU they are allocated, and page-faulted
    in, on every call: in a 16.8M-parameter MLP training step that costs about a third
    more time than plain Adam (see ``benchmarks/train_step.py``). With the scratch on, this
    transform keeps one buffer of the parameter's shape and dtype in its state for every
    such leaf and writes ``x`` into it, so a step that donates its optimizer state
    (``jax.jit(step, donate_argnums=...)``) reuses already-mapped memory instead, bringing
    the step to within a few percent of plain Adam. The price: the optimizer state holds
    one more copy of those parameters between steps (and in checkpoints), about what the
    temporary costs inside each step anyway; and the state's structure depends on the
    setting, so pass the same explicit ``scratch`` where a checkpoint moves between CPU and
    GPU. Without donation the scratch gains nothing.
    Computing the norms from ``p + u`` and returning ``s * (p + u) - p`` by hand leaves
    the temporary in place; only donated memory removes it.

    Args:
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
        Constraints may be `Constraint` objects, plain callables, names or config dicts.
      strict: raise if a rule matches no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.
      scratch: keep a scratch buffer for every parameter whose constraint does not declare
        ``elementwise_bounds`` (`NonNeg` and `Clip` need none; a plain elementwise callable
        gains nothing from one: pass ``False``). ``None`` (default): on when the parameters
        given to ``init`` live on CPU (traced ones: when ``jax.default_backend()`` is
        ``"cpu"``), off on GPU and TPU. ``True`` or ``False`` forces it.

    Returns:
      An `optax.GradientTransformation` whose state is a `ConstrainState`.

    Raises:
      ValueError: when built, for a ``scratch`` that is not ``True``, ``False`` or ``None``;
        at ``init``/``update`` when a rule matches nothing (``strict=True``) or a constraint
        cannot act on a parameter's shape; at ``update`` when ``params`` is missing.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcons
      >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}
      >>> tx = optax.chain(optax.sgd(1.0), jaxcons.constrain({"bias": jaxcons.NonNeg()}))
      >>> state = tx.init(params)
      >>> grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([1.0, -1.0])}
      >>> updates, state = tx.update(grads, state, params)
      >>> optax.apply_updates(params, updates)["bias"]
      Array([0., 1.], dtype=float32)
      >>> norms = jaxcons.constrain({"kernel": jaxcons.MaxNorm(1.0)}, scratch=True)
      >>> norms.init(params).scratch["kernel"].shape  # Forced on; CPU's default anyway.
      (2, 2)
    """
    if scratch is not None and not isinstance(scratch, bool):
        raise ValueError(f"scratch must be True, False or None, got {scratch!r}.")
    resolved_rules = as_constraint_rules(rules, strict=strict)

    def init_fn(params: optax.Params) -> ConstrainState:
        resolution = resolved_rules.resolve(params)
        leaves = jax.tree_util.tree_leaves(params, is_leaf=is_masked)
        active = list(resolution.active())
        states = {
            path: c.init(leaves[i]) for i, path, c in active if isinstance(c, StatefulConstraint)
        }
        use_scratch = scratch
        if use_scratch is None:
            use_scratch = _on_cpu(leaves[i] for i, _, _ in active)
        buffers = {}
        if use_scratch:
            buffers = {
                path: jnp.zeros_like(leaves[i])
                for i, path, c in active
                if getattr(c, "elementwise_bounds", None) is None
            }
        return ConstrainState(constraint_states=states, scratch=buffers)

    def update_fn(
        updates: optax.Updates, state: ConstrainState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ConstrainState]:
        new_states = dict(state.constraint_states)
        new_scratch = dict(state.scratch)

        def project(path: str, c: Any, p: jax.Array, u: jax.Array) -> jax.Array:
            x = (p + u).astype(p.dtype)
            if path in state.scratch:
                # Overwrites the whole buffer: XLA drops the old contents and writes x straight
                # into the (donated) scratch memory instead of a fresh temporary.
                x = jax.lax.dynamic_update_slice(state.scratch[path], x, (0,) * x.ndim)
                new_scratch[path] = x
            if isinstance(c, StatefulConstraint):
                y, new_states[path] = c.project(x, state.constraint_states[path])
            else:
                y = c(x)
            return _feasible_delta(c, p, y, u.dtype)

        out = map_governed(resolved_rules, updates, params, "constrain", project)
        return out, ConstrainState(constraint_states=new_states, scratch=new_scratch)

    return optax.GradientTransformation(init_fn, update_fn)


def _on_cpu(leaves: Any) -> bool:
    """Whether the given parameters live on CPU (traced ones: whether the default backend is)."""
    platforms = set()
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
            platforms.update(d.platform for d in leaf.devices())
        else:
            platforms.add(jax.default_backend())
    return platforms == {"cpu"}


def apply_constraints(
    params: optax.Params, rules: RulesLike | Rules, *, strict: bool | None = None
) -> optax.Params:
    """Applies constraints to ``params`` directly: the exact projection.

    Use it on initial weights, or after ``optax.apply_updates`` in a hand-written loop.
    Stateful constraints use their accurate stateless projection (`SpectralNorm` computes the
    exact largest singular value).

    Args:
      params: the parameter pytree.
      rules: ``{pattern: constraint}`` or ``[(pattern, constraint), ...]``; first match wins.
      strict: raise if a rule matches no floating-point parameter. ``None`` (default):
        ``True``, or the setting of a `Rules` object passed as ``rules``.

    Returns:
      A pytree like ``params`` with every governed leaf projected.

    Raises:
      ValueError: when a rule matches no floating-point parameter (strict), or a constraint
        cannot act on a parameter's shape (an ``axis`` out of range, naming the path).

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> params = {"kernel": jnp.array([[3.0], [4.0]])}
      >>> jaxcons.apply_constraints(params, {"kernel": jaxcons.MaxNorm(1.0)})["kernel"]
      Array([[0.6],
             [0.8]], dtype=float32)
    """
    resolution = as_constraint_rules(rules, strict=strict).resolve(params)
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_masked)
    for i, _, c in resolution.active():
        leaves[i] = c(leaves[i])
    return jax.tree_util.tree_unflatten(treedef, leaves)
