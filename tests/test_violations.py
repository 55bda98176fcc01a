"""`jaxcons.violations`: the distance of each governed parameter from its set."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcons


def _params():
    rng = np.random.default_rng(0)
    return {
        "kernel": jnp.asarray(rng.normal(size=(4, 3)) * 2, jnp.float32),
        "bias": jnp.asarray([0.5, -0.25, 0.0], jnp.float32),
        "conv": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
        "step": jnp.zeros((), jnp.int32),
    }


RULES = {
    "kernel": jaxcons.MaxNorm(1.0),
    "bias": jaxcons.NonNeg(),
    "conv": jaxcons.SpectralNorm(1.0),
}


def test_values_match_a_numpy_oracle():
    params = _params()
    got = jaxcons.violations(params, RULES)
    assert list(got) == ["bias", "conv", "kernel"]
    k = np.asarray(params["kernel"], np.float64)
    norms = np.linalg.norm(k, axis=0)
    projected = k * np.minimum(1.0, 1.0 / norms)
    np.testing.assert_allclose(got["kernel"], np.max(np.abs(k - projected)), rtol=1e-5)
    assert float(got["bias"]) == 0.25
    conv = np.asarray(params["conv"], np.float64)
    sigma = np.linalg.norm(conv.reshape(-1, 4), 2)  # Exact, as the SVD is.
    np.testing.assert_allclose(got["conv"], np.max(np.abs(conv - conv / sigma)), rtol=1e-4)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in got.values())


def test_zero_exactly_after_the_projection_and_under_jit():
    projected = jaxcons.apply_constraints(_params(), RULES)
    got = jax.jit(lambda p: jaxcons.violations(p, RULES))(projected)
    for path in ("bias", "kernel"):
        assert float(got[path]) == 0.0, path
    # The SVD of the rescaled kernel is within rounding of the bound.
    assert float(got["conv"]) < 1e-6


def test_bf16_parameters_are_measured_in_float32():
    params = {"w": jnp.asarray([-1.0, 2.0], jnp.bfloat16)}
    got = jaxcons.violations(params, {"w": jaxcons.Clip(0.0, 1.0)})
    assert got["w"].dtype == jnp.float32 and float(got["w"]) == 1.0


def test_errors_are_those_of_apply_constraints():
    with pytest.raises(ValueError, match=re.escape("constraint rule 'kernal' matches no")):
        jaxcons.violations(_params(), {"kernal": jaxcons.NonNeg()})
    with pytest.raises(TypeError, match="is a regularizer, not a constraint"):
        jaxcons.violations(_params(), {"kernel": jaxcons.L1(0.1)})
