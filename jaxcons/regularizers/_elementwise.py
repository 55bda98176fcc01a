"""Elementwise penalties: `L1`, `L2`, `L1L2`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcons._src import validation
from jaxcons._src.base import Regularizer
from jaxcons._src.numerics import add_penalties, upcast


class L1(Regularizer):
    """The L1 (lasso) penalty.

    .. math:: R(x) = \\ell_1 \\sum_i |x_i|

    Its proximal operator is soft-thresholding by ``step * l1``, which sets small weights to
    exactly zero (see `jaxcons.proximal`).

    Args:
      l1: the factor (finite, ``>= 0``). The string identifier ``"l1"`` gives 0.01.

    Raises:
      ValueError: if ``l1`` is not a finite number ``>= 0``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.L1(0.1)(jnp.array([[1.0, -2.0], [0.0, 3.0]]))
      Array(0.6, dtype=float32)
    """

    identifiers = ("l1",)
    keras_equivalent = "keras.regularizers.L1"
    traced_once = True

    def __init__(self, l1: float = 0.01):
        self.l1 = validation.factor("l1", l1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return l1_penalty(x, self.l1)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Soft-thresholding: ``sign(x) * max(|x| - step * l1, 0)``."""
        return prox_l1_l2(x, step, self.l1, 0.0)

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1}


class L2(Regularizer):
    """The L2 (ridge, weight decay) penalty.

    .. math:: R(x) = \\ell_2 \\sum_i x_i^2

    Its proximal operator is the shrinkage ``x / (1 + 2 * step * l2)``.

    Args:
      l2: the factor (finite, ``>= 0``). The string identifier ``"l2"`` gives 0.01.

    Raises:
      ValueError: if ``l2`` is not a finite number ``>= 0``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.L2(2.0)(jnp.ones((5, 5)))
      Array(50., dtype=float32)
    """

    identifiers = ("l2",)
    keras_equivalent = "keras.regularizers.L2"
    traced_once = True

    def __init__(self, l2: float = 0.01):
        self.l2 = validation.factor("l2", l2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return l2_penalty(x, self.l2)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Shrinkage: ``x / (1 + 2 * step * l2)``."""
        return prox_l1_l2(x, step, 0.0, self.l2)

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2}


class L1L2(Regularizer):
    """The L1 and L2 penalties together (the elastic net).

    .. math:: R(x) = \\ell_1 \\sum_i |x_i| + \\ell_2 \\sum_i x_i^2

    Both factors default to 0.0, as in Keras. The string identifier ``"l1_l2"`` gives
    ``L1L2(l1=0.01, l2=0.01)``, as the Keras documentation promises (Keras 3 itself rejects
    ``"l1_l2"`` and maps ``"l1l2"`` to a zero penalty). Its proximal operator soft-thresholds
    by ``step * l1`` and then shrinks by ``1 / (1 + 2 * step * l2)``.

    Args:
      l1: the L1 factor (finite, ``>= 0``).
      l2: the L2 factor (finite, ``>= 0``).

    Raises:
      ValueError: if a factor is not a finite number ``>= 0``.

    Example:
      >>> import jax.numpy as jnp, jaxcons
      >>> jaxcons.L1L2(l1=0.1, l2=0.2)(jnp.array([1.0, -2.0]))
      Array(1.3, dtype=float32)
    """

    identifiers = ("l1_l2",)
    keras_equivalent = "keras.regularizers.L1L2"
    traced_once = True

    @classmethod
    def from_identifier(cls) -> L1L2:
        """``L1L2(l1=0.01, l2=0.01)``, what Keras documents for ``"l1_l2"`` (Keras 3 itself
        rejects that identifier)."""
        return cls(l1=0.01, l2=0.01)

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = validation.factor("l1", l1)
        self.l2 = validation.factor("l2", l2)

    def __call__(self, x: jax.Array) -> jax.Array:
        terms = []
        if self.l1 != 0:
            terms.append(l1_penalty(x, self.l1))
        if self.l2 != 0:
            terms.append(l2_penalty(x, self.l2))
        if not terms:
            return super().__call__(x)
        return add_penalties(terms)

    def prox(self, x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
        """Elastic-net proximal step: soft-threshold by ``step * l1``, then shrink."""
        return prox_l1_l2(x, step, self.l1, self.l2)

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1, "l2": self.l2}


def l1_penalty(x: jax.Array, l1: float) -> jax.Array:
    """``l1 * sum(|x|)``."""
    return l1 * jnp.sum(jnp.abs(upcast(x)))


def l2_penalty(x: jax.Array, l2: float) -> jax.Array:
    """``l2 * sum(x ** 2)``."""
    x = upcast(x)
    return l2 * jnp.sum(x * x)


def prox_l1_l2(x: jax.Array, step: jax.typing.ArrayLike, l1: float, l2: float) -> jax.Array:
    """The proximal operator of ``step * (l1 * sum|z| + l2 * sum z^2)`` (the elastic net).

    .. math:: \\operatorname{prox}(x) = \\frac{\\operatorname{sign}(x)
       \\max(|x| - s\\,\\ell_1, 0)}{1 + 2 s\\,\\ell_2}

    Soft-thresholding by ``step * l1`` gives exact zeros wherever ``|x| <= step * l1``; the
    shrinkage ``1 / (1 + 2 * step * l2)`` follows. A zero factor skips its part, so ``l1 = l2 =
    0`` returns ``x`` unchanged.
    """
    y = upcast(x)
    s = jnp.asarray(step, y.dtype)
    if l1 != 0:
        t = s * l1
        y = jnp.where(jnp.abs(y) <= t, 0.0, y - jnp.sign(y) * t)
    if l2 != 0:
        y = y / (1.0 + 2.0 * l2 * s)
    return y.astype(x.dtype)
