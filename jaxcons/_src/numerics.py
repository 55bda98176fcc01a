"""Norms that stay finite at zero, and the dtype they accumulate in."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def accumulation_dtype(dtype: Any, *others: Any) -> np.dtype:
    """The dtype norms and penalties are computed in: ``dtype`` for floats of >= 32 bits,
    float32 otherwise (bfloat16 and float16 parameters are never summed in their own dtype).
    With several dtypes (a parameter and its update), the widest of their results."""
    if others:
        return max((accumulation_dtype(d) for d in (dtype, *others)), key=lambda d: d.itemsize)
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits >= 32:
        return dtype
    return np.dtype(jnp.float32)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def safe_norm(x: jax.Array, axes: Any) -> jax.Array:
    """Euclidean norms of ``x`` over ``axes`` (kept as size-1 dimensions).

    The value is plain ``sqrt(sum(x**2))``, exactly 0 for zero vectors; the derivative is
    the norm's own, ``<x, dx> / |x|``, and 0 (not NaN) at a zero vector, by a custom JVP rule
    rather than the "double where" of guarded arguments. So the forward pass is one reduction
    and one ``sqrt`` that XLA fuses into a single kernel whose only output is the norms: on a
    tree of thousands of small parameters that is fewer kernels and buffers to compile.
    A NaN in a vector gives a NaN norm (nothing is hidden). ``axes`` must be hashable (a
    tuple of ints, or ``None``).
    """
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


@safe_norm.defjvp
def _safe_norm_jvp(
    axes: Any, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    n = safe_norm(x, axes)
    inner = jnp.sum(x * dx, axis=axes, keepdims=True)
    return n, jnp.where(n > 0, inner / jnp.where(n > 0, n, 1), 0)


def inward_bounds(
    lower: float | np.ndarray | None,
    upper: float | np.ndarray | None,
    dtype: Any,
    ndim: int = 0,
    where: str = "the array",
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The box ``[lower, upper]`` as arrays of ``dtype``, rounded inward for narrow floats.

    Each bound is ``None`` (no bound on that side), a scalar or an array (per-element bounds).
    A bound entry that the dtype cannot represent is rounded towards the inside of the box
    (``0.3`` becomes the bf16, or float32, just below it), so a clipped value never lies
    outside the box in exact arithmetic (``jnp.clip`` rounds to nearest, which can land half
    an ulp outside). An array bound gets leading size-1 axes up to rank ``ndim`` (the
    parameter's), so it broadcasts against the parameter without rank promotion.

    Raises:
      ValueError: when the box of some element holds no value of ``dtype`` (it lies strictly
        between two consecutive values, as ``[2.4397, 2.4497]`` does in bfloat16), naming
        ``where``, the element, its bounds and the dtype: no projection onto it exists.
    """
    dtype = np.dtype(dtype)

    def inward(bound: np.ndarray, toward: float) -> np.ndarray:
        value = bound.astype(dtype)
        outside = (value.astype(np.float64) - bound) * toward < 0
        return np.asarray(np.where(outside, np.nextafter(value, toward * np.inf), value), dtype)

    def cast(bound: float | np.ndarray | None, toward: float) -> np.ndarray | None:
        if bound is None:
            return None
        exact = np.asarray(bound, np.float64)
        value = inward(exact, toward)
        if value.ndim:
            value = value.reshape((1,) * (ndim - value.ndim) + value.shape)
        return value

    if lower is not None and upper is not None:
        lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        empty = inward(lo, 1.0) > inward(hi, -1.0)
        if np.any(empty):
            index = np.unravel_index(int(np.argmax(empty)), empty.shape)
            a, b = np.broadcast_to(lo, empty.shape)[index], np.broadcast_to(hi, empty.shape)[index]
            below = np.asarray(a, np.float64).astype(dtype)
            if float(below) > a:
                below = np.nextafter(below, np.asarray(-np.inf, dtype))
            above = np.nextafter(below, np.asarray(np.inf, dtype))
            element = tuple(int(i) for i in index)
            raise ValueError(
                f"The box [{float(a)!r}, {float(b)!r}] of element {element} of the bounds "
                f"holds no {dtype} value (it lies between the consecutive {dtype} values "
                f"{float(below)!r} and {float(above)!r}), so {where} cannot be projected onto "
                f"it: widen the box to hold a {dtype} value, or use a wider dtype."
            )
    return cast(lower, 1.0), cast(upper, -1.0)


def wider_float(a: Any, b: Any) -> np.dtype:
    """The float dtype ``a + b`` computes in under standard promotion, found without it.

    The wider of two float dtypes (bfloat16 and float16 together give float32), so code that
    mixes bf16 params with f32 updates stays valid under ``jax_numpy_dtype_promotion="strict"``.
    """
    a, b = np.dtype(a), np.dtype(b)
    if a == b:
        return a
    if a.itemsize != b.itemsize:
        return a if a.itemsize > b.itemsize else b
    return np.dtype(jnp.float32)


def add_penalties(values: Sequence[jax.typing.ArrayLike]) -> jax.Array:
    """Sums scalar penalties in the widest of their accumulation dtypes (0.0 in f32 if none).

    Explicit casts keep this valid under ``jax_numpy_dtype_promotion="strict"``.
    """
    arrays = [jnp.asarray(v) for v in values]
    dtype = max(
        (accumulation_dtype(a.dtype) for a in arrays),
        key=lambda d: d.itemsize,
        default=np.dtype(jnp.float32),
    )
    total = jnp.zeros((), dtype)
    for a in arrays:
        total = total + a.astype(dtype)
    return total


def upcast(x: jax.Array) -> jax.Array:
    return x.astype(accumulation_dtype(x.dtype))


def exact_projection(
    project: Callable[..., tuple[jax.Array, jax.Array]],
    w: jax.Array,
    *operands: Any,
    on_set: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """A projection that returns feasible points bit for bit, differentiated as the projection.

    ``project(w, *operands)`` returns ``(P(w), outside)``: the projection's formula, and a
    mask broadcastable against ``w`` of the points (vectors, slices, matrices) that are not
    on the set yet, the others being feasible. The value is the exact-return shortcut

    .. math:: y = w \\text{ where } w \\text{ is feasible}, \\qquad y = P(w) \\text{ elsewhere}

    (``P`` would move a feasible point by its rounding), and the derivative is ``P``'s own,
    ``dy = DP(w)[dw]``, everywhere: a custom JVP rule, since the plain ``where`` would make
    it the identity at every feasible point. That is right only where the set has an interior
    around ``w``. At a point of a smooth manifold ``M`` (a sphere, the Stiefel manifold) the
    derivative of the nearest-point projection is the orthogonal projection onto the tangent
    space ``T_w M``; at a point of a convex set's relative interior it is the projection onto
    the directions of its affine hull (the identity inside a ball, the symmetrisation on the
    PSD cone). A reparametrization ``w = P(v)`` or a projection inside a loss needs that
    derivative. Where ``P`` has none (on the boundary of a set with an interior: a ball's
    sphere, a singular PSD matrix) the callers' formulas give the one from inside, finite.

    ``DP`` at feasible points comes from one of:

    * ``on_set=None``: ``jax.jvp`` of ``project``'s ``P`` at ``w``, feasible or not. For
      formulas whose derivative is finite and right on the set (rescaling by norms).
    * ``on_set(w, dw)``: ``DP(w)[dw]`` for feasible ``w``, written out (linear in ``dw``:
      the identity, the symmetrisation, the tangent projection). ``P``'s JVP then serves the
      infeasible points only, and its input tangent is zeroed at feasible ones, before ``P``
      sees it: the derivatives of ``jnp.linalg.svd`` and ``eigh`` divide by the gaps between
      singular values or eigenvalues, which vanish at many feasible points (every orthogonal
      matrix, the identity), and their ``0 * inf`` would otherwise make a gradient NaN even
      through the untaken branch of a ``where``.

    Without differentiation only ``project`` runs (``on_set`` is not traced), so the forward
    pass is the shortcut alone: ``where(outside, P(w), w)``, as written by hand (the mask
    marks the points outside, so no negation is added per parameter). Under differentiation
    ``P`` is linearized once (`jax.linearize`): no second decomposition.

    Args:
      project: ``(w, *operands) -> (P(w), outside)``; ``P(w)`` has ``w``'s shape and dtype.
      w: the point.
      *operands: arrays or numbers ``project`` depends on (radii, bounds, possibly traced
        schedule values), differentiated as inputs of ``P``.
      on_set: optionally ``(w, dw) -> DP(w)[dw]`` at feasible ``w`` (``w``'s dtype).

    Returns:
      ``w`` where feasible, ``P(w)`` elsewhere.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def sphere(w):  # The projection onto the unit sphere, and whether w is off it.
      ...     n = jnp.linalg.norm(w)
      ...     return w / n, n != 1
      >>> w = jnp.array([0.6, 0.8])
      >>> exact_projection(sphere, w)
      Array([0.6, 0.8], dtype=float32)
      >>> jacobian = jax.jacfwd(lambda w: exact_projection(sphere, w))(w)
      >>> jacobian.round(4).tolist()  # I - w w^T, the tangent projection (not the identity).
      [[0.64, -0.48], [-0.48, 0.36]]

    References:
      Holmes, "Smoothness of the nearest-point map in Hilbert space", Trans. AMS 184, 1973
      (the derivative on a manifold); Absil, Mahony and Sepulchre, "Optimization Algorithms on
      Matrix Manifolds", Princeton 2008.
    """
    return _exact_projection(project, on_set, w, *operands)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _exact_projection(
    project: Callable[..., tuple[jax.Array, jax.Array]],
    on_set: Callable[[jax.Array, jax.Array], jax.Array] | None,
    w: jax.Array,
    *operands: Any,
) -> jax.Array:
    projected, outside = project(w, *operands)
    return jnp.where(outside, projected, w)


@_exact_projection.defjvp
def _exact_projection_jvp(
    project: Callable[..., tuple[jax.Array, jax.Array]],
    on_set: Callable[[jax.Array, jax.Array], jax.Array] | None,
    primals: tuple[Any, ...],
    tangents: tuple[Any, ...],
) -> tuple[jax.Array, jax.Array]:
    w, dw = primals[0], tangents[0]
    if on_set is None:
        (projected, outside), (d_projected, _) = jax.jvp(project, primals, tangents)
        return jnp.where(outside, projected, w), d_projected
    (projected, outside), linear = jax.linearize(project, *primals)
    d_projected, _ = linear(jnp.where(outside, dw, jnp.zeros_like(dw)), *tangents[1:])
    return jnp.where(outside, projected, w), jnp.where(outside, d_projected, on_set(w, dw))
