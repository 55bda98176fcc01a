"""Linear algebra shared by the matrix constraints and regularizers: matrix views, sharding-aware
SVDs, power iteration."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcons._src.matrix_stacks import MatrixStack
from jaxcons._src.numerics import accumulation_dtype

HIGHEST = jax.lax.Precision.HIGHEST


def check_matrix(
    owner: str, shape: tuple[int, ...], path: str, stack: MatrixStack | None = None
) -> None:
    """Raises ``ValueError`` for a parameter of rank < 2, or one that a non-trivial ``stack``
    does not fit, naming ``owner``, the path and shape."""
    if stack is not None and not stack.trivial:
        stack.check(owner, tuple(shape), path)
    elif len(shape) < 2:
        where = f"parameter {path!r}" if path else "the array"
        raise ValueError(
            f"{owner} acts on kernels of rank >= 2 (viewed as (prod(shape[:-1]), shape[-1]) "
            f"matrices), but {where} has shape {tuple(shape)}. Match only kernels "
            "(e.g. '**/kernel')."
        )


def is_explicit(x: jax.Array) -> bool:
    """Whether ``x`` is traced on a mesh in ``Explicit`` axis mode (contractions over sharded
    axes must then name their output sharding)."""
    if not isinstance(x, jax.core.Tracer):
        return False
    return AxisType.Explicit in getattr(jax.typeof(x).sharding.mesh, "axis_types", ())


def like(y: jax.Array, w: jax.Array) -> jax.Array:
    """``y`` (shape of ``w``) reshaped and cast like ``w``, resharded like it on an Explicit
    mesh (the decompositions run on the replicated matrix there)."""
    y = y.reshape(w.shape).astype(w.dtype)
    if is_explicit(w):
        y = jax.sharding.reshard(y, jax.typeof(w).sharding.spec)
    return y


def distinct_spectrum(shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """A fixed ``(..., rows, cols)`` matrix with singular values ``1, 2, ..., min(rows, cols)``."""
    rows, cols = shape[-2:]
    eye = jnp.eye(rows, cols, dtype=dtype) * jnp.arange(1, cols + 1, dtype=dtype)[None, :]
    return jnp.broadcast_to(eye, shape)


def svd(matrix: jax.Array, unused: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The thin SVD of ``matrix``, or of a fixed well-conditioned matrix where ``unused``."""
    safe = jnp.where(unused, distinct_spectrum(matrix.shape, matrix.dtype), matrix)
    return jnp.linalg.svd(safe, full_matrices=False, compute_uv=True)


def compose(u: jax.Array, s: jax.Array, vh: jax.Array) -> jax.Array:
    """``u @ diag(s) @ vh`` in full precision."""
    return jnp.matmul(u * s[None, :], vh, precision=HIGHEST)


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


def normalize(x: jax.Array, fallback: jax.Array) -> tuple[jax.Array, jax.Array]:
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
    return normalize(x, jnp.zeros((n,), dtype))[0]


def matvec(kernel: jax.Array, u: jax.Array) -> jax.Array:
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
        wu = matvec(frozen, u)
        return normalize(wu, jnp.zeros_like(wu))[0]  # Zeros sharded like W u.

    def iterate(_: Any, u: jax.Array) -> jax.Array:
        return normalize(_rmatvec(frozen, left(u)), u)[0]

    u = jax.lax.fori_loop(0, n_iterations - 1, iterate, jax.lax.stop_gradient(u))
    v = left(u)
    new_u, sigma = normalize(_rmatvec(kernel, v), u)
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


def like_batch_axes(x: jax.Array, kernels: jax.Array, n_batch: int) -> jax.Array:
    """Shards ``x`` (shape ``batch_shape + rest``) like the ``n_batch`` leading (batch) axes of
    ``kernels`` (a split `MatrixStack`), where that sharding is known: per-matrix state then
    lives with its matrix, and `jax.vmap` on an ``Explicit`` mesh maps axes sharded alike."""
    sharding = _known_sharding(kernels)
    if sharding is None or n_batch == 0:
        return x
    spec = tuple(sharding.spec) + (None,) * kernels.ndim
    target = P(*spec[:n_batch], *(None,) * (x.ndim - n_batch))
    if isinstance(kernels, jax.core.Tracer):
        return jax.sharding.reshard(x, target)
    return jax.device_put(x, NamedSharding(sharding.mesh, target))


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
