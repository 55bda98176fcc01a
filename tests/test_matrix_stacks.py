"""Stacked matrices: ``batch_axes`` and ``view`` on the matrix constraints, the nuclear-norm
regularizer, `jaxcons.tangent`, `jaxcons.violations` and the spectral-norm bounds.

Every slice is checked against a NumPy float64 oracle of the projection of that slice alone,
written here from the definitions (polar factor, singular-value clipping and thresholding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import np_simplex

import jaxcons
from jaxcons import NuclearBall, NuclearNorm, Orthogonal, SingularValueClip, SpectralNorm

# ---------------------------------------------------------------------------------------------
# Float64 oracles of one matrix (a kernel of rank >= 2 viewed as (prod(leading), last)).


def _svd(m):
    m = np.asarray(m, np.float64)
    return np.linalg.svd(m.reshape(-1, m.shape[-1]), full_matrices=False)


def np_polar(m, scale=1.0):
    u, _, vh = _svd(m)
    return (scale * u @ vh).reshape(np.shape(m))


def np_spectral(m, c):
    s = _svd(m)[1][0]
    return np.asarray(m, np.float64) * min(1.0, c / s)


def np_sv_clip(m, a, b):
    u, s, vh = _svd(m)
    return (u * np.clip(s, a, b) @ vh).reshape(np.shape(m))


def np_nuclear_ball(m, r):
    u, s, vh = _svd(m)
    if s.sum() <= r:
        return np.asarray(m, np.float64)
    return (u * np_simplex(s, r) @ vh).reshape(np.shape(m))


def np_nuclear_norm(m):
    return _svd(m)[1].sum()


def np_svt(m, t):
    u, s, vh = _svd(m)
    return (u * np.maximum(s - t, 0) @ vh).reshape(np.shape(m))


def np_stiefel_tangent(w, g, scale=1.0):
    w = np.asarray(w, np.float64).reshape(-1, np.shape(w)[-1])
    g0 = np.asarray(g, np.float64)
    g = g0.reshape(w.shape)
    if w.shape[0] >= w.shape[1]:
        a = w.T @ g
        out = g - w @ (a + a.T) / (2 * scale**2)
    else:
        a = g @ w.T
        out = g - (a + a.T) @ w / (2 * scale**2)
    return out.reshape(g0.shape)


def slices(x, view, axes):
    """The matrices of ``x``: the view, then the batch axes moved to the front and flattened."""
    x = np.reshape(np.asarray(x, np.float64), view or np.shape(x))
    axes = tuple(a % x.ndim for a in axes)
    x = np.moveaxis(x, axes, tuple(range(len(axes))))
    return x.reshape((-1, *x.shape[len(axes) :]))


def unslice(parts, shape, view, axes):
    """The inverse of `slices`."""
    viewed = view or shape
    axes = tuple(a % len(viewed) for a in axes)
    batch = tuple(viewed[a] for a in axes)
    rest = tuple(d for i, d in enumerate(viewed) if i not in axes)
    x = np.asarray(parts).reshape(batch + rest)
    return np.moveaxis(x, tuple(range(len(axes))), axes).reshape(shape)


def oracle(fn, x, view, axes):
    return unslice([fn(m) for m in slices(x, view, axes)], np.shape(x), view, axes)


def rand(shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# (shape, view, batch_axes): experts first, heads in the middle, two batch axes, negative
# axes, a fused QKV weight through a view, a conv kernel per tap.
LAYOUTS = [
    ((3, 6, 4), None, (0,)),
    ((8, 3, 4), None, (1,)),
    ((2, 3, 5, 4), None, (0, 1)),
    ((5, 3, 4), None, (-2,)),
    ((24, 5), (6, 4, 5), (0,)),
    ((3, 3, 2, 4), None, (0, 1)),
]
LAYOUT_IDS = ["experts", "heads", "two_axes", "negative", "fused_qkv", "conv_taps"]
layouts = pytest.mark.parametrize(("shape", "view", "axes"), LAYOUTS, ids=LAYOUT_IDS)


@layouts
def test_orthogonal_projects_every_matrix_on_its_own(shape, view, axes):
    x = rand(shape)
    got = Orthogonal(scale=2.0, batch_axes=axes, view=view)(x)
    want = oracle(lambda m: np_polar(m, 2.0), x, view, axes)
    np.testing.assert_allclose(got, want, atol=2e-5)


@layouts
def test_spectral_norm_bounds_every_matrix(shape, view, axes):
    x = rand(shape, 1)
    got = SpectralNorm(1.0, batch_axes=axes, view=view)(x)
    np.testing.assert_allclose(got, oracle(lambda m: np_spectral(m, 1.0), x, view, axes), atol=2e-6)


@layouts
def test_singular_value_clip_clips_every_matrix(shape, view, axes):
    x = rand(shape, 2)
    got = SingularValueClip(0.5, 1.5, batch_axes=axes, view=view)(x)
    want = oracle(lambda m: np_sv_clip(m, 0.5, 1.5), x, view, axes)
    np.testing.assert_allclose(got, want, atol=2e-5)


@layouts
def test_nuclear_ball_projects_every_matrix(shape, view, axes):
    x = rand(shape, 3)
    got = NuclearBall(1.0, batch_axes=axes, view=view)(x)
    want = oracle(lambda m: np_nuclear_ball(m, 1.0), x, view, axes)
    np.testing.assert_allclose(got, want, atol=2e-5)


@layouts
def test_nuclear_norm_sums_and_thresholds_every_matrix(shape, view, axes):
    x = rand(shape, 4)
    r = NuclearNorm(0.5, batch_axes=axes, view=view)
    want = 0.5 * sum(np_nuclear_norm(m) for m in slices(x, view, axes))
    np.testing.assert_allclose(float(r(x)), want, rtol=1e-5)
    got = r.prox(x, 2.0)
    np.testing.assert_allclose(got, oracle(lambda m: np_svt(m, 1.0), x, view, axes), atol=2e-5)


@layouts
def test_tangent_projects_every_matrix_update(shape, view, axes):
    c = Orthogonal(batch_axes=axes, view=view)
    w = np.asarray(c(rand(shape, 5)))
    g = rand(shape, 6)
    parts = [
        np_stiefel_tangent(a, b)
        for a, b in zip(slices(w, view, axes), slices(g, view, axes), strict=True)
    ]
    np.testing.assert_allclose(c.tangent(w, g), unslice(parts, shape, view, axes), atol=2e-5)


def test_batch_axes_equal_a_hand_written_vmap():
    x = rand((4, 6, 3), 7)
    for c, one in [
        (Orthogonal(batch_axes=0), Orthogonal()),
        (SpectralNorm(1.0, batch_axes=0), SpectralNorm(1.0)),
        (SingularValueClip(0.2, 0.9, batch_axes=0), SingularValueClip(0.2, 0.9)),
        (NuclearBall(1.0, batch_axes=0), NuclearBall(1.0)),
    ]:
        np.testing.assert_allclose(c(x), jax.vmap(one)(x), rtol=1e-6, atol=1e-6)


def test_a_stack_of_one_matrix_is_the_matrix():
    x = rand((1, 6, 3), 8)
    np.testing.assert_array_equal(Orthogonal(batch_axes=0)(x)[0], Orthogonal()(x[0]))


# ---------------------------------------------------------------------------------------------
# Inside `constrain`: one state per matrix, every matrix in its set after every step.


def _train(adam, rules, params, lr, steps=30, tangent=None):
    tx = jaxcons.chain(adam(lr), constraints=rules, tangent=tangent)
    state = tx.init(params)
    target = jax.tree.map(lambda p: jnp.asarray(rand(p.shape, 11)), params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    history = []
    for _ in range(steps):
        params, state = step(params, state)
        history.append(params)
    return history, state


@pytest.mark.parametrize("lr", [1e-3, 3e-2, 0.3])
def test_orthogonal_experts_and_qkv_heads_stay_orthonormal_in_training(adam, lr):
    rules = {
        "experts": Orthogonal(batch_axes=0),
        "qkv": Orthogonal(view=(6, 4, 16), batch_axes=0),
    }
    params = jaxcons.apply_constraints(
        {"experts": jnp.asarray(rand((4, 32, 8))), "qkv": jnp.asarray(rand((24, 16), 1))}, rules
    )
    history, state = _train(adam, rules, params, lr, tangent=True)
    (us,) = [s for s in jax.tree.leaves(state) if getattr(s, "shape", ()) == (4, 8)]
    assert us.shape == (4, 8)
    for p in history:
        e = np.asarray(p["experts"], np.float64)
        assert np.max(np.abs(np.swapaxes(e, 1, 2) @ e - np.eye(8))) <= 1e-5
        q = np.asarray(p["qkv"], np.float64).reshape(6, 4, 16)
        assert np.max(np.abs(q @ np.swapaxes(q, 1, 2) - np.eye(4))) <= 1e-5


@pytest.mark.parametrize("lr", [1e-2, 0.3])
def test_spectral_norm_per_head_never_exceeds_its_bound_in_training(adam, lr):
    rules = {"attn": SpectralNorm(1.0, batch_axes=1)}
    params = {"attn": jnp.asarray(rand((16, 4, 8), 2, scale=0.5))}
    history, state = _train(adam, rules, params, lr)
    assert [x.shape for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (4, 8)]
    for p in history:
        heads = np.moveaxis(np.asarray(p["attn"], np.float64), 1, 0)
        sigma = np.linalg.norm(heads, ord=2, axis=(1, 2))
        assert sigma.max() <= 1.0
    assert sigma.min() >= 0.97  # Pulled outside the ball by the target, held at the bound.


def test_violations_reports_one_value_per_matrix():
    x = np.stack([np.eye(3), 2 * np.eye(3)]).astype(np.float32)
    v = jaxcons.violations({"w": x}, {"w": Orthogonal(batch_axes=0)})
    np.testing.assert_allclose(v["w"], [0.0, 1.0], atol=1e-6)


def test_serialization_round_trips_the_layout():
    for c in [
        Orthogonal(batch_axes=1, view=(4, 3, 5)),
        SpectralNorm(2.0, batch_axes=(0, -1)),
        SingularValueClip(0.1, 1.0, batch_axes=[0]),
        NuclearBall(3.0, view=[6, 2, 5], batch_axes=0),
    ]:
        again = jaxcons.constraints.deserialize(jaxcons.constraints.serialize(c))
        assert again == c and again.matrix_stack == c.matrix_stack
    r = NuclearNorm(0.1, batch_axes=0)
    again = jaxcons.regularizers.deserialize(jaxcons.regularizers.serialize(r))
    assert again == r and again.get_config()["batch_axes"] == (0,)
    assert Orthogonal().get_config() == {"scale": 1.0, "n_iterations": 3, "tol": None}


# ---------------------------------------------------------------------------------------------
# Errors: at construction, and when a rule meets a parameter (naming its path and shape).


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_axes": 1.5}, TypeError, r"batch_axes must be an int or a tuple of ints, got 1.5"),
        ({"batch_axes": (0, "a")}, TypeError, r"batch_axes entries must be ints, got 'a'"),
        ({"batch_axes": True}, TypeError, r"batch_axes must be an int .* got True"),
        ({"batch_axes": (True,)}, TypeError, r"batch_axes entries must be ints, got True"),
        ({"batch_axes": (0, 0)}, ValueError, r"batch_axes=\(0, 0\) names an axis twice"),
        ({"view": 12}, TypeError, r"view must be None or a tuple of ints, got 12"),
        ({"view": (12,)}, ValueError, r"view must be a shape of at least two axes.*\(12,\)"),
        ({"view": (3, 0, 4)}, ValueError, r"view must be a shape .* each >= 1, got \(3, 0, 4\)"),
        (
            {"view": (3, 4), "batch_axes": 0},
            ValueError,
            r"batch_axes=\(0,\) leave 1 matrix axis of the view \(3, 4\)",
        ),
        (
            {"view": (3, 4, 5), "batch_axes": 3},
            ValueError,
            r"batch_axes=\(3,\): axis 3 is out of range for the view",
        ),
    ],
)
@pytest.mark.parametrize("cls", [Orthogonal, SpectralNorm, SingularValueClip, NuclearNorm])
def test_bad_layouts_are_errors_at_construction(cls, kwargs, error, match):
    with pytest.raises(error, match=f"{cls.__name__} {match}"):
        cls(**kwargs)


def test_nuclear_ball_names_itself_in_layout_errors():
    with pytest.raises(ValueError, match=r"NuclearBall batch_axes=\(0, 0\)"):
        NuclearBall(1.0, batch_axes=(0, 0))


@pytest.mark.parametrize(
    ("constraint", "shape", "match"),
    [
        (
            Orthogonal(view=(4, 3, 5)),
            (7, 5),
            r"Orthogonal view=\(4, 3, 5\) has 60 entries, but parameter 'moe/w' has shape "
            r"\(7, 5\) \(35 entries\)",
        ),
        (
            SpectralNorm(batch_axes=3),
            (2, 3, 4),
            r"SpectralNorm batch_axes=\(3,\): axis 3 is out of range for parameter 'moe/w' of "
            r"shape \(2, 3, 4\) \(rank 3",
        ),
        (
            SingularValueClip(batch_axes=(0, -3)),
            (2, 3, 4),
            r"SingularValueClip batch_axes=\(0, -3\) names an axis twice for parameter 'moe/w' "
            r"of shape \(2, 3, 4\)",
        ),
        (
            NuclearBall(1.0, batch_axes=(0, 1)),
            (2, 3, 4),
            r"NuclearBall batch_axes=\(0, 1\) leave 1 matrix axis of parameter 'moe/w' of "
            r"shape \(2, 3, 4\)",
        ),
        (
            Orthogonal(batch_axes=0),
            (5, 4),
            r"Orthogonal batch_axes=\(0,\) leave 1 matrix axis of parameter 'moe/w'",
        ),
    ],
)
def test_a_layout_that_does_not_fit_a_parameter_names_its_path(constraint, shape, match):
    params = {"moe": {"w": jnp.ones(shape)}}
    with pytest.raises(ValueError, match=match):
        jaxcons.apply_constraints(params, {"moe/w": constraint})
    with pytest.raises(ValueError, match=match):
        jaxcons.constrain({"moe/w": constraint}).init(params)


def test_a_nuclear_norm_layout_that_does_not_fit_names_its_path():
    match = r"NuclearNorm batch_axes=\(1, 2\) leave 1 matrix axis of parameter 'w' of shape"
    with pytest.raises(ValueError, match=match):
        jaxcons.penalty({"w": jnp.ones((3, 4, 5))}, {"w": NuclearNorm(0.1, batch_axes=(1, 2))})


def test_a_view_of_the_wrong_size_is_an_error_when_called_directly():
    with pytest.raises(ValueError, match=r"view=\(2, 2, 2\) has 8 entries, but the array"):
        Orthogonal(view=(2, 2, 2))(jnp.ones((3, 3)))


def test_a_start_far_from_the_set_names_the_matrix():
    w = np.stack([np.eye(4, 3), 3.0 * np.eye(4, 3), np.eye(4, 3)]).astype(np.float32)
    match = r"singular values of matrix \(1,\) \(batch index\) of this kernel .* \[3, 3\]"
    with pytest.raises(ValueError, match=match):
        Orthogonal(batch_axes=0).init(jnp.asarray(w))
    rules = {"layers/moe": Orthogonal(batch_axes=0)}
    with pytest.raises(ValueError, match=r"constrain, parameter 'layers/moe': .* matrix \(1,\)"):
        jaxcons.constrain(rules).init({"layers": {"moe": jnp.asarray(w)}})


def test_numpy_integer_batch_axes_are_ints():
    assert Orthogonal(batch_axes=np.int64(1)).matrix_stack.batch_axes == (1,)


def test_stacked_parameters_in_order_are_unchanged_bit_for_bit():
    # Stacked parameters are projected one after another (a data dependence on the previous
    # result, `x * (1 + 0 * k)`): every result must equal the parameter projected alone, in
    # float16 too, whose range a count of 180000 entries would overflow.
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.normal(size=(300, 300, 2)), jnp.float16) for k in "abc"}
    rules = {k: SingularValueClip(0.0, 1.0, batch_axes=2) for k in "abc"}
    together = jaxcons.apply_constraints(params, rules)
    for k in "abc":
        np.testing.assert_array_equal(together[k], rules[k](params[k]))
