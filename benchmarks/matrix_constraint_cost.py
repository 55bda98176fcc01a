"""What do the matrix constraints cost in a training step, against plain Adam?

One square kernel ``n x n`` (``n`` = 512 and 2048), a least-squares loss on a batch of 32,
loss + grad + Adam (+ ``jaxcons.constrain``) in ONE jitted step whose params and optimizer
state are donated. Cases, each against plain ``optax.adam(1e-3)`` at the same size:

  Orthogonal         Newton-Schulz steps inside constrain (the default count), 512 and 2048
  SingularValueClip  one SVD per step (the exact projection), 512 and 2048
  NuclearBall        one SVD per step, 2048
  PSD                one eigendecomposition per step, 2048 (the kernel is square)
  SpectralNorm       the default (one power iteration per step, warm-started from the state)
                     and n_power_iterations=5, 512 and 2048

Every case lives in one process and is timed round-robin (one step of every case per round,
the first case rotated each round); reported: median step time and ratios of medians against
the plain Adam step of the same size (see benchmarks/README.md for the columns).

Run: ``python benchmarks/matrix_constraint_cost.py [--rounds N] [--sizes 512 2048]``.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from train_step import JaxCase, environment, interleaved, print_table, summarize, write_json

import jaxcons

BATCH = 32


def make_step(tx: optax.GradientTransformation) -> Any:
    def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(x @ params["kernel"] - y))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    return step


def cases_for(n: int) -> dict[str, Any]:
    """``name -> (constraint or None)`` at size ``n``; starts inside each set."""
    out: dict[str, Any] = {f"adam {n}": None, f"Orthogonal {n}": jaxcons.Orthogonal()}
    out[f"SingularValueClip {n}"] = jaxcons.SingularValueClip(0.0, 1.0)
    out[f"SpectralNorm {n}"] = jaxcons.SpectralNorm(1.0)
    out[f"SpectralNorm(n=5) {n}"] = jaxcons.SpectralNorm(1.0, n_power_iterations=5)
    if n >= 2048:
        out[f"NuclearBall {n}"] = jaxcons.NuclearBall(float(n) / 4)
        out[f"PSD {n}"] = jaxcons.PSD()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    environment(f"{args.rounds} rounds")
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    cases: dict[str, JaxCase] = {}
    for n in args.sizes:
        x = jnp.asarray(rng.normal(size=(BATCH, n)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(BATCH, n)), jnp.float32)
        # An orthogonal start lies in every set here (singular values and eigenvalues 1; the
        # nuclear norm n is above n / 4, so that constraint is active from the first step).
        q = jaxcons.Orthogonal()(jnp.asarray(rng.normal(size=(n, n)), jnp.float32))
        for name, c in cases_for(n).items():
            start = jaxcons.PSD()(q) if isinstance(c, jaxcons.PSD) else q
            tx = (
                optax.adam(1e-3)
                if c is None
                else optax.chain(optax.adam(1e-3), jaxcons.constrain({"kernel": c}))
            )
            params = {"kernel": jnp.copy(start)}
            cases[name] = JaxCase(make_step(tx), params, tx.init(params), x, y)
    timings = interleaved(cases, args.rounds, args.warmup)
    for n in args.sizes:
        names = [name for name in cases if name.endswith(f" {n}")]
        stats = summarize(*({k: t[k] for k in names} for t in timings), f"adam {n}")
        print_table(
            f"Training step, one {n}x{n} kernel, ratios vs adam {n}", stats, cases, f"adam {n}"
        )
        result[str(n)] = stats
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
