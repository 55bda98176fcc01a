"""Scheduled bounds: hyper-parameters given as optax schedules, evaluated at constrain's count."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons

SCHEDULE = optax.linear_schedule(4.0, 1.0, 10)


def _run(constraint, params, steps):
    """Norm of every step's projected kernel, when the optimizer does not move it."""
    tx = jaxcons.chain(optax.sgd(0.0), constraints={"k": constraint})
    state = tx.init(params)
    step = jax.jit(tx.update)
    norms = []
    for _ in range(steps):
        updates, state = step(params, state, params)
        params = optax.apply_updates(params, updates)
        norms.append(float(np.linalg.norm(np.asarray(params["k"], np.float64))))
    return norms, state


def test_max_norm_follows_its_schedule_step_by_step():
    norms, state = _run(jaxcons.MaxNorm(SCHEDULE), {"k": jnp.array([[30.0], [40.0]])}, 12)
    # The oracle: optax's schedule itself, at counts 0, 1, ...: 4.0, 3.7, ..., 1.0, 1.0.
    expected = [4.0 - 0.3 * min(i, 10) for i in range(12)]
    np.testing.assert_allclose(norms, expected, rtol=1e-6)
    assert int(state[-1].count) == 12


def test_spectral_norm_and_min_max_norm_take_schedules():
    w = {"k": jnp.diag(jnp.array([10.0, 0.5]))}
    norms, _ = _run(jaxcons.SpectralNorm(SCHEDULE, n_power_iterations=5), w, 3)
    # diag(10, 0.5) is rescaled so that its largest singular value is the bound of the step:
    # its Frobenius norm is then bound * sqrt(10**2 + 0.5**2) / 10.
    expected = [b * np.sqrt(100.25) / 10 for b in (4.0, 3.7, 3.4)]
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
    lo = optax.linear_schedule(0.0, 2.0, 4)
    norms, _ = _run(jaxcons.MinMaxNorm(lo, 10.0, axis=None), {"k": 0.1 * jnp.ones((2, 2))}, 5)
    np.testing.assert_allclose(norms, [0.2, 0.5, 1.0, 1.5, 2.0], rtol=1e-6)


def test_state_has_a_count_only_for_scheduled_rules():
    params = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
    plain = jaxcons.constrain({"k": jaxcons.MaxNorm(1.0)}).init(params)
    assert plain.count is None and jax.tree_util.tree_leaves(plain) == []
    state = jaxcons.constrain({"k": jaxcons.MaxNorm(SCHEDULE), "b": "non_neg"}).init(params)
    assert state.count.dtype == jnp.int32 and int(state.count) == 0


def test_a_scheduled_constraint_called_directly_is_an_error():
    c = jaxcons.MaxNorm(SCHEDULE)
    msg = "has hyper-parameters given as schedules, which need a step count"
    with pytest.raises(ValueError, match=re.escape(msg)):
        c(jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.apply_constraints({"k": jnp.ones((2, 2))}, {"k": c})
    np.testing.assert_allclose(
        jnp.linalg.norm(c.at_step(10)(jnp.full((2, 1), 3.0))), 1.0, rtol=1e-6
    )
    assert jaxcons.MaxNorm(2.0).at_step(3) == jaxcons.MaxNorm(2.0)


def test_a_schedule_is_checked_at_step_0():
    bad = optax.linear_schedule(-1.0, 1.0, 10)
    msg = r"max_value must be >= 0, got Array\(-1\., .*\)\. \(the value at step 0 of the schedule"
    with pytest.raises(ValueError, match=msg):
        jaxcons.MaxNorm(bad)
    with pytest.raises(ValueError, match=r"rate must be in \(0, 1\].*value at step 0"):
        jaxcons.MinMaxNorm(rate=optax.linear_schedule(0.0, 1.0, 10))
    with pytest.raises(ValueError, match="MinMaxNorm needs min_value <= max_value"):
        jaxcons.MinMaxNorm(optax.constant_schedule(3.0), 2.0)


def test_a_scheduled_constraint_cannot_be_serialized():
    msg = "a hyper-parameter is a schedule, which is code, not data"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.constraints.serialize(jaxcons.MaxNorm(SCHEDULE))


def test_a_traced_hyper_parameter_says_to_use_a_schedule():
    msg = "For a hyper-parameter that changes during training, pass an optax schedule"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jax.jit(lambda v: jaxcons.MaxNorm(v)(jnp.ones(2)))(1.0)


def test_a_state_without_a_count_is_an_error_for_a_scheduled_rule():
    params = {"k": jnp.ones((2, 2))}
    tx = jaxcons.constrain({"k": jaxcons.MaxNorm(SCHEDULE)})
    with pytest.raises(
        ValueError, match="has a scheduled hyper-parameter, but this ConstrainState"
    ):
        tx.update(params, jaxcons.ConstrainState({}), params)


@pytest.mark.parametrize(
    ("make", "measure"),
    [
        (jaxcons.L1Ball, lambda w: np.sum(np.abs(w))),
        (lambda s: jaxcons.Simplex(s, axis=None), np.sum),
        (jaxcons.NuclearBall, lambda w: np.sum(np.linalg.svd(w, compute_uv=False))),
    ],
    ids=["l1_ball_radius", "simplex_total", "nuclear_ball_radius"],
)
def test_radii_and_totals_follow_their_schedules(make, measure):
    w0 = {"k": jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)) * 10, jnp.float32)}
    if make is jaxcons.L1Ball:
        w0 = {"k": w0["k"].reshape(-1, 1)}
    tx = jaxcons.chain(optax.sgd(0.0), constraints={"k": make(SCHEDULE)})
    state, params = tx.init(w0), w0
    step = jax.jit(tx.update)
    for i in range(4):
        updates, state = step(params, state, params)
        params = optax.apply_updates(params, updates)
        # The oracle: the schedule's own value at count i (4.0, 3.7, 3.4, 3.1).
        np.testing.assert_allclose(
            measure(np.asarray(params["k"], np.float64)), 4.0 - 0.3 * i, rtol=2e-5
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda s: jaxcons.Clip(0.0, s),
        lambda s: jaxcons.TopK(s),
        lambda s: jaxcons.Orthogonal(s),
        lambda s: jaxcons.PSD(s),
        lambda s: jaxcons.SingularValueClip(0.0, s),
    ],
    ids=["clip", "top_k", "orthogonal", "psd", "singular_value_clip"],
)
def test_a_schedule_where_none_is_taken_is_an_error_that_says_so(make):
    with pytest.raises(ValueError, match="this hyper-parameter takes no schedule"):
        make(optax.constant_schedule(1.0))
