"""How well `SpectralNorm` inside `jaxcons.constrain` keeps its bound during Adam training.

From a feasible start (a (3, 3, 16, 32) conv kernel with spectral norm exactly 1, viewed as a
(144, 32) matrix), train towards a random target of spectral norm ~10 with
``jaxcons.chain(optax.adam(lr), constraints={"k": SpectralNorm(1.0, n)})`` and record, over every
step, the worst relative excess ``sigma(W) / 1.0 - 1`` of the exact spectral norm (NumPy SVD in
float64). The power iteration is warm-started from the exact top singular vector (`init`), so
what this measures is how well ``n`` iterations per step track a rotating kernel.

Usage: .venv/bin/python benchmarks/spectral_tracking.py [--steps 150] [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcons

SHAPE = (3, 3, 16, 32)


def sigma(w: jax.Array) -> float:
    w = np.asarray(w, np.float64)
    return float(np.linalg.norm(w.reshape(-1, w.shape[-1]), 2))


def worst_excess(lr: float, n_iterations: int, steps: int) -> tuple[float, float]:
    """(worst excess over all steps, excess after the last step)."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=SHAPE)
    params = {"k": jnp.asarray(w0 / sigma(w0), jnp.float32)}
    target = jnp.asarray(np.random.default_rng(2).normal(size=SHAPE), jnp.float32)
    tx = jaxcons.chain(optax.adam(lr), constraints={"k": jaxcons.SpectralNorm(1.0, n_iterations)})
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum(jnp.square(p["k"] - target)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    worst = -np.inf
    for _ in range(steps):
        params, state = step(params, state)
        worst = max(worst, sigma(params["k"]) - 1.0)
    return worst, sigma(params["k"]) - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.steps} Adam steps")
    print("| lr | n_power_iterations | worst excess | final excess |")
    print("| --- | --- | --- | --- |")
    rows = []
    for lr in (1e-3, 1e-2):
        for n in (1, 2, 5):
            worst, final = worst_excess(lr, n, args.steps)
            rows.append({"lr": lr, "n": n, "worst": worst, "final": final})
            print(f"| {lr:g} | {n} | {worst:.2e} | {final:.2e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
