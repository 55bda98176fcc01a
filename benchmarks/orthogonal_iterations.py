"""How many Newton-Schulz steps does `Orthogonal` need inside `jaxcons.constrain`?

For ``n_iterations`` = 1..6, two measurements (sections ``accuracy`` and ``cost``):

* accuracy: Adam training runs (200 steps, learning rates 1e-3 and 1e-2) of a least-squares
  loss whose unconstrained solution is not orthogonal, from an orthogonal kernel (64x32, the
  size of the unit test, and 512x256), with and without `jaxcons.tangent` in front of Adam.
  Reported: the worst ``max |W^T W - I|`` over every step of the run (float32 parameters;
  the deviation is computed in float64 on the host).
* cost: one jitted training step (loss + grad + Adam + constrain, donated buffers) on a
  1024x1024 kernel, timed in interleaved rounds against plain Adam (and the exact projection,
  one SVD per step, and ``n=3 uncertified``, the step before `project` checked its result)
  in the same process; reported as ratios of medians.

And, with the default `Orthogonal()` (section ``certified``): the worst residual
``max |W^T W / s^2 - I|`` (the smaller Gram matrix for a wide kernel; float64 NumPy on the
returned float32 params) over every step of Adam runs at 64x32, 32x64, 128x64 and 256x256 and
learning rates 1e-3, 1e-2, 1e-1 and 0.5: ``optax.chain(optax.adam(lr), jaxcons.constrain(r))``
and ``jaxcons.chain(optax.adam(lr), constraints=r, tangent=True)``. Section ``floor``: what
float32 (and bfloat16, float16) rounding allows, the residual of the exact polar factor
(float32 SVD) and of the Newton-Schulz fixed point from 64x32 to 2048x2048, as measured in
float64 and as the float32 check inside `project` measures it.

Run: ``python benchmarks/orthogonal_iterations.py [--sections accuracy certified floor cost]
[--steps N] [--certified-steps N] [--rounds N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from train_step import JaxCase, environment, interleaved, print_table, summarize, write_json

import jaxcons

ITERATIONS = (1, 2, 3, 4, 5, 6)
LEARNING_RATES = (1e-3, 1e-2)
ACCURACY_SHAPES = ((64, 32), (512, 256))
CERTIFIED_SHAPES = ((64, 32), (32, 64), (128, 64), (256, 256))
CERTIFIED_LEARNING_RATES = (1e-3, 1e-2, 1e-1, 0.5)
FLOOR_SHAPES = ((64, 32), (32, 64), (128, 64), (256, 256), (512, 512), (1024, 1024), (2048, 2048))
SECTIONS = ("accuracy", "certified", "floor", "cost")
COST_SIZE = 1024
BATCH = 128


def problem(shape: tuple[int, int], seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs, targets from a random (not orthogonal) linear map, and an orthogonal start."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(BATCH, shape[0])), jnp.float32)
    y = x @ jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)
    start = jaxcons.Orthogonal()(jnp.asarray(rng.normal(size=shape)))
    return x, y, start.astype(jnp.float32)


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(x @ params["kernel"] - y))


def residual(w: Any, scale: float = 1.0) -> float:
    """``max |G / s^2 - I|`` in float64 NumPy, ``G`` the smaller Gram matrix of ``w``."""
    m = np.asarray(w, np.float64).reshape(-1, np.shape(w)[-1]) / scale
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return float(np.max(np.abs(gram - np.eye(len(gram)))))


def worst_deviation(
    shape: tuple[int, int],
    learning_rate: float,
    n_iterations: int | None,
    tangent: bool,
    steps: int,
) -> float:
    """The largest ``max |W^T W - I|`` (float64, on the host) after any step of the run
    (``n_iterations=None``: the default `Orthogonal()`, and `optax.chain` without tangent)."""
    x, y, start = problem(shape)
    if n_iterations is None:
        rules = {"kernel": jaxcons.Orthogonal()}
        if tangent:
            tx = jaxcons.chain(optax.adam(learning_rate), constraints=rules, tangent=True)
        else:
            tx = optax.chain(optax.adam(learning_rate), jaxcons.constrain(rules))
    else:
        rules = {"kernel": jaxcons.Orthogonal(n_iterations=n_iterations)}
        tx = jaxcons.chain(optax.adam(learning_rate), constraints=rules, tangent=tangent)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    params = {"kernel": start}
    state = tx.init(params)
    worst = 0.0
    for _ in range(steps):
        params, state = step(params, state)
        worst = max(worst, residual(params["kernel"]))
    return worst


def certified_table(steps: int) -> dict[str, float]:
    """The default `Orthogonal()`: the worst residual over ``steps`` Adam steps, per shape,
    learning rate, and with or without tangent steps."""
    out: dict[str, float] = {}
    head = "shape      " + "".join(
        f"{f'lr={lr:g}' + t:>14}" for lr in CERTIFIED_LEARNING_RATES for t in ("", " +tan")
    )
    print(
        f"\nDefault Orthogonal(): worst max|W^T W - I| over {steps} Adam steps "
        f"(float32 kernel, float64 check)\n{head}"
    )
    for shape in CERTIFIED_SHAPES:
        row = []
        for lr in CERTIFIED_LEARNING_RATES:
            for tangent in (False, True):
                dev = worst_deviation(shape, lr, None, tangent, steps)
                out[f"shape={shape[0]}x{shape[1]} lr={lr:g} tangent={tangent}"] = dev
                row.append(f"{dev:>14.2e}")
        print(f"{f'{shape[0]}x{shape[1]}':<11}" + "".join(row), flush=True)
    return out


def floor_table() -> dict[str, dict[str, float]]:
    """What the dtypes allow: ``max |Q^T Q - I|`` of the exact polar factor computed in float32
    (one SVD), of the Newton-Schulz fixed point (6 steps from it; tall and square kernels),
    and of the float32 polar factor rounded to bfloat16 and float16; in float64 NumPy, and
    (``f32 check``) as `Orthogonal.project` measures it, in float32 at HIGHEST precision."""
    hi = jax.lax.Precision.HIGHEST

    @jax.jit
    def check32(w: jax.Array) -> jax.Array:
        x = w.astype(jnp.float32)
        tall = x.shape[0] >= x.shape[1]
        gram = jnp.matmul(x.T, x, precision=hi) if tall else jnp.matmul(x, x.T, precision=hi)
        return jnp.max(jnp.abs(gram - jnp.eye(gram.shape[0], dtype=jnp.float32)))

    @jax.jit
    def svd_polar(w: jax.Array) -> jax.Array:
        u, _, vh = jnp.linalg.svd(w, full_matrices=False)
        return jnp.matmul(u, vh, precision=hi)

    @jax.jit
    def newton_schulz_step(x: jax.Array) -> jax.Array:
        return 1.5 * x - 0.5 * jnp.matmul(x, jnp.matmul(x.T, x, precision=hi), precision=hi)

    out: dict[str, dict[str, float]] = {}
    print("\nWhat rounding allows: max|Q^T Q - I| (float64; 'f32 check' as project measures)")
    print(
        f"{'shape':<11}{'SVD polar':>12}{'f32 check':>12}{'NS fixed pt':>12}"
        f"{'f32 check':>12}{'bfloat16':>12}{'float16':>12}"
    )
    for shape in FLOOR_SHAPES:
        w = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
        q = svd_polar(w)
        row = {"svd_polar": residual(q), "svd_polar_f32_check": float(check32(q))}
        if shape[0] >= shape[1]:
            z, worst = q, 0.0
            for _ in range(6):
                z = newton_schulz_step(z)
                worst = max(worst, residual(z))
            row.update(newton_schulz=worst, newton_schulz_f32_check=float(check32(z)))
        for dtype in (jnp.bfloat16, jnp.float16):
            row[jnp.dtype(dtype).name] = residual(q.astype(dtype).astype(jnp.float32))
        out[f"{shape[0]}x{shape[1]}"] = row
        cells = [
            row.get(k, float("nan"))
            for k in (
                "svd_polar",
                "svd_polar_f32_check",
                "newton_schulz",
                "newton_schulz_f32_check",
                "bfloat16",
                "float16",
            )
        ]
        print(f"{f'{shape[0]}x{shape[1]}':<11}" + "".join(f"{c:>12.2e}" for c in cells), flush=True)
    return out


def uncertified_newton_schulz(w: jax.Array) -> jax.Array:
    """`Orthogonal.project` before issue 15 (private helpers: this is a benchmark): two steps
    of power iteration (from the fixed start, not warm: the same cost) guard three
    Newton-Schulz steps; nothing measures the result."""
    from jaxcons._src.linalg import initial_vector, power_iteration
    from jaxcons.constraints._stiefel import newton_schulz

    sigma, _ = power_iteration(w, initial_vector(w.shape[-1], w.dtype), 2)
    return newton_schulz(w, 1.0, 3, jax.lax.stop_gradient(sigma))


def cost_cases(rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Ratios of a training step with each iteration count (and the exact SVD) to plain Adam."""
    x, y, start = problem((COST_SIZE, COST_SIZE))
    adam = optax.adam(1e-3)
    txs: dict[str, tuple[optax.GradientTransformation, Callable[[Any], Any] | None]] = {
        "adam": (adam, None)
    }
    for n in ITERATIONS:
        txs[f"n_iterations={n}"] = (
            optax.chain(adam, jaxcons.constrain({"kernel": jaxcons.Orthogonal(n_iterations=n)})),
            None,
        )
    # The step as it was before `project` certified its result (git 2e66d3a): the guard's
    # power iteration and three Newton-Schulz steps, no residual check.
    uncertified = {"kernel": uncertified_newton_schulz}
    txs["n=3 uncertified"] = (optax.chain(adam, jaxcons.constrain(uncertified)), None)
    exact = {"kernel": jaxcons.Orthogonal()}
    txs["exact (SVD)"] = (adam, lambda p: jaxcons.apply_constraints(p, exact))

    cases = {}
    for name, (tx, after) in txs.items():

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(params: Any, state: Any, x: jax.Array, y: jax.Array, tx=tx, after=after) -> Any:
            grads = jax.grad(loss_fn)(params, x, y)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return (after(params) if after else params), state

        params = {"kernel": jnp.copy(start)}
        cases[name] = JaxCase(step, params, tx.init(params), x, y)
    stats = summarize(*interleaved(cases, rounds, warmup), "adam")
    print_table(
        f"Training step, {COST_SIZE}x{COST_SIZE} kernel, ratios vs adam", stats, cases, "adam"
    )
    return stats


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run"
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument(
        "--certified-steps", type=int, default=200, help="steps per run (certified table)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (cost table)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    environment()
    result: dict[str, Any] = {}
    if "accuracy" in args.sections:
        result["accuracy"] = accuracy_table(args.steps)
    if "certified" in args.sections:
        result["certified"] = certified_table(args.certified_steps)
    if "floor" in args.sections:
        result["floor"] = floor_table()
    if "cost" in args.sections:
        result["cost"] = cost_cases(args.rounds, args.warmup)
    write_json(args.json, result)
    return result


def accuracy_table(steps: int) -> dict[str, float]:
    """The worst deviation per ``n_iterations``, shape, learning rate and tangent."""
    accuracy: dict[str, float] = {}
    columns = [
        (shape, lr, tangent)
        for shape in ACCURACY_SHAPES
        for lr in LEARNING_RATES
        for tangent in (False, True)
    ]
    head = "n  " + "".join(
        f"{f'{s[0]}x{s[1]} lr={lr:g}' + (' +tan' if t else ''):>24}" for s, lr, t in columns
    )
    print(f"\nWorst max|W^T W - I| over {steps} Adam steps (float32 kernel)\n{head}")
    for n in ITERATIONS:
        row = []
        for shape, lr, tangent in columns:
            dev = worst_deviation(shape, lr, n, tangent, steps)
            accuracy[f"n={n} shape={shape[0]}x{shape[1]} lr={lr:g} tangent={tangent}"] = dev
            row.append(f"{dev:>24.2e}")
        print(f"{n:<3}" + "".join(row), flush=True)
    return accuracy


if __name__ == "__main__":
    main()
