"""Pure projection math behind the built-in constraints (norms, rings, spectral norms).

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
    "check_kernel_4d",
    "clip_spectral_norm",
    "exact_sigma",
    "initial_vector",
    "like_last_axis",
    "max_norm",
    "min_max_norm",
    "power_iteration",
    "radial_mean",
    "radial_tf_keras",
    "ring_index",
    "sphere_tangent",
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
    must be false for zero vectors. Vectors that need nothing are returned bit for bit, and
    every ``sqrt`` and division is guarded so values and gradients stay finite at zero.
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


def as_matrix(w: jax.Array) -> jax.Array:
    """Views a kernel of rank >= 2 as a ``(prod(shape[:-1]), shape[-1])`` matrix, in >= f32.

    A Conv2D kernel ``(h, w, in, out)`` becomes ``(h * w * in, out)``: its largest singular
    value bounds the Lipschitz constant of the convolution up to a factor that depends only
    on the kernel size, as in Miyato et al. (2018).
    """
    rows = math.prod(w.shape[:-1])
    sharding = _known_sharding(w)
    if sharding is not None and AxisType.Explicit in getattr(sharding.mesh, "axis_types", ()):
        # On an Explicit mesh a reshape across sharded axes must be told its output sharding
        # (traced or concrete): the exact norm needs the whole matrix on every device anyway.
        w = jax.sharding.reshard(w, P())
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
