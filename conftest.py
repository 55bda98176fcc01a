"""Test configuration: strict dtype promotion, and every warning is an error (pyproject)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
