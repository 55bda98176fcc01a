"""The spectral-norm constraint: power iteration, the exact norm, and `SpectralNorm`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcons._constraint import StatefulConstraint
from jaxcons._norms import accumulation_dtype
from jaxcons._validation import positive_int, real_number

__all__ = [
    "SpectralNorm",
    "SpectralNormState",
    "as_matrix",
    "clip_spectral_norm",
    "exact_sigma",
    "initial_vector",
    "power_iteration",
]


class SpectralNormState(NamedTuple):
    """State of `SpectralNorm` for one kernel, carried in `jaxcons.ConstrainState`.

    Attributes:
      u: the unit-norm estimate of the kernel's top right singular vector, the kernel being
        viewed as a ``(rows, out)`` matrix (``out`` its last axis). Shape ``(out,)``, as the
        ``u`` of ``flax.linen.SpectralNorm`` and ``keras.layers.SpectralNormalization``: it is
        the smaller vector for convolution kernels and can be sharded like the kernel's last
        axis. Dtype float32 (float64 for float64 kernels).
    """

    u: jax.Array


def as_matrix(w: jax.Array) -> jax.Array:
    """Views a kernel of rank >= 2 as a ``(prod(shape[:-1]), shape[-1])`` matrix, in >= f32.

    A Conv2D kernel ``(h, w, in, out)`` becomes ``(h * w * in, out)``: its largest singular
    value bounds the Lipschitz constant of the convolution up to a factor that depends only
    on the kernel size, as in Miyato et al. (2018).
    """
    rows = math.prod(w.shape[:-1])
    if isinstance(w, jax.core.Tracer) and _known_sharding(w) is not None:
        # On an Explicit mesh a reshape across sharded axes must be told its output sharding:
        # the exact norm needs the whole matrix on every device anyway.
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


def _like_last_axis(u: jax.Array, w: jax.Array) -> jax.Array:
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


class SpectralNorm(StatefulConstraint):
    """Bounds the largest singular value of a kernel: ``W <- W * min(1, max_value / sigma)``.

    .. math:: P(W) = W \\cdot \\min\\left(1, \\frac{c}{\\sigma_{\\max}(W)}\\right)

    Keeps the kernel's spectral norm, hence the Lipschitz constant of a dense layer, at most
    ``c = max_value`` (Gouk et al., 2021). A kernel of rank > 2 is viewed as the matrix
    ``(prod(shape[:-1]), shape[-1])`` (a Conv2D kernel ``(h, w, in, out)`` as
    ``(h * w * in, out)``). A kernel already inside the bound comes back bit for bit, a zero
    kernel stays zero (with a finite gradient), and the dtype is kept (norms are computed in
    float32, or float64 for float64 kernels). Rounding the scaled kernel back to its dtype
    can leave ``sigma`` a few ulps above ``max_value`` (up to ~0.2% for bfloat16).

    Two ways to compute ``sigma``:

    * Called directly (or through `jaxcons.apply_constraints`), it is exact (an SVD).
    * Inside `jaxcons.constrain`, `project` runs ``n_power_iterations`` steps of power
      iteration (Miyato et al., 2018) warm-started from the vector in `SpectralNormState`,
      which the transform carries across training steps. The estimate is a lower bound on
      ``sigma``, so while the vector is still converging (the first few steps, from a fixed
      random start) the bound can be exceeded; as the kernel changes slowly the estimate
      then tracks ``sigma`` closely.

    Only kernels of rank >= 2 are accepted: a rank-1 or rank-0 parameter (a bias, a scale)
    matched by a too-broad rule raises a ``ValueError`` naming its path and shape. To bound
    a vector's L2 norm, use ``MaxNorm(max_value, axis=0)``.

    Args:
      max_value: the bound ``c`` on the largest singular value (finite, > 0).
      n_power_iterations: power-iteration steps per `project` call (a positive int).

    Raises:
      ValueError: if ``max_value`` is not finite and > 0, or ``n_power_iterations`` is not a
        positive int; when applied to a parameter of rank < 2.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0]])
      >>> jaxcons.SpectralNorm(1.5)(w)
      Array([[1.5, 0. ],
             [0. , 0.5]], dtype=float32)
      >>> c = jaxcons.SpectralNorm(1.5, n_power_iterations=20)
      >>> w2, state = c.project(w, c.init(w))
      >>> w2
      Array([[1.5, 0. ],
             [0. , 0.5]], dtype=float32)
      >>> state.u.shape
      (2,)

    References:
      Gouk, Frank, Pfahringer & Cree, "Regularisation of neural networks by enforcing
      Lipschitz continuity", Machine Learning 110 (2021).
      Miyato, Kataoka, Koyama & Yoshida, "Spectral normalization for generative adversarial
      networks", ICLR (2018).
    """

    def __init__(self, max_value: float = 1.0, n_power_iterations: int = 1):
        self.max_value = real_number("max_value", max_value, minimum=0.0, strict=True)
        self.n_power_iterations = positive_int("n_power_iterations", n_power_iterations)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` for a parameter of rank < 2."""
        if len(shape) < 2:
            where = f"parameter {path!r}" if path else "the array"
            raise ValueError(
                f"SpectralNorm acts on kernels of rank >= 2, but {where} has shape {shape}. "
                "Match only kernels (e.g. '**/kernel'), or bound a vector's L2 norm with "
                "MaxNorm(max_value, axis=0)."
            )

    def _matrix(self, w: jax.Array) -> jax.Array:
        self.check(w.shape, "")
        return as_matrix(w)

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        return clip_spectral_norm(w, exact_sigma(self._matrix(w)), self.max_value)

    def init(self, w: jax.Array) -> SpectralNormState:
        """Returns the deterministic start: a fixed unit vector of shape ``(out,)``.

        It depends only on ``w``'s shape and dtype, so restarts are reproducible. Where
        ``w``'s sharding is known (a concrete array, or a traced one on an ``Explicit`` mesh),
        the vector is sharded like ``w``'s last axis, as `project` returns it.
        """
        w = jnp.asarray(w)
        self.check(w.shape, "")
        u = initial_vector(w.shape[-1], accumulation_dtype(w.dtype))
        return SpectralNormState(u=_like_last_axis(u, w))

    def project(
        self, w: jax.Array, state: SpectralNormState
    ) -> tuple[jax.Array, SpectralNormState]:
        """Projects ``w`` with ``sigma`` estimated by power iteration from ``state.u``."""
        w = jnp.asarray(w)
        self.check(tuple(w.shape), "")
        kernel = w.astype(accumulation_dtype(w.dtype))
        sigma, u = power_iteration(kernel, state.u, self.n_power_iterations)
        return clip_spectral_norm(w, sigma, self.max_value), SpectralNormState(u=u)

    def get_config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "n_power_iterations": self.n_power_iterations}
