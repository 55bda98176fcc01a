"""`TrainState`: flax's train state with exact constraints and a penalty for the loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.core import meta
from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT
from flax.training import train_state

from jaxcons._src.constrain import ConstrainState, _constrain, as_constraint_rules
from jaxcons._src.declarations import combine
from jaxcons._src.penalty import as_regularizer_rules, penalties, penalty
from jaxcons._src.rules import Rules, RulesLike

__all__ = ["TrainState"]


class TrainState(train_state.TrainState):
    """A flax ``TrainState`` that keeps its parameters on their constraints.

    ``apply_gradients`` runs ``tx`` as flax does, then projects every constrained parameter
    with `jaxcons.constrain` (so `NonNeg` and `Clip` parameters are exactly feasible and norm
    bounds hold within a few ulps); stateful constraints (`SpectralNorm`) keep their state in
    ``constraint_state``. `penalty` gives the regularization term to add to the loss.

    Constraints and regularizers come from the ``constraints`` / ``regularizers`` rules given
    to `create` and from the parameters' own declarations (`jaxcons.flax.with_constraints`
    boxes); rules and projection act on the unboxed parameters, so their paths are those of
    ``jaxcons.paths(nn.unbox(params))``. Metadata boxes (``Constrained``, ``nn.Partitioned``)
    are kept: ``tx`` sees the boxed trees, as with flax's ``TrainState``. Every projection
    and penalty acts leaf by leaf where the leaf lives: leaf shardings are kept.

    A plain flax ``TrainState`` with ``tx=optax.chain(..., jaxcons.constrain(rules))`` works
    too; this class adds declared rules, keeps the projection outside ``tx`` (so ``tx`` can
    be swapped without losing the constraints) and validates every rule in `create`.

    Attributes:
      constraints: the constraint `jaxcons.Rules` (declared and explicit, combined).
      regularizers: the regularizer `jaxcons.Rules` (declared and explicit, combined).
      constraint_tx: the `jaxcons.constrain` transform of ``constraints``.
      constraint_state: its `jaxcons.ConstrainState` (stateful constraints' state).

    Example:
      >>> import jax, jax.numpy as jnp, optax, flax.linen as nn, jaxcons, jaxcons.flax
      >>> model = nn.Dense(2)
      >>> x = jnp.ones((4, 3))
      >>> state = jaxcons.flax.TrainState.create(
      ...     apply_fn=model.apply, params=model.init(jax.random.key(0), x)["params"],
      ...     tx=optax.sgd(1.0), constraints={"bias": jaxcons.NonNeg()},
      ...     regularizers={"kernel": jaxcons.regularizers.L2(0.01)})
      >>> def loss_fn(params):
      ...   y = state.apply_fn({"params": params}, x)
      ...   return jnp.mean(y) + state.penalty(params)
      >>> state = state.apply_gradients(grads=jax.grad(loss_fn)(state.params))
      >>> state.params["bias"]
      Array([0., 0.], dtype=float32)
    """

    constraints: Rules = struct.field(pytree_node=False)
    regularizers: Rules = struct.field(pytree_node=False)
    constraint_tx: optax.GradientTransformation = struct.field(pytree_node=False)
    constraint_state: ConstrainState = struct.field(pytree_node=True)

    @classmethod
    def create(
        cls,
        *,
        apply_fn: Any,
        params: optax.Params,
        tx: optax.GradientTransformation,
        constraints: RulesLike | None = None,
        regularizers: RulesLike | None = None,
        prefer: str | None = None,
        strict: bool = True,
        scratch: bool | None = None,
        **kwargs: Any,
    ) -> TrainState:
        """Creates a state with ``step=0``, initialising ``tx`` and the constraints.

        Every rule is resolved against the parameters here, so a rule matching nothing
        (with ``strict=True``), a constraint that cannot act on a parameter's shape, or a
        parameter with both a declared and an explicit rule fails now, not at the first step.

        Args:
          apply_fn: usually ``model.apply``.
          params: the parameters (boxed or not), e.g. ``variables["params"]``.
          tx: the optax transformation.
          constraints: ``{pattern: constraint}`` rules, added to the declared ones.
          regularizers: ``{pattern: regularizer}`` rules, added to the declared ones.
          prefer: which wins for a parameter with both a declared and an explicit rule:
            ``None`` (an error), ``"declared"`` or ``"explicit"``; see
            `jaxcons.flax.constraint_rules`.
          strict: raise if a rule acts on no floating-point parameter (default).
          scratch: `jaxcons.constrain`'s CPU scratch buffer (off by default).
          **kwargs: further fields of a subclass.

        Returns:
          The new state.

        Raises:
          ValueError: as described above.
        """
        plain = meta.unbox(params)
        c_rules = as_constraint_rules(
            combine(params, constraints, prefer, "constraint", as_constraint_rules), strict=strict
        )
        r_rules = as_regularizer_rules(
            combine(params, regularizers, prefer, "regularizer", as_regularizer_rules),
            strict=strict,
        )
        r_rules.resolve(plain)  # Validate now: strictness and shape checks.
        # No rules and no declarations is plain flax: the transform then passes updates on.
        constraint_tx = _constrain(
            c_rules, prefer=None, strict=strict, scratch=scratch, optional=True
        )
        return super().create(
            apply_fn=apply_fn,
            params=params,
            tx=tx,
            constraints=c_rules,
            regularizers=r_rules,
            constraint_tx=constraint_tx,
            constraint_state=constraint_tx.init(plain),
            **kwargs,
        )

    def apply_gradients(self, *, grads: optax.Updates, **kwargs: Any) -> TrainState:
        """Applies ``tx`` to ``grads``, then the constraints; increments ``step``.

        .. math:: \\theta \\leftarrow P(\\theta + \\mathrm{tx}(g))

        Args:
          grads: gradients with the structure of ``params`` (boxed like them).
          **kwargs: further fields to replace.

        Returns:
          The updated state.

        Raises:
          ValueError: for fp8 "overwrite with gradient" parameters, which this state does
            not support.
        """
        # Structured like the params: a mapping (flax types them FrozenDict[str, Any]).
        if OVERWRITE_WITH_GRADIENT in cast(Mapping[str, Any], grads):
            raise ValueError(
                f"jaxcons.flax.TrainState does not support {OVERWRITE_WITH_GRADIENT!r} "
                "(fp8) parameters; use flax's TrainState with jaxcons.constrain in tx."
            )
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        plain = meta.unbox(self.params)
        # A ConstrainState is an optax state, though not of optax's OptState type (a None
        # count is no ArrayTree).
        updates, constraint_state = self.constraint_tx.update(
            meta.unbox(updates), cast(optax.OptState, self.constraint_state), plain
        )
        new_params = meta.replace_boxed(self.params, optax.apply_updates(plain, updates))
        return self.replace(
            step=self.step + 1,
            params=new_params,
            opt_state=opt_state,
            constraint_state=constraint_state,
            **kwargs,
        )

    def penalty(self, params: optax.Params) -> jax.Array:
        """The regularization penalty of ``params`` under this state's regularizers.

        Pass the parameters the loss differentiates (not ``self.params``)::

          loss = data_loss(params) + state.penalty(params)

        Args:
          params: parameters structured like ``self.params`` (boxed or not).

        Returns:
          A scalar in at least float32 (0.0 without regularizers).
        """
        if not len(self.regularizers):
            return jnp.zeros((), jnp.float32)
        return penalty(meta.unbox(params), self.regularizers, strict=self.regularizers.strict)

    def penalties(self, params: optax.Params) -> dict[str, jax.Array]:
        """The penalty of every regularized parameter, by path (for logging)."""
        if not len(self.regularizers):
            return {}
        return penalties(meta.unbox(params), self.regularizers, strict=self.regularizers.strict)
