"""Shared fixtures of the test suite (the root conftest.py sets strict promotion)."""

import jax
import optax
import pytest


def _adam(learning_rate, **kwargs) -> optax.GradientTransformation:
    """`optax.adam`, its update run with standard dtype promotion.

    optax's bias correction computes ``decay ** count`` (a Python float to an int32 power),
    which the strict promotion the suite runs under rejects inside optax itself.
    """
    tx = optax.adam(learning_rate, **kwargs)

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update)


@pytest.fixture
def adam():
    """A factory like `optax.adam` that runs under the suite's strict dtype promotion."""
    return _adam
