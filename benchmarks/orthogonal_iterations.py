"""How many Newton-Schulz steps does `Orthogonal` need inside `jaxcons.constrain`?

For ``n_iterations`` = 1..6, two measurements:

* accuracy: Adam training runs (200 steps, learning rates 1e-3 and 1e-2) of a least-squares
  loss whose unconstrained solution is not orthogonal, from an orthogonal kernel (64x32, the
  size of the unit test, and 512x256), with and without `jaxcons.tangent` in front of Adam.
  Reported: the worst ``max |W^T W - I|`` over every step of the run (float32 parameters;
  the deviation is computed in float64 on the host).
* cost: one jitted training step (loss + grad + Adam + constrain, donated buffers) on a
  1024x1024 kernel, timed in interleaved rounds against plain Adam (and the exact projection,
  one SVD per step) in the same process; reported as ratios of medians.

Run: ``python benchmarks/orthogonal_iterations.py [--steps N] [--rounds N] [--json PATH]``.
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


def worst_deviation(
    shape: tuple[int, int], learning_rate: float, n_iterations: int, tangent: bool, steps: int
) -> float:
    """The largest ``max |W^T W - I|`` (float64, on the host) after any step of the run."""
    x, y, start = problem(shape)
    rules = {"kernel": jaxcons.Orthogonal(n_iterations=n_iterations)}
    tx = jaxcons.chain(optax.adam(learning_rate), constraints=rules, tangent=tangent)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    params = {"kernel": start}
    state = tx.init(params)
    worst = 0.0
    eye = np.eye(shape[1])
    for _ in range(steps):
        params, state = step(params, state)
        w = np.asarray(params["kernel"], np.float64)
        worst = max(worst, float(np.max(np.abs(w.T @ w - eye))))
    return worst


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
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (cost table)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    environment()
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
    print(f"\nWorst max|W^T W - I| over {args.steps} Adam steps (float32 kernel)\n{head}")
    for n in ITERATIONS:
        row = []
        for shape, lr, tangent in columns:
            dev = worst_deviation(shape, lr, n, tangent, args.steps)
            accuracy[f"n={n} shape={shape[0]}x{shape[1]} lr={lr:g} tangent={tangent}"] = dev
            row.append(f"{dev:>24.2e}")
        print(f"{n:<3}" + "".join(row), flush=True)
    result: dict[str, Any] = {"accuracy": accuracy}
    result["cost"] = cost_cases(args.rounds, args.warmup)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
