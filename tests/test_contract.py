"""The constraint contract: every constraint through the same checks, driven by one table.

Each row names a constraint, the shape it is tried on, a strictly feasible input, a feasibility
predicate written here in numpy (float64), and flags for the checks that apply to it:

* ``exact``: elementwise (or value-copying) maths, so jit vs eager and idempotency are bit for
  bit; otherwise they hold within a few ulps of the dtype.
* ``idempotent``: ``P(P(w)) == P(w)`` (not for ``MinMaxNorm(rate<1)`` nor tf.keras's radial).
* ``keeps_feasible``: a strictly feasible input comes back bit for bit.
* ``at_zero``: what the zero tensor maps to, when not zero (a simplex has no zero point).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons
from jaxcons.constraints import (
    PSD,
    Clip,
    Constraint,
    Intersection,
    L1Ball,
    MaxNorm,
    MinMaxNorm,
    NofM,
    NonNeg,
    NuclearBall,
    Orthogonal,
    RadialConstraint,
    Simplex,
    SingularValueClip,
    SpectralNorm,
    TopK,
    UnitNorm,
)

DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]


class Symmetrize(Constraint):
    """A custom constraint: the orthogonal projection onto symmetric matrices."""

    def __call__(self, w):
        return (w + w.T) / 2


# --- feasibility predicates (numpy, float64; `x` is the input, `y` the output) -------------------


def _norms(y, axes):
    return np.sqrt(np.sum(np.square(y), axis=tuple(axes)))


def _max_norm(c, axes):
    def feasible(x, y, tol):
        return bool(np.all(_norms(y, axes) <= c * (1 + tol)))

    return feasible


def _min_max_norm(a, b, axes):
    def feasible(x, y, tol):
        n = _norms(y, axes)
        return bool(np.all((n == 0) | ((n >= a * (1 - tol)) & (n <= b * (1 + tol)))))

    return feasible


def _min_max_norm_rate(a, b, rate, axes):
    """One step of rate `r` moves each out-of-range norm a fraction `r` of the way in."""

    def feasible(x, y, tol):
        nx, ny = _norms(x, axes), _norms(y, axes)
        inside = (nx == 0) | ((nx >= a) & (nx <= b))
        target = np.where(inside, nx, rate * np.clip(nx, a, b) + (1 - rate) * nx)
        return bool(np.all(np.abs(ny - target) <= 2 * tol * np.maximum(nx, 1)))

    return feasible


def _unit_norm(axes):
    def feasible(x, y, tol):
        n = _norms(y, axes)
        return bool(np.all((n == 0) | (np.abs(n - 1) <= tol)))

    return feasible


def _rings(k):
    """Chebyshev ring of each cell of a k x k grid (0 = centre cell or central 2x2 block)."""
    i = np.arange(k)
    d = np.abs(2 * i - (k - 1))
    return np.maximum.outer(d, d) // 2


def _ring_constant(x, y, tol):
    rings = _rings(y.shape[0])
    scale = max(float(np.max(np.abs(y))), 1e-30)
    for r in np.unique(rings):
        cells = y[rings == r]  # (cells, in, out)
        if np.any(cells.max(axis=0) - cells.min(axis=0) > tol * scale):
            return False
    return True


def _spectral(c):
    def feasible(x, y, tol):
        return bool(np.linalg.norm(y.reshape(-1, y.shape[-1]), 2) <= c * (1 + tol))

    return feasible


def _spectral_certified(c):
    """Inside `constrain`, `SpectralNorm` scales the kernel by `c / U`, `U` a certified upper
    bound of its largest singular value: never above `c` (exact float64 SVD of the float32
    result), within 3% of it when the bound acts, and a scaled copy of `x`. A kernel inside may
    be scaled by at most about 1e-3 (the certificate's margin near the boundary)."""

    def feasible(x, y, tol):
        s = float(np.sum(x * y) / np.sum(x * x))
        scaled = np.allclose(y, s * x, rtol=tol, atol=tol * float(np.max(np.abs(x))))
        sigma_x = np.linalg.norm(x.reshape(-1, x.shape[-1]), 2)
        sigma_y = np.linalg.norm(y.reshape(-1, y.shape[-1]), 2)
        if sigma_x <= c:
            return scaled and 1 - 1e-3 <= s <= 1 and sigma_y <= c
        return scaled and 0.97 * c <= sigma_y <= c

    return feasible


def _singular_values(y):
    return np.linalg.svd(y.reshape(-1, y.shape[-1]), compute_uv=False)


def _singular_band(a, b):
    def feasible(x, y, tol):
        s = _singular_values(y)
        return bool(np.all((s >= a * (1 - tol)) & (s <= b * (1 + tol))))

    return feasible


def _nuclear(r):
    def feasible(x, y, tol):
        return bool(np.sum(_singular_values(y)) <= r * (1 + tol))

    return feasible


def _psd(c):
    def feasible(x, y, tol):
        scale = max(float(np.max(np.abs(y))), 1e-30)
        symmetric = np.all(np.abs(y - np.swapaxes(y, -1, -2)) <= tol * scale)
        return bool(symmetric and np.all(np.linalg.eigvalsh(y) >= c - tol * scale))

    return feasible


def _orthonormal(s):
    """Columns (rows, if wide) of the (rows, out) view orthonormal, times `s`."""

    def feasible(x, y, tol):
        m = y.reshape(-1, y.shape[-1]) / s
        gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        return bool(np.max(np.abs(gram - np.eye(len(gram)))) <= tol)

    return feasible


def _box(lo, hi):
    def feasible(x, y, tol):
        return bool(np.all((y >= lo) & (y <= hi)))

    return feasible


def _l1_ball(r, axes):
    def feasible(x, y, tol):
        return bool(np.all(np.sum(np.abs(y), axis=tuple(axes)) <= r * (1 + tol)))

    return feasible


def _simplex(total, axes):
    def feasible(x, y, tol):
        sums = np.sum(y, axis=tuple(axes))
        return bool(np.all(y >= -tol * total) and np.all(np.abs(sums - total) <= tol * total))

    return feasible


def _slices_last(a, axes):
    """``a`` with the slice axes moved last and flattened: ``(n_slices, slice_size)``."""
    rest = [i for i in range(a.ndim) if i not in axes]
    return np.transpose(a, rest + list(axes)).reshape(-1, int(np.prod([a.shape[i] for i in axes])))


def _top_k(k, axes):
    """At most k non-zeros per slice, copies of the input's entries, and the largest ones:
    entries clearly above the k-th largest magnitude are kept, those clearly below are zero."""

    def feasible(x, y, tol):
        xs, ys = _slices_last(x, axes), _slices_last(y, axes)
        scale = tol * max(float(np.max(np.abs(x))), 1e-30)
        kth = -np.sort(-np.abs(xs), axis=1)[:, k - 1 : k]
        kept = ys != 0
        return bool(
            np.all(kept.sum(axis=1) <= k)
            and np.all(np.abs(ys - xs)[kept] <= scale)
            and np.all(kept | (np.abs(xs) <= kth + scale))
            and np.all(np.abs(ys - xs)[np.abs(xs) > kth + scale] <= scale)
        )

    return feasible


def _n_of_m(n, m):
    """Along axis 0, every group of m consecutive entries is a top-n slice."""
    top = _top_k(n, [1])

    def feasible(x, y, tol):
        def grouped(a):
            return a.reshape(a.shape[0] // m, m, -1)

        return top(grouped(x), grouped(y), tol)

    return feasible


def _both(*predicates):
    def feasible(x, y, tol):
        return all(p(x, y, tol) for p in predicates)

    return feasible


def _symmetric(x, y, tol):
    y_t = np.swapaxes(y, -1, -2)
    return bool(np.all(np.abs(y - y_t) <= tol * max(float(np.max(np.abs(y))), 1e-30)))


# --- strictly feasible inputs ---------------------------------------------------------------------


def _with_norms(w, axes, norms):
    """Rescales the vectors of `w` along `axes` to the given norms."""
    n = np.sqrt(np.sum(np.square(w), axis=tuple(axes), keepdims=True))
    return w / n * np.reshape(norms, n.shape)


def _feasible_vectors(axes, low, high):
    def make(rng, shape):
        w = rng.normal(size=shape)
        n_vectors = int(np.prod([s for i, s in enumerate(shape) if i not in axes]))
        return _with_norms(w, axes, rng.uniform(low, high, size=n_vectors))

    return make


def _signed_one_hot(rng, shape):
    w = np.zeros(shape)
    w[rng.integers(0, shape[0], size=shape[1]), np.arange(shape[1])] = rng.choice([-1, 1], shape[1])
    return w


def _ring_constant_kernel(rng, shape):
    values = rng.normal(size=(shape[0], *shape[2:]))
    return values[_rings(shape[0])]


def _small_spectrum(rng, shape):
    w = rng.normal(size=shape)
    return w / np.linalg.norm(w.reshape(-1, shape[-1]), 2) * 0.5


def _feasible_l1(axes, low, high):
    def make(rng, shape):
        w = rng.normal(size=shape)
        n = np.sum(np.abs(w), axis=tuple(axes), keepdims=True)
        return w / n * rng.uniform(low, high, size=n.shape)

    return make


def _with_singular_values(low, high):
    def make(rng, shape):
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        u, _ = np.linalg.qr(rng.normal(size=(rows, min(rows, cols))))
        v, _ = np.linalg.qr(rng.normal(size=(cols, min(rows, cols))))
        s = rng.uniform(low, high, size=min(rows, cols))
        return ((u * s) @ v.T).reshape(shape)

    return make


def _on_simplex(rng, shape):
    """Columns of multiples of 1/64 summing to 1 exactly (in every dtype)."""
    counts = rng.multinomial(64, np.ones(shape[0]) / shape[0], size=shape[1]).T
    return counts / 64.0


def _capped_simplex(rng, shape):
    """Columns summing to 1 exactly with every entry at most 0.375."""
    cols = [rng.permutation([24, 20, 12, 8]) / 64.0 for _ in range(shape[1])]
    return np.stack(cols, axis=1)


def _sparse(k_of):
    """A normal tensor with at most ``k_of(shape)`` non-zeros in every slice of axis 0 groups."""

    def make(rng, shape):
        w = rng.normal(size=shape)
        keep = np.zeros(shape, bool)
        flat = keep.reshape(-1)
        flat[rng.choice(flat.size, size=k_of(shape), replace=False)] = True
        return np.where(keep, w, 0.0)

    return make


def _nuclear_inside(r):
    def make(rng, shape):
        w = rng.normal(size=shape)
        return w * (0.7 * r / np.sum(_singular_values(w)))

    return make


def _two_of_four(rng, shape):
    w = rng.normal(size=shape)
    groups = w.reshape(shape[0] // 4, 4, -1)
    for g in range(groups.shape[0]):
        for j in range(groups.shape[2]):
            groups[g, rng.choice(4, size=2, replace=False), j] = 0.0
    return groups.reshape(shape)


def _positive_definite(rng, shape):
    a = rng.normal(size=shape)
    eye = np.eye(shape[-1])
    spd = a @ np.swapaxes(a, -1, -2) / shape[-1] + 0.5 * eye
    return (spd + np.swapaxes(spd, -1, -2)) / 2


def _signed_permutation(s):
    """Orthonormal columns exactly representable in every dtype: signed one-hot columns in
    distinct rows, times `s`."""

    def make(rng, shape):
        w = np.zeros(shape)
        rows = rng.permutation(shape[0])[: shape[1]]
        w[rows, np.arange(shape[1])] = s * rng.choice([-1, 1], shape[1])
        return w

    return make


def _symmetric_matrix(rng, shape):
    a = rng.normal(size=shape)
    return (a + np.swapaxes(a, -1, -2)) / 2


# --- the table ----------------------------------------------------------------------------------


def _each_matrix(feasible, view, axis):
    """``feasible`` for every matrix of a stack: the view, then each index of ``axis``."""

    def check(x, y, tol):
        xs = np.moveaxis(np.reshape(x, view or x.shape), axis, 0)
        ys = np.moveaxis(np.reshape(y, view or y.shape), axis, 0)
        return all(feasible(a, b, tol) for a, b in zip(xs, ys, strict=True))

    return check


def _stacked(make_one, view, axis):
    """Feasible stacks: one feasible matrix per index of ``axis`` of the view."""

    def make(rng, shape):
        viewed = view or shape
        one = tuple(d for i, d in enumerate(viewed) if i != axis)
        return np.stack([make_one(rng, one) for _ in range(viewed[axis])], axis=axis).reshape(shape)

    return make


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    make: Callable[[], Any]
    shape: tuple[int, ...]
    feasible: Callable[[np.ndarray, np.ndarray, float], bool]
    feasible_input: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
    exact: bool = False
    idempotent: bool = True
    keeps_feasible: bool = True
    # What `constrain` guarantees, when weaker than `feasible` (default: `feasible`, within
    # a few ulps).
    transform_feasible: Callable[[np.ndarray, np.ndarray, float], bool] | None = None
    at_zero: Callable[[tuple[int, ...]], np.ndarray] | None = None


ROWS = [
    Row(
        "non_neg",
        NonNeg,
        (4, 3),
        _box(0, np.inf),
        lambda r, s: np.abs(r.normal(size=s)) + 0.1,
        exact=True,
    ),
    Row(
        "clip",
        lambda: Clip(-0.5, 0.5),
        (4, 3),
        _box(-0.5, 0.5),
        lambda r, s: r.uniform(-0.4, 0.4, size=s),
        exact=True,
    ),
    Row(
        "max_norm",
        lambda: MaxNorm(2.0),
        (4, 3),
        _max_norm(2.0, [0]),
        _feasible_vectors([0], 0.5, 1.5),
    ),
    Row(
        "max_norm_conv",
        lambda: MaxNorm(1.0, axis=[0, 1, 2]),
        (3, 3, 2, 4),
        _max_norm(1.0, [0, 1, 2]),
        _feasible_vectors([0, 1, 2], 0.3, 0.7),
    ),
    Row(
        "min_max_norm",
        lambda: MinMaxNorm(0.5, 1.5),
        (4, 3),
        _min_max_norm(0.5, 1.5, [0]),
        _feasible_vectors([0], 0.8, 1.2),
    ),
    Row(
        "min_max_norm_rate",
        lambda: MinMaxNorm(0.5, 1.5, rate=0.5),
        (4, 3),
        _min_max_norm_rate(0.5, 1.5, 0.5, [0]),
        _feasible_vectors([0], 0.8, 1.2),
        idempotent=False,
    ),
    Row("unit_norm", UnitNorm, (4, 3), _unit_norm([0]), _signed_one_hot),
    Row("radial", RadialConstraint, (3, 3, 2, 4), _ring_constant, _ring_constant_kernel),
    Row("radial_even", RadialConstraint, (4, 4, 1, 2), _ring_constant, _ring_constant_kernel),
    Row(
        "radial_tf_keras",
        lambda: RadialConstraint(mode="tf_keras"),
        (3, 3, 2, 4),
        _ring_constant,
        _ring_constant_kernel,
        exact=True,
        idempotent=False,
        keeps_feasible=False,
    ),
    Row(
        "spectral_norm",
        lambda: SpectralNorm(1.0),
        (4, 3),
        _spectral(1.0),
        _small_spectrum,
        transform_feasible=_spectral_certified(1.0),
    ),
    Row(
        "clip_one_sided",
        lambda: Clip(max_value=0.5),
        (4, 3),
        _box(-np.inf, 0.5),
        lambda r, s: r.uniform(-2.0, 0.4, size=s),
        exact=True,
    ),
    Row(
        "clip_array",
        lambda: Clip([-0.5, -0.125, 0.0], [0.5, 0.25, 1.0]),
        (4, 3),
        _box(np.array([-0.5, -0.125, 0.0]), np.array([0.5, 0.25, 1.0])),
        lambda r, s: np.array([-0.4, -0.1, 0.1]) + r.uniform(0, 1, size=s) * [0.8, 0.3, 0.8],
        exact=True,
    ),
    Row("l1_ball", lambda: L1Ball(1.0), (4, 3), _l1_ball(1.0, [0]), _feasible_l1([0], 0.3, 0.9)),
    Row(
        "l1_ball_whole",
        lambda: L1Ball(2.0, axis=None),
        (3, 3, 2, 4),
        _l1_ball(2.0, [0, 1, 2, 3]),
        _feasible_l1([0, 1, 2, 3], 0.5, 1.5),
    ),
    Row(
        "simplex",
        Simplex,
        (4, 3),
        _simplex(1.0, [0]),
        _on_simplex,
        at_zero=lambda shape: np.full(shape, 1.0 / shape[0]),
    ),
    Row("top_k", lambda: TopK(5), (4, 3), _top_k(5, [0, 1]), _sparse(lambda s: 5), exact=True),
    Row(
        "top_k_columns",
        lambda: TopK(2, axis=0),
        (4, 3),
        _top_k(2, [0]),
        lambda r, s: _two_of_four(r, s),
        exact=True,
    ),
    Row("n_of_m", NofM, (8, 3), _n_of_m(2, 4), _two_of_four, exact=True),
    Row(
        "intersection_boxes",
        lambda: Intersection(NonNeg(), Clip(-0.5, 0.5)),
        (4, 3),
        _box(0.0, 0.5),
        lambda r, s: r.uniform(0.05, 0.45, size=s),
        exact=True,
    ),
    Row(
        "intersection_orthant_ball",
        lambda: Intersection(NonNeg(), MaxNorm(1.0)),
        (4, 3),
        _both(_box(0.0, np.inf), _max_norm(1.0, [0])),
        lambda r, s: np.abs(_feasible_vectors([0], 0.3, 0.9)(r, s)),
    ),
    Row(
        "intersection_box_ball",
        lambda: Intersection(MaxNorm(1.0), Clip(-0.5, 0.5)),
        (4, 3),
        _both(_box(-0.5, 0.5), _max_norm(1.0, [0])),
        lambda r, s: np.clip(_feasible_vectors([0], 0.3, 0.9)(r, s), -0.4, 0.4),
    ),
    Row(
        "intersection_dykstra",
        lambda: Intersection(Simplex(), Clip(max_value=0.5)),
        (4, 3),
        _both(_simplex(1.0, [0]), _box(-np.inf, 0.5)),
        _capped_simplex,
        at_zero=lambda shape: np.full(shape, 1.0 / shape[0]),
        # Inside constrain Dykstra stops on its residual, tol=1e-6 relative per entry: a
        # column's sum is within 4 entries' worth of it.
        transform_feasible=lambda x, y, tol: _both(_simplex(1.0, [0]), _box(-np.inf, 0.5))(
            x, y, 4e-6
        ),
    ),
    Row(
        "singular_value_clip",
        SingularValueClip,
        (4, 3),
        _singular_band(0.0, 1.0),
        _with_singular_values(0.2, 0.9),
    ),
    Row(
        "singular_value_clip_band",
        lambda: SingularValueClip(0.5, 1.0),
        (4, 3),
        _singular_band(0.5, 1.0),
        _with_singular_values(0.6, 0.9),
    ),
    Row("nuclear_ball", lambda: NuclearBall(1.5), (4, 3), _nuclear(1.5), _nuclear_inside(1.5)),
    Row(
        "nuclear_ball_conv",
        lambda: NuclearBall(2.0),
        (3, 3, 2, 4),
        _nuclear(2.0),
        _nuclear_inside(2.0),
    ),
    Row("psd", PSD, (2, 3, 3), _psd(0.0), _positive_definite),
    # Orthogonal's set is not convex; a scale of 10 keeps the contract's large steps (about
    # 1 per entry) inside the range where the Newton-Schulz steps of `constrain` converge.
    Row(
        "orthogonal",
        lambda: Orthogonal(scale=10.0),
        (4, 3),
        _orthonormal(10.0),
        _signed_permutation(10.0),
        # Certified inside constrain: the residual max |G / s^2 - I| <= tol = 1e-5.
        transform_feasible=lambda x, y, tol: _orthonormal(10.0)(x, y, 1e-5),
    ),
    Row(
        "orthogonal_wide",
        lambda: Orthogonal(scale=10.0),
        (3, 5),
        _orthonormal(10.0),
        lambda r, s: _signed_permutation(10.0)(r, s[::-1]).T,
        transform_feasible=lambda x, y, tol: _orthonormal(10.0)(x, y, 1e-5),
    ),
    Row(
        "orthogonal_experts",
        lambda: Orthogonal(scale=10.0, batch_axes=0),
        (3, 4, 3),
        _each_matrix(_orthonormal(10.0), None, 0),
        _stacked(_signed_permutation(10.0), None, 0),
        transform_feasible=_each_matrix(lambda x, y, tol: _orthonormal(10.0)(x, y, 1e-5), None, 0),
    ),
    Row(
        "orthogonal_fused_qkv",
        lambda: Orthogonal(scale=10.0, view=(3, 2, 4), batch_axes=0),
        (6, 4),
        # Three float32 SVD polar factors: residuals up to about 6 eps were measured (BUILD.md).
        _each_matrix(lambda x, y, tol: _orthonormal(10.0)(x, y, max(tol, 8e-7)), (3, 2, 4), 0),
        _stacked(lambda r, s: _signed_permutation(10.0)(r, s[::-1]).T, (3, 2, 4), 0),
        transform_feasible=_each_matrix(
            lambda x, y, tol: _orthonormal(10.0)(x, y, 1e-5), (3, 2, 4), 0
        ),
    ),
    Row(
        "spectral_norm_heads",
        lambda: SpectralNorm(1.0, batch_axes=1),
        (4, 3, 3),
        _each_matrix(_spectral(1.0), None, 1),
        _stacked(_small_spectrum, None, 1),
        transform_feasible=_each_matrix(_spectral_certified(1.0), None, 1),
    ),
    Row(
        "singular_value_clip_experts",
        lambda: SingularValueClip(0.5, 1.0, batch_axes=-3),
        (2, 4, 3),
        _each_matrix(_singular_band(0.5, 1.0), None, 0),
        _stacked(_with_singular_values(0.6, 0.9), None, 0),
    ),
    Row(
        "nuclear_ball_per_head",
        lambda: NuclearBall(1.5, view=(3, 2, 4), batch_axes=0),
        (6, 4),
        _each_matrix(_nuclear(1.5), (3, 2, 4), 0),
        _stacked(_nuclear_inside(1.5), (3, 2, 4), 0),
    ),
    Row(
        "plain_callable",
        lambda: lambda w: jnp.clip(w, 0, 1),
        (4, 3),
        _box(0, 1),
        lambda r, s: r.uniform(0.1, 0.9, size=s),
        exact=True,
    ),
    Row("symmetric", jaxcons.Symmetric, (2, 3, 3), _symmetric, _symmetric_matrix),
    Row("custom_subclass", Symmetrize, (3, 3), _symmetric, _symmetric_matrix, exact=True),
]

IDS = [row.id for row in ROWS]
param_rows = pytest.mark.parametrize("row", ROWS, ids=IDS)


def test_the_table_covers_every_public_constraint():
    public = {
        name
        for name in jaxcons.constraints.__all__
        if isinstance(getattr(jaxcons.constraints, name), type)
        and name == getattr(jaxcons.constraints, name).__name__
    } - {"Constraint", "StatefulConstraint"}
    covered = {type(row.make()).__name__ for row in ROWS}
    missing = sorted(public - covered)
    assert not missing, f"add a Row for {missing} to ROWS in tests/test_contract.py"


def _eps(dtype):
    return float(jnp.finfo(dtype).eps)


def _random_input(row, seed=0):
    """A generic, mostly infeasible input: vectors of very different norms."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=row.shape)
    scales = np.array([3.0, 0.1, 1.0, 2.0, 0.5])[np.arange(row.shape[-1]) % 5]
    return w * scales


def _f64(x):
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def _bits(x):
    """The raw bits of an array (so that -0.0 vs 0.0 and NaN payloads count)."""
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def _assert_close(a, b, dtype, exact, ulps=4):
    a, b = _f64(a), _f64(b)
    if exact:
        np.testing.assert_array_equal(a, b)
    else:
        tol = ulps * _eps(dtype)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.max(np.abs(b))))


# --- the checks ----------------------------------------------------------------------------------


@param_rows
def test_jit_matches_eager(row):
    c = row.make()
    w = jnp.asarray(_random_input(row), jnp.float32)
    _assert_close(jax.jit(c)(w), c(w), jnp.float32, row.exact)


@param_rows
def test_no_retrace_across_calls(row):
    c = row.make()
    traces = []

    @jax.jit
    def project(w):
        traces.append(None)
        return c(w)

    for seed in range(3):
        project(jnp.asarray(_random_input(row, seed), jnp.float32))
    assert len(traces) == 1


@param_rows
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_shape_dtype_and_feasible(row, dtype):
    c = row.make()
    w = jnp.asarray(_random_input(row), dtype)
    y = c(w)
    assert y.shape == row.shape
    assert y.dtype == dtype
    assert row.feasible(_f64(w), _f64(y), 4 * _eps(dtype))
    # The input must actually need projecting, or the check above proves nothing.
    if row.keeps_feasible:
        assert not np.array_equal(_f64(y), _f64(w))


@param_rows
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_idempotent(row, dtype):
    c = row.make()
    y = c(jnp.asarray(_random_input(row), dtype))
    if row.idempotent:
        _assert_close(c(y), y, dtype, row.exact)
    else:
        # Documented as not idempotent: a second application moves the point again.
        assert not np.array_equal(_f64(c(y)), _f64(y))


@param_rows
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_strictly_feasible_input_is_unchanged_bit_for_bit(row, dtype):
    c = row.make()
    w = jnp.asarray(row.feasible_input(np.random.default_rng(1), row.shape), dtype)
    assert row.feasible(_f64(w), _f64(w), 0.0)
    y = c(w)
    if row.keeps_feasible:
        assert y.dtype == w.dtype
        np.testing.assert_array_equal(_bits(y), _bits(w))
    else:
        # tf.keras's radial constraint copies values one ring off: it moves feasible kernels.
        assert not np.array_equal(_f64(y), _f64(w))
        assert row.feasible(_f64(w), _f64(y), 0.0)


@param_rows
def test_finite_value_and_grad_at_zero(row):
    c = row.make()
    zero = jnp.zeros(row.shape, jnp.float32)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=row.shape), jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(lambda w: jnp.sum(c(w) * weights)))(zero)
    expected = row.at_zero(row.shape) if row.at_zero else np.zeros(row.shape)
    np.testing.assert_allclose(np.asarray(c(zero)), expected, rtol=1e-6, atol=0)
    assert np.isfinite(float(value))
    assert grad.shape == row.shape
    assert np.all(np.isfinite(np.asarray(grad)))


def _wrap_chain(inner, params):
    return inner


def _wrap_masked(inner, params):
    return optax.masked(inner, jaxcons.mask(params, "kernel"))


def _wrap_multi_steps(inner, params):
    return optax.MultiSteps(inner, every_k_schedule=2)


WRAPPERS = {"chain": _wrap_chain, "masked": _wrap_masked, "multi_steps": _wrap_multi_steps}


@param_rows
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_inside_constrain(row, wrapper):
    c = row.make()
    lr = 0.1
    micro = 2 if wrapper == "multi_steps" else 1
    rng = np.random.default_rng(3)
    params = {
        "kernel": jnp.asarray(row.feasible_input(rng, row.shape), jnp.float32),
        "other": jnp.ones(3, jnp.float32),
    }
    inner = optax.chain(optax.sgd(lr), jaxcons.constrain({"kernel": c}))
    tx = WRAPPERS[wrapper](inner, params)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(None)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # MultiSteps mixes its int32 step counter with floats inside optax.
    promotion = "standard" if wrapper == "multi_steps" else "strict"
    with jax.numpy_dtype_promotion(promotion):
        state = tx.init(params)
        for k in range(1, 3):
            g = rng.normal(size=row.shape) * 10
            grads = {"kernel": jnp.asarray(g, jnp.float32), "other": jnp.ones(3, jnp.float32)}
            x = _f64(params["kernel"]) - lr * _f64(grads["kernel"])
            for _ in range(micro):
                new, state = step(params, state, grads)
            feasible = row.transform_feasible or row.feasible
            assert feasible(x, _f64(new["kernel"]), 4 * _eps(jnp.float32))
            assert new["kernel"].dtype == jnp.float32
            assert np.all(np.isfinite(np.asarray(new["kernel"])))
            # The unconstrained leaf follows plain SGD; outside the mask, optax.masked passes
            # the raw gradient (+1 a step) through.
            expected_other = 1.0 + k if wrapper == "masked" else 1.0 - lr * k
            np.testing.assert_allclose(np.asarray(new["other"]), expected_other, rtol=1e-6)
            params = new
    assert len(traces) == 1


@param_rows
def test_the_constrained_step_lowers_for_cuda_and_tpu(row):
    # No device is needed to lower: a CPU-only construct in a projection, a certificate or a
    # fallback (a host callback, a CPU-only custom call) fails here rather than on a GPU.
    c = row.make()
    w = jnp.asarray(row.feasible_input(np.random.default_rng(0), row.shape), jnp.float32)
    params = {"w": w}
    tx = optax.chain(optax.sgd(0.1), jaxcons.constrain({"w": c}))
    state = tx.init(params)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    exported = jax.export.export(jax.jit(step), platforms=("cuda", "tpu"))(params, state, params)
    assert exported.platforms == ("cuda", "tpu")
    assert "callback" not in exported.mlir_module()


@param_rows
def test_derivative_on_the_set_matches_central_differences(row):
    # At a point of the set (the row's feasible input: for a sphere or a manifold, a point on
    # it), the JVP along a random direction is the projection's derivative, not the identity
    # that an exact-return shortcut gives where the set has no interior. Checked against a
    # float64 central difference of the same constraint run in float64 (its derivative agrees
    # with its values); tests/test_projection_derivatives.py checks against NumPy oracles.
    c = row.make()
    w = jnp.asarray(row.feasible_input(np.random.default_rng(1), row.shape), jnp.float32)
    d = np.random.default_rng(4).normal(size=row.shape)
    _, got = jax.jit(lambda x, dx: jax.jvp(c, (x,), (dx,)))(w, jnp.asarray(d, jnp.float32))
    h = 1e-6
    with jax.enable_x64(True):
        project = jax.jit(c)
        plus, minus = project(jnp.asarray(_f64(w) + h * d)), project(jnp.asarray(_f64(w) - h * d))
        assert plus.dtype == jnp.float64
        expected = (np.asarray(plus) - np.asarray(minus)) / (2 * h)
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(_f64(got), expected, rtol=1e-4, atol=1e-4 * scale)
