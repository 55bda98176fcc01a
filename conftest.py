"""Test configuration: strict dtype promotion, and every warning is an error (pyproject)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def as_pure():
    """flax's function that strips nnx ``Variable`` wrappers off a state, leaving raw arrays.

    It is ``nnx.as_pure`` from flax 0.12.7 and ``nnx.pure`` before (deprecated from 0.12.7, and
    warnings are errors here); the tests run on both (see BUILD.md, "Version floors").
    """
    from flax import nnx

    return getattr(nnx, "as_pure", None) or nnx.pure
