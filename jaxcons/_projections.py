"""Pure projection math behind the built-in constraints (norms, rings, spectral norms, L1 balls
and simplices, sparsity masks, intersections).

Every function here takes one array and returns an array of the same shape and dtype. Norms
and means accumulate in at least float32 (bfloat16 and float16 inputs are upcast for the
reduction and the scale, and the result is cast back), and every projection is exact: an
entry, vector or ring that is already feasible is returned bit for bit, through `jnp.where`
rather than through a rescaling by a factor that is merely close to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcons._numerics import accumulation_dtype, safe_norm

__all__ = [
    "as_matrix",
    "box_ball",
    "check_kernel_4d",
    "clip_spectral_norm",
    "dykstra",
    "exact_sigma",
    "initial_vector",
    "l1_ball",
    "like_last_axis",
    "max_norm",
    "min_max_norm",
    "n_of_m_mask",
    "power_iteration",
    "radial_mean",
    "radial_tf_keras",
    "replicated",
    "ring_index",
    "simplex",
    "sphere_tangent",
    "threshold_iterations",
    "top_k_mask",
    "top_right_singular_vector",
    "unit_norm",
]


def _rescale(
    w: jax.Array,
    axes: tuple[int, ...],
    rule: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
) -> jax.Array:
    """Rescales the vectors of ``w`` along ``axes`` whose norm the ``rule`` rejects.

    ``rule(n)`` gets the norms ``n`` (keepdims, accumulation dtype; exactly 0 for zero vectors)
    and returns ``(needs, desired)``: which vectors to rescale and the norm they get. ``needs``
    must be false for zero vectors. Vectors that need nothing are returned bit for bit; every
    division is guarded and the norm's derivative is 0 at a zero vector (`safe_norm`), so
    values and gradients stay finite there.
    """
    w = jnp.asarray(w)
    x = w.astype(accumulation_dtype(w.dtype))
    n = safe_norm(x, axes)
    needs, desired = rule(n)
    scale = desired / jnp.where(needs, n, 1)
    return jnp.where(needs, (x * scale).astype(w.dtype), w)


def max_norm(w: jax.Array, max_value: float, axes: tuple[int, ...]) -> jax.Array:
    """Projects every vector along ``axes`` onto the ball of radius ``max_value``.

    .. math:: P(w) = w \\cdot \\min(1, c / \\|w\\|)
    """
    return _rescale(w, axes, lambda n: (n > max_value, jnp.full_like(n, max_value)))


def min_max_norm(
    w: jax.Array, min_value: float, max_value: float, rate: float, axes: tuple[int, ...]
) -> jax.Array:
    """Moves every non-zero vector's norm toward ``[min_value, max_value]`` by ``rate``.

    .. math:: P(w) = w \\cdot \\frac{r\\,\\mathrm{clip}(\\|w\\|, a, b) + (1 - r)\\|w\\|}{\\|w\\|}
    """

    def rule(n: jax.Array) -> tuple[jax.Array, jax.Array]:
        needs = (n > 0) & ((n < min_value) | (n > max_value))
        return needs, rate * jnp.clip(n, min_value, max_value) + (1 - rate) * n

    return _rescale(w, axes, rule)


def unit_norm(w: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Scales every non-zero vector along ``axes`` to unit norm; zero vectors stay zero.

    .. math:: P(w) = w / \\|w\\|
    """
    return _rescale(w, axes, lambda n: ((n > 0) & (n != 1), jnp.ones_like(n)))


def threshold_iterations(dtype: Any) -> int:
    """The cap on `_threshold`'s iterations for inputs of ``dtype``: mantissa bits + 8.

    Each iteration at least halves the bracket around the threshold, so after this many the
    bracket is below 1/256 of an ulp of the largest entry even if the Newton steps never
    finished early (on the tests' data the result is final after at most 3).
    """
    return int(jnp.finfo(accumulation_dtype(dtype)).nmant) + 8


def _threshold(x: jax.Array, axes: tuple[int, ...], total: float) -> jax.Array:
    """The ``theta`` (per slice along ``axes``, keepdims) with ``sum(max(x - theta, 0)) = total``.

    ``f(t) = sum(max(x - t, 0))`` is convex, piecewise linear and decreasing, so Newton's
    method started below the root (Michelot's algorithm) climbs to it monotonically and lands
    on it exactly once the support ``{x > t}`` is right. Each iteration takes that Newton step
    from the lower end ``lo`` of a bracket ``[lo, hi]`` and also tests the bracket's midpoint,
    so the bracket at least halves whatever the data; the loop stops when no slice's Newton
    step moves any more (or after `threshold_iterations`). Only elementwise operations and
    reductions over ``axes`` are used, no sort: a slice sharded across devices all-reduces a
    few numbers per slice per iteration. The iterations run on ``stop_gradient(x)``; the
    result is the closed form ``(sum_S x - total) / |S|`` on the support ``S`` they found,
    differentiable in ``x`` (the projection's Jacobian almost everywhere).

    Starting bracket (``n`` entries per slice, ``m = max x``): ``f(m - total) >= total`` and
    ``f(m - total / n) <= total``, and ``(sum x - total) / n`` is Michelot's start (a lower
    bound); ``lo`` stays strictly below ``m`` so the support is never empty.
    """
    n = math.prod(x.shape[a] for a in axes)
    xs = jax.lax.stop_gradient(x)
    top = jnp.max(xs, axis=axes, keepdims=True)
    below_top = jnp.nextafter(top, jnp.full_like(top, -jnp.inf))

    def support(t: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
        inside = xs > t
        count = jnp.sum(inside, axis=axes, keepdims=True, dtype=jnp.int32)
        return jnp.sum(jnp.where(inside, values, 0), axis=axes, keepdims=True), count

    def newton(t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The Newton step from ``t`` (kept below the top), and ``f(t) - total``."""
        mass, count = support(t, xs)
        step = (mass - total) / jnp.maximum(count, 1).astype(x.dtype)
        return jnp.minimum(step, below_top), mass - count.astype(x.dtype) * t - total, count

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        i, lo, hi, _ = carry
        lo_step, _, _ = newton(lo)
        done = jnp.all(lo_step <= lo)  # No slice's Newton step moves: every lo is its root.
        lo = jnp.maximum(lo, lo_step)
        mid = (lo + hi) / 2
        mid_step, excess, _ = newton(mid)
        mid_is_low = excess >= 0  # mid <= theta: a lower bound, and so is its Newton step.
        lo = jnp.where(mid_is_low, jnp.maximum(lo, mid_step), lo)
        hi = jnp.where(mid_is_low, hi, mid)
        return i + 1, lo, hi, done

    def more(carry: tuple[Any, ...]) -> jax.Array:
        i, _, _, done = carry
        return (i < threshold_iterations(x.dtype)) & ~done

    start = (jnp.sum(xs, axis=axes, keepdims=True) - total) / n
    lo = jnp.minimum(jnp.maximum(top - total, start), below_top)
    hi = top - total / n
    _, lo, _, _ = jax.lax.while_loop(more, body, (0, lo, hi, jnp.array(False)))
    mass, count = support(lo, x)
    return (mass - total) / jnp.maximum(count, 1).astype(x.dtype)


def l1_ball(w: jax.Array, radius: float, axes: tuple[int, ...]) -> jax.Array:
    """Projects every slice of ``w`` along ``axes`` onto the L1 ball of radius ``radius > 0``.

    .. math:: P(v) = \\operatorname{sign}(v) \\max(|v| - \\theta, 0), \\quad
       \\textstyle\\sum_i \\max(|v_i| - \\theta, 0) = r

    for slices with ``||v||_1 > r``; slices inside the ball come back bit for bit.
    """
    w = jnp.asarray(w)
    x = jnp.abs(w.astype(accumulation_dtype(w.dtype)))
    inside = jnp.sum(x, axis=axes, keepdims=True) <= radius
    theta = _threshold(x, axes, radius)
    y = jnp.sign(w).astype(x.dtype) * jnp.maximum(x - theta, 0)
    return jnp.where(inside, w, y.astype(w.dtype))


def simplex(w: jax.Array, total: float, axes: tuple[int, ...]) -> jax.Array:
    """Projects every slice of ``w`` along ``axes`` onto ``{v >= 0, sum(v) = total}``.

    .. math:: P(v) = \\max(v - \\theta, 0), \\quad \\textstyle\\sum_i \\max(v_i - \\theta, 0) = s

    A slice already on the simplex whose sum is exactly ``total`` has ``theta = 0`` and comes
    back bit for bit.
    """
    w = jnp.asarray(w)
    x = w.astype(accumulation_dtype(w.dtype))
    return jnp.maximum(x - _threshold(x, axes, total), 0).astype(w.dtype)


def box_ball(
    w: jax.Array, lower: Any, upper: Any, radius: float, axes: tuple[int, ...]
) -> jax.Array:
    """Projects every slice along ``axes`` onto ``{lower <= v <= upper, ||v||_2 <= radius}``.

    The box must contain 0 (``lower <= 0 <= upper``; bounds are ``None``, scalars or arrays
    broadcastable to ``w``). By the KKT conditions the projection is

    .. math:: P(v) = \\mathrm{clip}(s v, a, b), \\quad s = 1 \\text{ if }
       \\|\\mathrm{clip}(v, a, b)\\| \\le r, \\text{ else } \\|\\mathrm{clip}(s v, a, b)\\| = r

    with ``s = 1 / (1 + lambda)`` in ``(0, 1]``; ``||clip(s v)||`` grows with ``s``, so
    bisection on ``s`` (``nmant + 2`` halvings, under ``stop_gradient``) finds which entries
    sit on the box; ``s`` is then solved in closed form on that split, differentiably:
    ``s^2 = (r^2 - sum_clipped b_i^2) / sum_free v_i^2``. Computed in the accumulation dtype;
    slices whose clip is already inside the ball are clipped only.
    """
    w = jnp.asarray(w)
    dtype = accumulation_dtype(w.dtype)
    x = w.astype(dtype)
    a = None if lower is None else jnp.asarray(lower, dtype)
    b = None if upper is None else jnp.asarray(upper, dtype)
    r2 = jnp.asarray(radius, dtype) ** 2
    xs = jax.lax.stop_gradient(x)

    def sq_norm(s: jax.Array) -> jax.Array:
        return jnp.sum(jnp.square(jnp.clip(s * xs, a, b)), axis=axes, keepdims=True)

    def halve(_: Any, bracket: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bracket
        mid = (lo + hi) / 2
        fits = sq_norm(mid) <= r2
        return jnp.where(fits, mid, lo), jnp.where(fits, hi, mid)

    ones = jnp.ones(sq_norm(jnp.ones((), dtype)).shape, dtype)
    steps = int(jnp.finfo(dtype).nmant) + 2
    s, _ = jax.lax.fori_loop(0, steps, halve, (jnp.zeros_like(ones), ones))
    on_box = jnp.clip(s * xs, a, b) != s * xs
    mass = jnp.sum(jnp.where(on_box, jnp.square(jnp.clip(x, a, b)), 0), axis=axes, keepdims=True)
    free = jnp.sum(jnp.where(on_box, 0, jnp.square(x)), axis=axes, keepdims=True)
    ratio = jnp.maximum(r2 - mass, 0) / jnp.where(free > 0, free, 1)
    s = jnp.where((free > 0) & (ratio > 0), jnp.sqrt(jnp.where(ratio > 0, ratio, 1)), s)
    inside = jnp.sum(jnp.square(jnp.clip(x, a, b)), axis=axes, keepdims=True) <= r2
    return jnp.clip(jnp.where(inside, 1, s) * x, a, b).astype(w.dtype)


def top_k_mask(w: jax.Array, k: int, axes: tuple[int, ...]) -> jax.Array:
    """``True`` at the ``k`` largest-magnitude entries of every slice of ``w`` along ``axes``.

    Ties go to the entry that comes first in the slice (row-major order over ``axes``), as in
    `jax.lax.top_k`. The slice axes are moved last and flattened for `jax.lax.top_k`.
    """
    w = jax.lax.stop_gradient(jnp.asarray(w))
    rest = tuple(a for a in range(w.ndim) if a not in axes)
    moved = jnp.transpose(jnp.abs(w), rest + axes)
    batch = moved.shape[: len(rest)]
    flat = moved.reshape((math.prod(batch), -1))
    _, index = jax.lax.top_k(flat, k)
    rows = jnp.arange(flat.shape[0])[:, None]
    keep = jnp.zeros(flat.shape, bool).at[rows, index].set(True)
    keep = keep.reshape(moved.shape)
    return jnp.transpose(keep, np.argsort(rest + axes))


def n_of_m_mask(w: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    """``True`` at the ``n`` largest-magnitude entries of every group of ``m`` consecutive
    entries of ``w`` along ``axis`` (whose length is a multiple of ``m``).

    Entry ``i`` of a group is kept when fewer than ``n`` entries of its group beat it, where
    ``j`` beats ``i`` if ``|w_j| > |w_i|``, or ``|w_j| = |w_i|`` and ``j < i`` (ties go to the
    lower index). The ``m x m`` comparisons are elementwise and fuse into one reduction: no
    sort, no gather.
    """
    w = jax.lax.stop_gradient(jnp.asarray(w))
    shape = w.shape
    grouped = jnp.abs(w).reshape((*shape[:axis], shape[axis] // m, m, *shape[axis + 1 :]))
    g = axis + 1  # The axis of the position within a group.
    mine = jnp.expand_dims(grouped, g + 1)  # (..., m [i], 1, ...)
    theirs = jnp.expand_dims(grouped, g)  # (..., 1, m [j], ...)
    lower = np.tril(np.ones((m, m), bool), -1)  # lower[i, j]: j < i.
    lower = lower.reshape((1,) * g + (m, m) + (1,) * (grouped.ndim - g - 1))
    beaten = (theirs > mine) | ((theirs == mine) & lower)
    rank = jnp.sum(beaten, axis=g + 1, dtype=jnp.int32)
    return (rank < n).reshape(shape)


def dykstra(
    w: jax.Array, projections: Sequence[Callable[[jax.Array], jax.Array]], n_iter: int
) -> jax.Array:
    """Dykstra's alternating projections onto the intersection of convex sets.

    With ``x = w`` and one correction ``p_i = 0`` per set, each of ``n_iter`` sweeps runs, for
    ``i = 1 ... k``:

    .. math:: y = P_i(x + p_i), \\quad p_i \\leftarrow x + p_i - y, \\quad x \\leftarrow y

    ``x`` converges to the projection of ``w`` onto the intersection (Boyle and Dykstra,
    1986), not merely to some point of it as plain alternating projections do. It runs in
    the accumulation dtype (bf16/f16 in float32) in a `jax.lax.fori_loop`; the result is cast
    back and projected once more by the last set's projection in ``w``'s dtype, so that it
    lies in the last set after rounding too (a no-op for float32 and wider). A ``w`` inside
    every set is a fixed point: it comes back bit for bit (up to the sign of zeros).
    """
    w = jnp.asarray(w)
    x = w.astype(accumulation_dtype(w.dtype))

    def sweep(_: Any, carry: tuple[jax.Array, tuple[jax.Array, ...]]) -> Any:
        x, corrections = carry
        new = []
        for project, p in zip(projections, corrections, strict=True):
            y = project(x + p)
            new.append(x + p - y)
            x = y
        return x, tuple(new)

    zeros = tuple(jnp.zeros_like(x) for _ in projections)
    x, _ = jax.lax.fori_loop(0, n_iter, sweep, (x, zeros))
    return projections[-1](x.astype(w.dtype))


def sphere_tangent(w: jax.Array, g: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Projects every slice of ``g`` along ``axes`` onto the tangent space of the sphere
    through the same slice of ``w``: removes its radial component.

    .. math:: P_w(g) = g - w \\frac{\\langle w, g \\rangle}{\\|w\\|^2}

    A zero slice of ``w`` has no sphere through it: its slice of ``g`` is returned unchanged
    (with finite gradients). The result has ``g``'s dtype, computed in >= float32.
    """
    dtype = accumulation_dtype(w.dtype, g.dtype)
    x, y = w.astype(dtype), g.astype(dtype)
    sq = jnp.sum(x * x, axis=axes, keepdims=True)
    nonzero = sq > 0
    radial = jnp.sum(x * y, axis=axes, keepdims=True) / jnp.where(nonzero, sq, 1)
    return (y - jnp.where(nonzero, radial, 0) * x).astype(g.dtype)


def check_kernel_4d(shape: Sequence[int], path: str, owner: str) -> None:
    """Raises ``ValueError`` unless ``shape`` is a square Conv2D kernel ``(k, k, in, out)``."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(
            f"{owner} needs a 4-D Conv2D kernel of shape (rows, cols, in, out); parameter "
            f"{path!r} has shape {shape} (rank {len(shape)})."
        )
    if shape[0] != shape[1]:
        raise ValueError(
            f"{owner} needs a square kernel (rows == cols); parameter {path!r} has shape {shape}."
        )


def ring_index(size: int) -> np.ndarray:
    """The ring of every cell of a ``size x size`` grid: Chebyshev distance from the centre.

    Ring 0 is the centre cell (odd ``size``) or the central 2x2 block (even ``size``).
    """
    d = np.abs(2 * np.arange(size) - (size - 1))
    return np.maximum(d[:, None], d[None, :]) // 2


def _ring_masks(size: int) -> list[np.ndarray]:
    """One boolean ``(size, size, 1, 1)`` mask per ring, centre first."""
    ring = ring_index(size)[:, :, None, None]
    return [ring == r for r in range(int(ring.max()) + 1)]


def radial_mean(w: jax.Array) -> jax.Array:
    """Replaces every ring of each ``k x k`` slice of ``w`` (``(k, k, in, out)``) by its mean.

    The orthogonal projection onto ring-constant kernels; a ring that is already constant is
    returned bit for bit. Only elementwise operations and reductions over the two spatial
    axes are used (no gather or scatter), so a kernel sharded over its channels stays so.
    """
    w = jnp.asarray(w)
    x = w.astype(accumulation_dtype(w.dtype))
    out = w
    for mask in _ring_masks(w.shape[0]):
        i, j = np.argwhere(mask[:, :, 0, 0])[0]
        first = w[i : i + 1, j : j + 1]
        constant = jnp.all(jnp.where(mask, w == first, True), axis=(0, 1), keepdims=True)
        total = jnp.sum(jnp.where(mask, x, 0), axis=(0, 1), keepdims=True)
        mean = (total / int(mask.sum())).astype(w.dtype)
        out = jnp.where(mask & ~constant, mean, out)
    return out


def radial_tf_keras(w: jax.Array) -> jax.Array:
    """tf.keras 2.x's ``RadialConstraint``: each ring copies one diagonal entry.

    With ``s = k // 2`` and rings counted from 0 at the centre (`ring_index`): ring 0 takes
    ``w[s-1, s-1]``; for odd ``k`` ring ``r >= 1`` takes ``w[s+r-1, s+r-1]``, for even ``k``
    it takes ``w[s+r, s+r]``. A 1x1 kernel comes back unchanged.
    """
    w = jnp.asarray(w)
    size = w.shape[0]
    start = size // 2
    out = w
    for r, mask in enumerate(_ring_masks(size)):
        d = (start - 1 if r == 0 else start + r - size % 2) % size
        out = jnp.where(mask, w[d : d + 1, d : d + 1], out)
    return out


def replicated(w: jax.Array) -> jax.Array:
    """``w`` replicated on its mesh where its sharding is known (a concrete array, or a traced
    one on an ``Explicit`` mesh), for the computations that need the whole matrix (an SVD);
    ``w`` itself otherwise."""
    sharding = _known_sharding(w)
    if sharding is None:
        return w
    if isinstance(w, jax.core.Tracer):
        return jax.sharding.reshard(w, P())
    return jax.device_put(w, NamedSharding(sharding.mesh, P()))


def as_matrix(w: jax.Array) -> jax.Array:
    """Views a kernel of rank >= 2 as a ``(prod(shape[:-1]), shape[-1])`` matrix, in >= f32.

    A Conv2D kernel ``(h, w, in, out)`` becomes ``(h * w * in, out)``: its largest singular
    value bounds the Lipschitz constant of the convolution up to a factor that depends only
    on the kernel size, as in Miyato et al. (2018).
    """
    rows = math.prod(w.shape[:-1])
    # On an Explicit mesh a reshape across sharded axes must be told its output sharding:
    # the exact norm and the SVD need the whole matrix on every device anyway.
    w = replicated(w)
    return w.reshape(rows, w.shape[-1]).astype(accumulation_dtype(w.dtype))


def _normalize(x: jax.Array, fallback: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(x / ||x||, ||x||)``, or ``(fallback, 0)`` when ``x`` is zero.

    Both branches are guarded, so neither the value nor the gradient has a 0/0.
    """
    sq = jnp.sum(jnp.square(x))
    nonzero = sq > 0
    norm = jnp.sqrt(jnp.where(nonzero, sq, 1))
    unit = jnp.where(nonzero, x / norm, fallback)
    return unit, jnp.where(nonzero, norm, 0)


def initial_vector(n: int, dtype: Any = jnp.float32) -> jax.Array:
    """The deterministic start of the power iteration: a unit vector drawn with key 0.

    A fixed random direction rather than ``ones``: structured kernels (a difference filter,
    columns that sum to zero) often have their top singular vector orthogonal to ``ones``,
    where the power iteration would never leave zero. The same ``n`` always gives the same
    vector, so restarts are reproducible.
    """
    x = jax.random.normal(jax.random.key(0), (n,), dtype)
    return _normalize(x, jnp.zeros((n,), dtype))[0]


def _matvec(kernel: jax.Array, u: jax.Array) -> jax.Array:
    """``W u`` for the kernel viewed as a ``(rows, out)`` matrix, shaped ``kernel.shape[:-1]``.

    A broadcast product and a reduction over the last axis, on the kernel's own shape: no
    reshape and no ``dot_general``, so a kernel sharded along any axis is reduced where it
    lives (a sharded reduction is an all-reduce of the small result) instead of being
    gathered, and the sums are exact f32 on every backend (no TF32 matmul passes).
    """
    return jnp.sum(kernel * u.reshape((1,) * (kernel.ndim - 1) + u.shape), axis=-1)


def _rmatvec(kernel: jax.Array, v: jax.Array) -> jax.Array:
    """``W^T v`` for ``v`` shaped ``kernel.shape[:-1]``: a vector of shape ``(out,)``."""
    return jnp.sum(kernel * v[..., None], axis=tuple(range(kernel.ndim - 1)))


def power_iteration(
    kernel: jax.Array, u: jax.Array, n_iterations: int
) -> tuple[jax.Array, jax.Array]:
    """Estimates the largest singular value of a kernel by power iteration from ``u``.

    The kernel ``W`` (rank >= 2) is viewed as the ``(prod(shape[:-1]), shape[-1])`` matrix
    without being reshaped. Each iteration is ``v = W u / ||W u||``,
    ``u = W^T v / ||W^T v||``, and the estimate is ``sigma = ||W^T v|| = v^T W u``, a lower
    bound on the largest singular value that converges to it at the rate
    ``(sigma_2 / sigma_1)^2`` per iteration (Miyato et al., 2018). As there, the vectors are
    treated as constants under differentiation, so the gradient of ``sigma`` is ``v u^T``.
    A zero kernel gives ``sigma = 0`` and keeps ``u``.

    Args:
      kernel: the kernel ``W``, in its compute dtype.
      u: the start vector, shape ``(out,)``, of ``kernel``'s dtype (unit norm).
      n_iterations: the number of iterations (a positive Python int).

    Returns:
      ``(sigma, u)``: the estimate and the updated unit vector.
    """
    frozen = jax.lax.stop_gradient(kernel)

    def left(u: jax.Array) -> jax.Array:
        wu = _matvec(frozen, u)
        return _normalize(wu, jnp.zeros_like(wu))[0]  # Zeros sharded like W u.

    def iterate(_: Any, u: jax.Array) -> jax.Array:
        return _normalize(_rmatvec(frozen, left(u)), u)[0]

    u = jax.lax.fori_loop(0, n_iterations - 1, iterate, jax.lax.stop_gradient(u))
    v = left(u)
    new_u, sigma = _normalize(_rmatvec(kernel, v), u)
    return sigma, jax.lax.stop_gradient(new_u)


def _known_sharding(w: jax.Array) -> NamedSharding | None:
    """``w``'s ``NamedSharding`` where it is known at trace time: a concrete array's, or a
    traced array's on an ``Explicit`` mesh (its mesh is then abstract); else ``None``."""
    if isinstance(w, jax.core.Tracer):
        sharding = jax.typeof(w).sharding
        explicit = AxisType.Explicit in getattr(sharding.mesh, "axis_types", ())
        return sharding if explicit else None
    sharding = getattr(w, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def like_last_axis(u: jax.Array, w: jax.Array) -> jax.Array:
    """Shards ``u`` (shape ``(out,)``) like ``w``'s last axis, where that is known.

    `power_iteration` returns ``u`` sharded that way, so starting from the same sharding keeps
    the optimizer state's sharding fixed across steps: no resharding, no recompilation, and
    donated buffers are reused.
    """
    sharding = _known_sharding(w)
    if sharding is None:
        return u
    spec = sharding.spec
    last = P(spec[w.ndim - 1] if len(spec) >= w.ndim else None)
    if isinstance(w, jax.core.Tracer):
        return jax.sharding.reshard(u, last)
    return jax.device_put(u, NamedSharding(sharding.mesh, last))


def top_right_singular_vector(matrix: jax.Array) -> jax.Array:
    """The unit right singular vector of ``matrix``'s largest singular value (by SVD).

    Shape ``(matrix.shape[1],)``. For a zero matrix every unit vector is one; the SVD's choice
    is returned.
    """
    _, _, vh = jnp.linalg.svd(matrix, full_matrices=False)
    return vh[0]


def exact_sigma(matrix: jax.Array) -> jax.Array:
    """The exact largest singular value of ``matrix`` (by SVD); 0 for an empty matrix."""
    return jnp.linalg.norm(matrix, ord=2)


def clip_spectral_norm(w: jax.Array, sigma: jax.Array, max_value: float) -> jax.Array:
    """Returns ``w * min(1, max_value / sigma)`` in ``w``'s dtype, computed in >= f32.

    The factor is ``max_value / max(sigma, max_value)``, exactly ``1.0`` when ``sigma <=
    max_value``, so such a ``w`` comes back bit for bit; no 0/0 for a zero ``w``.
    """
    dtype = accumulation_dtype(w.dtype)
    bound = jnp.asarray(max_value, dtype)
    scale = bound / jnp.maximum(sigma.astype(dtype), bound)
    return (w.astype(dtype) * scale).astype(w.dtype)
