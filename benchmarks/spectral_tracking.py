"""How well `SpectralNorm` inside `jaxcons.constrain` keeps its bound during Adam training.

From a feasible start (a kernel with spectral norm exactly 1, e.g. a (3, 3, 16, 32) conv kernel
viewed as a (144, 32) matrix), train towards a standard normal target (spectral norm about
``sqrt(rows) + sqrt(out)``, 17.7 for the conv kernel: the kernel is pulled outward, so the bound
is active at every step) with
``optax.chain(optax.adam(lr), jaxcons.constrain({"k": SpectralNorm(1.0, n)}))`` and record, over
every step, the exact spectral norm ``sigma(W)`` of the returned kernel (NumPy SVD in float64):

* worst excess: the largest ``sigma / 1.0 - 1`` over all steps (> 0: the bound was broken);
* final excess: the same after the last step;
* lowest sigma: the smallest ``sigma / 1.0`` over the second half of the run, when the kernel
  is pulled far outside its bound (how far below its bound the projection puts it: the
  tightness).

The power iteration is warm-started from the exact top singular vector (`init`).

With ``--bound``, it measures instead how far above the exact largest singular value the
certified bound `jaxcons.spectral_norm_bound` is (its relative excess, which
must be >= 0) on float32 Gaussian and orthogonal matrices up to 1024 x 1024, and how long one
jitted call takes (median of 5, after compiling).

Usage: .venv/bin/python benchmarks/spectral_tracking.py [--steps 150] [--lrs 1e-3 1e-2 1e-1]
    [--shapes 3,3,16,32 256,256] [--n 1 2 5] [--json PATH] [--bound]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcons

SHAPES = ((3, 3, 16, 32), (256, 256), (1024, 64))


def sigma(w: jax.Array) -> float:
    w = np.asarray(w, np.float64)
    return float(np.linalg.norm(w.reshape(-1, w.shape[-1]), 2))


def track(
    shape: tuple[int, ...], lr: float, n_iterations: int, steps: int
) -> tuple[float, float, float]:
    """(worst excess over all steps, excess after the last step, lowest sigma / c over the
    second half)."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=shape)
    params = {"k": jnp.asarray(w0 / sigma(w0), jnp.float32)}
    target = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    tx = optax.chain(
        optax.adam(lr), jaxcons.constrain({"k": jaxcons.SpectralNorm(1.0, n_iterations)})
    )
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum(jnp.square(p["k"] - target)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    sigmas = []
    for _ in range(steps):
        params, state = step(params, state)
        sigmas.append(sigma(params["k"]))
    s = np.asarray(sigmas)
    return float(s.max() - 1.0), float(s[-1] - 1.0), float(s[steps // 2 :].min())


def bound_table() -> list[dict[str, object]]:
    """Relative excess of the certified bound over the float64 SVD's sigma, and its time."""
    bound = jax.jit(jaxcons.spectral_norm_bound)
    rng = np.random.default_rng(0)
    print("| matrix | bound / sigma - 1 | ms per call |")
    print("| --- | --- | --- |")
    rows = []
    for shape in [(32, 32), (144, 32), (256, 256), (1024, 1024)]:
        rows.append(("gaussian", shape, rng.normal(size=shape)))
    for n in (64, 256, 1024):
        q, r = np.linalg.qr(rng.normal(size=(n, n)))
        rows.append(("orthogonal", (n, n), q * np.sign(np.diag(r))))
    out = []
    for kind, shape, w in rows:
        w32 = jnp.asarray(w, jnp.float32)
        exact = sigma(w32)
        value = float(bound(w32))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            bound(w32).block_until_ready()
            times.append(time.perf_counter() - t0)
        ms = 1e3 * statistics.median(times)
        excess = value / exact - 1
        print(f"| {kind} {shape[0]}x{shape[1]} | {excess:.2e} | {ms:.1f} |", flush=True)
        out.append({"matrix": f"{kind} {shape[0]}x{shape[1]}", "excess": excess, "ms": ms})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="Adam steps (default 150)")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1], help="learning rates"
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=[",".join(map(str, s)) for s in SHAPES],
        help="kernel shapes, comma-separated (default 3,3,16,32 256,256 1024,64)",
    )
    parser.add_argument(
        "--n", type=int, nargs="+", default=[1, 2, 5], help="n_power_iterations values"
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--bound", action="store_true", help="measure the certified bound's tightness instead"
    )
    args = parser.parse_args()
    if args.bound:
        print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
        table = bound_table()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(table, f, indent=1)
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.steps} Adam steps")
    print("| shape | lr | n_power_iterations | worst excess | final excess | lowest sigma/c |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for text in args.shapes:
        shape = tuple(int(d) for d in text.split(","))
        for lr in args.lrs:
            for n in args.n:
                worst, final, lowest = track(shape, lr, n, args.steps)
                rows.append(
                    {
                        "shape": shape,
                        "lr": lr,
                        "n": n,
                        "worst": worst,
                        "final": final,
                        "lowest": lowest,
                    }
                )
                print(
                    f"| {shape} | {lr:g} | {n} | {worst:.2e} | {final:.2e} | {lowest:.4f} |",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
