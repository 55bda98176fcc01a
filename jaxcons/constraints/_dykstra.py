"""Dykstra's alternating projections onto an intersection of convex sets, stopped on a residual:
the general method of `Intersection` where no closed form applies."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcons._src.numerics import accumulation_dtype


def dykstra(
    w: jax.Array,
    projections: Sequence[Callable[[jax.Array], jax.Array]],
    n_iter: int,
    tol: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Dykstra's alternating projections onto the intersection of convex sets.

    With ``x = w`` and one correction ``p_i = 0`` per set, each sweep runs, for
    ``i = 1 ... k``:

    .. math:: y = P_i(x + p_i), \\quad p_i \\leftarrow x + p_i - y, \\quad x \\leftarrow y

    ``x`` converges to the projection of ``w`` onto the intersection (Boyle and Dykstra,
    1986), not merely to some point of it as plain alternating projections do. The residual
    of a sweep is ``r = max(max_i |P_i(x) - x|, max_i |y_i - x_i|) / max(1, max |x|)``: every
    member's violation at the end of the sweep, and the largest move of any projection within
    it (the end point alone can come back to where the sweep started while the corrections
    still change; the last member holds by construction, so its violation is not
    recomputed). Sweeps stop once ``r <= tol``, or after ``n_iter`` of them (a cap):
    a `jax.lax.while_loop`. Its derivative is that of the sweeps run, computed (only under
    differentiation) by the same sweeps as a `jax.lax.fori_loop` of ``n_iter`` steps that
    freeze once converged, so that reverse mode works too (a ``while_loop`` has none); that
    costs ``n_iter`` sweeps. It runs in the accumulation dtype (bf16/f16 in float32); the
    result is cast back and projected once more by the last set's projection in ``w``'s
    dtype, so that it lies in the last set after rounding too (a no-op for float32 and
    wider). A ``w`` inside every set takes no sweep and comes back bit for bit.

    Returns:
      ``(x, residual, sweeps)``: the result, its residual ``r`` (float32; for a narrow dtype,
      measured on the rounded result too), and the number of sweeps run (int32; ``n_iter``
      when the cap stopped it short of ``tol``).
    """
    w = jnp.asarray(w)
    x0 = w.astype(accumulation_dtype(w.dtype))

    def relative(worst: jax.Array, x: jax.Array) -> jax.Array:
        scale = jnp.maximum(jnp.max(jnp.abs(x), initial=0.0), 1.0)
        return (worst / scale).astype(jnp.float32)

    def violation(x: jax.Array, members: Sequence[Callable[[jax.Array], jax.Array]]) -> jax.Array:
        return functools.reduce(
            jnp.maximum,
            [jnp.max(jnp.abs(p(x) - x), initial=0.0) for p in members],
            jnp.zeros((), x.dtype),
        )

    def sweep(carry: Any) -> Any:
        x, corrections, _, count = carry
        moved = jnp.zeros((), x.dtype)
        new = []
        for project, p in zip(projections, corrections, strict=True):
            y = project(x + p)
            moved = jnp.maximum(moved, jnp.max(jnp.abs(y - x), initial=0.0))
            new.append(x + p - y)
            x = y
        # x is the last member's projection: only the others can be violated.
        worst = jnp.maximum(moved, violation(x, projections[:-1]))
        return x, tuple(new), relative(worst, x), count + 1

    def running(carry: Any) -> jax.Array:
        return (carry[2] > tol) & (carry[3] < n_iter)

    def frozen(_: Any, carry: Any) -> Any:
        # A sweep that keeps the carry once converged: what the derivative differentiates.
        keep = functools.partial(jnp.where, carry[2] <= tol)
        return jax.tree_util.tree_map(keep, carry, sweep(carry))

    zeros = tuple(jnp.zeros_like(x0) for _ in projections)
    start = (x0, zeros, relative(violation(x0, projections), x0), jnp.zeros((), jnp.int32))

    @jax.custom_jvp
    def run(start: Any) -> Any:
        return jax.lax.while_loop(running, sweep, start)

    @run.defjvp
    def _(primals: Any, tangents: Any) -> Any:
        # A while_loop has no reverse mode; the same sweeps as a fori_loop of n_iter steps that
        # freeze once converged have one (transposable), and the same values.
        return jax.jvp(lambda c: jax.lax.fori_loop(0, n_iter, frozen, c), primals, tangents)

    x, _, r, count = run(start)
    out = jnp.where(count == 0, w, projections[-1](x.astype(w.dtype)))
    if out.dtype != x0.dtype:
        # Rounding to a narrow dtype can move the result out of the other members by up to its
        # eps, relative: the residual reports what the caller gets.
        rounded = out.astype(x0.dtype)
        r = jnp.maximum(r, relative(violation(rounded, projections[:-1]), rounded))
    return out, r, count
