"""`SpectralNorm`: a bound on the largest singular value, tracked by power iteration."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxcons._src.base import StatefulConstraint
from jaxcons._src.linalg import (
    as_matrix,
    exact_sigma,
    initial_vector,
    like_batch_axes,
    like_last_axis,
    power_iteration,
    top_right_singular_vector,
)
from jaxcons._src.matrix_stacks import ONE_MATRIX, MatrixStack, matrix_stack
from jaxcons._src.numerics import accumulation_dtype
from jaxcons._src.rounding import unit_roundoff
from jaxcons._src.schedules import Evaluated, Scheduled, schedulable
from jaxcons._src.spectral_bound import certified_spectral_bound
from jaxcons._src.validation import positive_int, positive_number


class SpectralNormState(NamedTuple):
    """State of `SpectralNorm` for one kernel, carried in `jaxcons.ConstrainState`.

    Attributes:
      u: the unit-norm estimate of the kernel's top right singular vector, the kernel being
        viewed as a ``(rows, out)`` matrix (``out`` its last axis). Shape ``(out,)``, as the
        ``u`` of ``flax.linen.SpectralNorm`` and ``keras.layers.SpectralNormalization``: it is
        the smaller vector for convolution kernels and can be sharded like the kernel's last
        axis. Dtype float32 (float64 for float64 kernels). With ``batch_axes``, one vector
        per matrix: shape ``batch_shape + (columns,)``.
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
    float32, or float64 for float64 kernels).

    Two ways to compute ``sigma``:

    * Called directly (or through `jaxcons.apply_constraints`), it is exact (an SVD); rounding
      the scaled kernel back to its dtype can leave ``sigma`` a few ulps above ``max_value``
      (up to ~0.2% for bfloat16).
    * Inside `jaxcons.constrain`, `project` scales by a *certified upper bound* on ``sigma``
      (`jaxcons.spectral_norm_bound`), so the returned kernel provably has ``sigma <= max_value``,
      the rounding of every operation and of the result's dtype included. The bound is one
      Gram matrix ``W^T W`` (the smaller one), an estimate of its top eigenvalue by Lanczos
      started from the vector in `SpectralNormState`, and a Cholesky factorization of
      ``tau I - W^T W`` just above that estimate that proves it (see
      `jaxcons.spectral_norm_bound`; a `jax.lax.cond` tries looser ones when it fails). A
      kernel the certificate proves inside the ball comes back bit for bit (one within ~1e-4
      of the boundary may be scaled by that much); one outside is put within 0.3% of the
      bound in float32 (measured: ``sigma / max_value`` in [0.998, 1.0] under Adam, README),
      within
      ~0.3% plus ``2^-8 || |W| ||_2 / sigma`` for bfloat16 (its rounding must be covered).
      `project` still runs ``n_power_iterations`` steps of power iteration (Miyato et al.,
      2018) from ``state.u``, which the transform carries across training steps: they give
      the new state (as before) and the derivative of the scale. `init` starts that vector at
      the kernel's exact top right singular vector (one SVD, once).

    Only kernels of rank >= 2 are accepted: a rank-1 or rank-0 parameter (a bias, a scale)
    matched by a too-broad rule raises a ``ValueError`` naming its path and shape. To bound
    a vector's L2 norm, use ``MaxNorm(max_value, axis=0)``.

    **Stacked matrices.** With ``batch_axes``, every index of those axes is its own matrix,
    bounded on its own, with its own power-iteration vector: ``SpectralNorm(1.0,
    batch_axes=1)`` on an attention projection ``(embed, heads, head_dim)`` bounds every head,
    ``batch_axes=0`` on ``(experts, d_in, d_out)`` every expert. ``view`` first reshapes the
    parameter (same size): ``view=(3 * heads, head_dim, dim), batch_axes=0`` on a fused QKV
    weight ``(3 * heads * head_dim, dim)`` gives one matrix per head of q, k and v. The
    matrices are processed together (nested `jax.vmap`); a parameter sharded along a batch
    axis is bounded where it lives, and only scalars cross devices (one flag: whether any
    certificate needs its rare second try; a count that orders stacked parameters).

    Args:
      max_value: the bound ``c`` on the largest singular value (finite, > 0), or an optax
        schedule of it (evaluated at `jaxcons.constrain`'s step count).
      n_power_iterations: power-iteration steps per `project` call (a positive int).
      batch_axes: axes (of ``view``, when given) whose every index is a separate matrix: an
        int or a tuple of ints; ``()`` (the default) for one matrix per parameter.
      view: ``None``, or a shape of the parameter's size to reshape it to before
        ``batch_axes`` apply.

    Raises:
      ValueError: if ``max_value`` is not finite and > 0, or ``n_power_iterations`` is not a
        positive int; for a view with fewer than two axes or an entry < 1, or repeated batch
        axes; when applied to a parameter of rank < 2, or (naming its path and shape) one the
        view does not fit, a batch axis out of range, or batch axes that leave fewer than two
        matrix axes.
      TypeError: for ``batch_axes`` or ``view`` that are not ints.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0]])
      >>> jaxcons.SpectralNorm(1.5)(w)
      Array([[1.5, 0. ],
             [0. , 0.5]], dtype=float32)
      >>> c = jaxcons.SpectralNorm(1.5, n_power_iterations=20)
      >>> w2, state = c.project(w, c.init(w))  # Scaled by a certified bound on sigma.
      >>> bool(jnp.linalg.norm(w2, 2) <= 1.5)
      True
      >>> w2.round(4)
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

    def __init__(
        self,
        max_value: float = 1.0,
        n_power_iterations: int = 1,
        *,
        batch_axes: int | tuple[int, ...] = (),
        view: tuple[int, ...] | None = None,
    ):
        self._max = schedulable("max_value", max_value, positive_number)
        self.max_value = max_value if isinstance(self._max, Scheduled) else self._max
        self.n_power_iterations = positive_int("n_power_iterations", n_power_iterations)
        self.matrix_stack: MatrixStack = matrix_stack("SpectralNorm", view, batch_axes)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` for a parameter of rank < 2, or one that ``view`` and
        ``batch_axes`` do not fit."""
        if not self.matrix_stack.trivial:
            self.matrix_stack.check("SpectralNorm", tuple(shape), path)
        elif len(shape) < 2:
            where = f"parameter {path!r}" if path else "the array"
            raise ValueError(
                f"SpectralNorm acts on kernels of rank >= 2, but {where} has shape {shape}. "
                "Match only kernels (e.g. '**/kernel'), or bound a vector's L2 norm with "
                "MaxNorm(max_value, axis=0)."
            )

    def __call__(self, w: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        self.check(w.shape, "")
        bound = cast(Evaluated, self._max)
        return self.matrix_stack.apply(
            lambda m: clip_spectral_norm(m, exact_sigma(as_matrix(m)), bound), w
        )

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

        def start(kernel: jax.Array) -> jax.Array:
            matrix = as_matrix(kernel)
            fallback = initial_vector(kernel.shape[-1], matrix.dtype)
            return jnp.where(jnp.any(matrix != 0), top_right_singular_vector(matrix), fallback)

        stack = self.matrix_stack
        if not stack.trivial:
            kernels = stack.split(w)
            u = stack.each(start)(kernels)
            return SpectralNormState(u=like_batch_axes(u, kernels, len(stack.batch_axes)))
        return SpectralNormState(u=like_last_axis(start(w), w))

    def project(
        self, w: jax.Array, state: SpectralNormState
    ) -> tuple[jax.Array, SpectralNormState]:
        """Scales ``w`` into the ball by a certified upper bound on ``sigma``.

        ``n_power_iterations`` steps of power iteration from ``state.u`` give the new state
        (as before) and the derivative; the certificate starts from the new vector.
        """
        w = jnp.asarray(w)
        self.check(tuple(w.shape), "")
        stack = self.matrix_stack
        kernel = stack.split(w.astype(accumulation_dtype(w.dtype)))
        n = self.n_power_iterations
        u = like_batch_axes(state.u, kernel, len(stack.batch_axes))
        sigma, u = stack.each(lambda k, u: power_iteration(k, u, n))(kernel, u)
        projected = clip_to_certified_bound(w, sigma, u, cast(Evaluated, self._max), stack)
        return projected, SpectralNormState(u=u)

    def get_config(self) -> dict[str, Any]:
        return {
            "max_value": self.max_value,
            "n_power_iterations": self.n_power_iterations,
            **self.matrix_stack.config(),
        }


def clip_spectral_norm(w: jax.Array, sigma: jax.Array, max_value: Evaluated) -> jax.Array:
    """Returns ``w * min(1, max_value / sigma)`` in ``w``'s dtype, computed in >= f32.

    The factor is ``max_value / max(sigma, max_value)``, exactly ``1.0`` when ``sigma <=
    max_value``, so such a ``w`` comes back bit for bit; no 0/0 for a zero ``w``.
    """
    dtype = accumulation_dtype(w.dtype)
    bound = jnp.asarray(max_value, dtype)
    scale = bound / jnp.maximum(sigma.astype(dtype), bound)
    return (w.astype(dtype) * scale).astype(w.dtype)


# The certificate is first tried 1e-4 (float32; 1e-12 in float64) above the Lanczos estimate
# of sigma^2.
CERTIFICATE_RTOL = 1e-4
CERTIFICATE_RTOL_FLOAT64 = 1e-12


def clip_to_certified_bound(
    w: jax.Array,
    sigma: jax.Array,
    u: jax.Array,
    max_value: Evaluated,
    stack: MatrixStack = ONE_MATRIX,
) -> jax.Array:
    """Returns ``w`` if a certificate proves ``sigma_max(w) <= max_value``, else ``w * s`` in
    ``w``'s dtype with ``s`` small enough that the result provably has ``sigma_max <=
    max_value``, rounding included.

    With ``U`` the certified bound and ``N >= || |w| ||_2`` (both from
    `jaxcons.spectral_norm_bound`, started from ``u``), the returned kernel is
    ``fl(fl32(s w))``: each entry is off by at most ``(u_32 + u_d (1 + u_32))`` relatively (``u_d``
    the unit roundoff of ``w``'s dtype where it is narrower than the compute dtype), plus less
    than the smallest normal number ``eta_d`` of that dtype where it underflows, so

    .. math:: \\sigma_{\\max}(\\tilde W) \\le s U + s (u_{32} + u_d (1 + u_{32})) N
        + \\sqrt{\\mathrm{size}}\\, \\eta_d \\le c

    for ``s = (c - sqrt(size) eta_d) / (U + (u_32 + u_d (1 + u_32)) N)``, rounded down. The
    derivative of ``s`` is that of ``c / sigma`` scaled by ``U / sigma``, ``sigma`` being the
    power-iteration estimate (whose derivative is ``v u^T``), as before the certificate.
    With a non-trivial ``stack``, all of this holds per matrix (``sigma``, ``u`` and the
    bounds have the batch shape).
    """
    dtype = accumulation_dtype(w.dtype)
    kernel = w.astype(dtype)
    c = jnp.asarray(max_value, dtype)
    cert = certified_spectral_bound(
        kernel,
        u,
        rtol=CERTIFICATE_RTOL_FLOAT64 if dtype == np.float64 else CERTIFICATE_RTOL,
        stop_below=c,
        stack=stack,
    )
    unit = unit_roundoff(dtype)
    narrow = np.dtype(w.dtype) != dtype
    unit_out = unit_roundoff(w.dtype) if narrow else 0.0
    relative = unit + unit_out * (1 + unit)
    size = w.size // max(1, sigma.size)  # Entries of one matrix.
    underflow = math.sqrt(size) * float(np.finfo(w.dtype).tiny)
    up = jnp.asarray(jnp.inf, dtype)
    down = jnp.asarray(0, dtype)
    denominator = jnp.nextafter(cert.bound + jnp.nextafter(relative * cert.abs_norm, up), up)
    numerator = jnp.maximum(jnp.nextafter(c - underflow, down), 0)
    scale = jnp.nextafter(numerator / denominator, down)
    # The value is `scale`; the derivative that of c / sigma times U / sigma.
    sigma = sigma.astype(dtype)
    frozen = jax.lax.stop_gradient(sigma)
    slope = jax.lax.stop_gradient(
        jnp.where(frozen > 0, scale / jnp.where(frozen > 0, frozen, 1), 0)
    )
    scale = jax.lax.stop_gradient(scale) - slope * (sigma - frozen)
    parts = stack.split(kernel)
    scaled = (parts * scale.reshape(scale.shape + (1,) * (parts.ndim - scale.ndim))).astype(w.dtype)
    return stack.merge(stack.select(cert.bound <= c, stack.split(w), scaled), w.shape)
