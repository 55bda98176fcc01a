"""Fixtures shared by the test files.

The suite runs under strict dtype promotion (the root ``conftest.py``), so that jaxcons's own
code is checked for dtype mixing it does silently. optax's Adam does not pass it: its bias
correction raises a Python float to an int32 step count (``decay ** count``), which strict
promotion rejects. Rather than leave each test file to work around that its own way, this file
holds the one way:

* ``adam``: ``optax.adam`` with only its update run under standard promotion. Everything else
  in the test, jaxcons's transforms included, stays strict.
* ``standard_promotion``: a context for the code that needs standard promotion for some other
  reason. That covers optax code beyond Adam's update (``optax.MultiSteps``), code whose Adam
  the test cannot swap out (the demo's ``main``, the README's blocks), and code that mixes
  dtypes on purpose (bf16 params with float32 updates, Python float leaves).

It also holds ``assert_trees_equal``, the tree comparison that several files share, and the
hypothesis profiles: ``ci`` (derandomized: every run draws the same examples, so a green CI does
not depend on luck; ``make test`` and ``make test-min`` select it) and ``explore`` (random
examples, more of them: ``make test-explore``). Without ``--hypothesis-profile`` hypothesis's
own defaults apply.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import optax
import pytest

hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis.settings.register_profile("explore", max_examples=200, print_blob=True)


@functools.wraps(optax.adam)
def _adam(learning_rate: optax.ScalarOrSchedule, **kwargs: Any) -> optax.GradientTransformation:
    # functools.wraps gives this optax.adam's signature, which optax.inject_hyperparams reads.
    tx = optax.adam(learning_rate, **kwargs)

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update)


@pytest.fixture(scope="session")
def adam() -> Callable[..., optax.GradientTransformation]:
    """A factory ``adam(learning_rate, **kwargs)`` that builds ``optax.adam``, its update run
    under standard dtype promotion (its init is untouched)."""
    return _adam


@pytest.fixture(scope="session")
def standard_promotion() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A factory of contexts that run their body under standard dtype promotion:
    ``with standard_promotion(): ...``."""
    return functools.partial(jax.numpy_dtype_promotion, "standard")


def _assert_trees_equal(a: Any, b: Any) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.dtype == y.dtype, (x.dtype, y.dtype)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="session")
def assert_trees_equal() -> Callable[[Any, Any], None]:
    """``assert_trees_equal(a, b)``: the same tree structure, and leaf by leaf the same dtype and
    the same values (bit for bit; NaNs equal)."""
    return _assert_trees_equal
