"""`SpectralNorm`: a bound on the largest singular value, tracked by power iteration."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from jaxcons._src.base import StatefulConstraint
from jaxcons._src.linalg import (
    as_matrix,
    exact_sigma,
    initial_vector,
    like_last_axis,
    power_iteration,
    top_right_singular_vector,
)
from jaxcons._src.numerics import accumulation_dtype
from jaxcons._src.schedules import Evaluated, Scheduled, schedulable
from jaxcons._src.validation import positive_int, positive_number


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
      which the transform carries across training steps. `init` starts that vector at the
      kernel's exact top right singular vector (one SVD, once), so the estimate is exact
      at the first step; afterwards it is a lower bound on ``sigma`` that tracks it as the
      kernel changes, and the bound holds as well as the iteration tracks (a kernel that
      only grows, ``W <- 1.5 W``, stays within ``1e-5``; the README gives the figures
      measured under Adam). `jaxcons.violations` gives the exact excess when it matters.

    Only kernels of rank >= 2 are accepted: a rank-1 or rank-0 parameter (a bias, a scale)
    matched by a too-broad rule raises a ``ValueError`` naming its path and shape. To bound
    a vector's L2 norm, use ``MaxNorm(max_value, axis=0)``.

    Args:
      max_value: the bound ``c`` on the largest singular value (finite, > 0), or an optax
        schedule of it (evaluated at `jaxcons.constrain`'s step count).
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

    identifiers = ("spectral_norm",)
    traced_once = False  # It keeps state.
    # The ball is convex, but scaling by the largest singular value is not the Euclidean
    # projection onto it (SingularValueClip is).
    convex = False
    elementwise_bounds = None

    def __init__(self, max_value: float = 1.0, n_power_iterations: int = 1):
        self._max = schedulable("max_value", max_value, positive_number)
        self.max_value = max_value if isinstance(self._max, Scheduled) else self._max
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
        return clip_spectral_norm(w, exact_sigma(self._matrix(w)), cast(Evaluated, self._max))

    def init(self, w: jax.Array) -> SpectralNormState:
        """Returns the start of the power iteration: ``w``'s exact top right singular vector.

        One SVD of the ``(rows, out)`` matrix, once (it gathers a sharded kernel, like the
        exact projection). A zero kernel has no preferred direction: it gets a fixed random
        unit vector (drawn with key 0) rather than an axis vector the iteration could never
        leave. Where ``w``'s sharding is known (a concrete array, or a traced one on an
        ``Explicit`` mesh), the vector is sharded like ``w``'s last axis, as `project`
        returns it.
        """
        w = jnp.asarray(w)
        self.check(w.shape, "")
        matrix = as_matrix(w)
        fallback = initial_vector(w.shape[-1], matrix.dtype)
        u = jnp.where(jnp.any(matrix != 0), top_right_singular_vector(matrix), fallback)
        return SpectralNormState(u=like_last_axis(u, w))

    def project(
        self, w: jax.Array, state: SpectralNormState
    ) -> tuple[jax.Array, SpectralNormState]:
        """Projects ``w`` with ``sigma`` estimated by power iteration from ``state.u``."""
        w = jnp.asarray(w)
        self.check(tuple(w.shape), "")
        kernel = w.astype(accumulation_dtype(w.dtype))
        sigma, u = power_iteration(kernel, state.u, self.n_power_iterations)
        return clip_spectral_norm(w, sigma, cast(Evaluated, self._max)), SpectralNormState(u=u)

    def get_config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "n_power_iterations": self.n_power_iterations}


def clip_spectral_norm(w: jax.Array, sigma: jax.Array, max_value: Evaluated) -> jax.Array:
    """Returns ``w * min(1, max_value / sigma)`` in ``w``'s dtype, computed in >= f32.

    The factor is ``max_value / max(sigma, max_value)``, exactly ``1.0`` when ``sigma <=
    max_value``, so such a ``w`` comes back bit for bit; no 0/0 for a zero ``w``.
    """
    dtype = accumulation_dtype(w.dtype)
    bound = jnp.asarray(max_value, dtype)
    scale = bound / jnp.maximum(sigma.astype(dtype), bound)
    return (w.astype(dtype) * scale).astype(w.dtype)
