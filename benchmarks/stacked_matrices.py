"""Per-matrix constraints (``batch_axes``) against a Python loop and a hand-written vmap, and the
certified spectral-norm bound against an SVD: what each costs.

Part 1 (``--part stacks``): a stack of ``E`` matrices ``(E, rows, cols)`` (mixture-of-experts
weights), one jitted, donated optimizer step: a least-squares gradient, Adam, and each way of
constraining every matrix:

  adam          no constraint (the reference of the ratios)
  batch_axes    ``constrain({"w": C(batch_axes=0)})`` on the stack
  python loop   the stack stored as ``E`` separate leaves, ``constrain({"w/*": C()})``: one
                projection (and one trace) per matrix, what users wrote before ``batch_axes``
  hand vmap     a transform applying ``jax.vmap(C().project)`` to the stack (state stacked
                by ``jax.vmap(C().init)``): under vmap every `jax.lax.cond` runs both
                branches, so `Orthogonal`'s certificate runs its SVD on every step

for ``C`` in Orthogonal, SpectralNorm, SingularValueClip and NuclearBall. Reported: median
step time and its ratio against adam (interleaved rounds, benchmarks/train_step.py's
helpers), and the time to trace and compile the step.

Part 2 (``--part bound``): `jaxcons.spectral_norm_bound` against the largest singular value by
SVD (``jnp.linalg.norm(w, 2)``), jitted, on ``n x n`` Gaussian matrices (``n`` = 256, 1024,
2048), interleaved; and the bound's excess over NumPy's float64 SVD, on Gaussian and on
orthogonal matrices.

Run: ``python benchmarks/stacked_matrices.py [--part stacks|bound|all] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from train_step import environment, interleaved, summarize, write_json

import jaxcons


def hand_vmap(c: Any) -> optax.GradientTransformation:
    """Projects every matrix of the stack ``w`` with ``jax.vmap(c.project)``."""

    def init(params: Any) -> Any:
        return jax.vmap(c.init)(params["w"])

    def update(updates: Any, state: Any, params: Any) -> tuple[Any, Any]:
        w = params["w"] + updates["w"]
        projected, state = jax.vmap(c.project)(w, state)
        return {"w": projected - params["w"]}, state

    return optax.GradientTransformation(init, update)


def make_step(tx: optax.GradientTransformation) -> Any:
    def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        leaves = jax.tree.leaves(params)
        w = leaves[0] if len(leaves) == 1 else jnp.stack(leaves)
        return jnp.mean(jnp.square(jnp.einsum("bi,eij->ebj", x, w) - y))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    return step


class Case:
    """A jitted step with its donated params and state, and its trace + compile time."""

    def __init__(self, tx: optax.GradientTransformation, params: Any, x: Any, y: Any):
        self.step, self.x, self.y = make_step(tx), x, y
        self.params, self.state = params, tx.init(params)
        t0 = time.perf_counter()
        self.step.lower(self.params, self.state, x, y).compile()
        self.compile_s = time.perf_counter() - t0

    def __call__(self) -> None:
        self.params, self.state = self.step(self.params, self.state, self.x, self.y)
        jax.block_until_ready(self.params)


CONSTRAINTS = {
    "Orthogonal": lambda **k: jaxcons.Orthogonal(**k),
    "SpectralNorm": lambda **k: jaxcons.SpectralNorm(1.0, **k),
    "SingularValueClip": lambda **k: jaxcons.SingularValueClip(0.0, 1.0, **k),
    "NuclearBall": lambda **k: jaxcons.NuclearBall(4.0, **k),
}


def stacks(args: argparse.Namespace) -> dict[str, Any]:
    e, rows, cols = args.experts, args.rows, args.cols
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, rows)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(e, 32, cols)), jnp.float32)
    start = jaxcons.Orthogonal(batch_axes=0)(
        jnp.asarray(rng.normal(size=(e, rows, cols)), jnp.float32)
    )
    result: dict[str, Any] = {}
    for name, make in CONSTRAINTS.items():
        cases = {"adam": Case(optax.adam(1e-3), {"w": jnp.copy(start)}, x, y)}
        batched = jaxcons.constrain({"w": make(batch_axes=0)})
        cases["batch_axes"] = Case(
            optax.chain(optax.adam(1e-3), batched), {"w": jnp.copy(start)}, x, y
        )
        loop = jaxcons.constrain({"w/*": make()})
        separate = {"w": {f"{i:03d}": start[i] for i in range(e)}}
        cases["python loop"] = Case(optax.chain(optax.adam(1e-3), loop), separate, x, y)
        cases["hand vmap"] = Case(
            optax.chain(optax.adam(1e-3), hand_vmap(make())), {"w": jnp.copy(start)}, x, y
        )
        timings = interleaved(cases, args.rounds, args.warmup)
        stats = summarize(*timings, "adam")
        title = f"{name}: {e} matrices {rows}x{cols}, one training step, ratios vs adam"
        print(f"\n{title}\n{'case':<14}{'median ms':>10}{'ratio':>8}{'compile s':>11}")
        for case, s in stats.items():
            s["compile_s"] = cases[case].compile_s
            print(f"{case:<14}{s['median_ms']:>10.2f}{s['ratio']:>8.2f}{s['compile_s']:>11.2f}")
        result[name] = stats
    return result


def bound(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    certified = jax.jit(jaxcons.spectral_norm_bound)
    svd = jax.jit(lambda w: jnp.linalg.norm(w, 2))
    result: dict[str, Any] = {}
    head = f"{'n':>6}{'bound ms':>10}{'svd ms':>9}{'ratio':>7}"
    print(f"\n{head}{'excess gauss':>14}{'excess orth':>13}")
    for n in args.sizes:
        w = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
        q = np.linalg.qr(rng.normal(size=(n, n)))[0].astype(np.float32)
        cases = {
            "bound": lambda w=w: jax.block_until_ready(certified(w)),
            "svd": lambda w=w: jax.block_until_ready(svd(w)),
        }
        stats = summarize(*interleaved(cases, args.rounds, args.warmup), "svd")
        excess = []
        for m in (np.asarray(w), q):
            sigma = np.linalg.norm(m.astype(np.float64), 2)
            excess.append(float(certified(jnp.asarray(m))) / sigma - 1)
        b, s = stats["bound"], stats["svd"]
        print(
            f"{n:>6}{b['median_ms']:>10.1f}{s['median_ms']:>9.1f}{b['ratio']:>7.2f}"
            f"{excess[0]:>14.2e}{excess[1]:>13.2e}"
        )
        result[str(n)] = {**stats, "excess_gaussian": excess[0], "excess_orthogonal": excess[1]}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["stacks", "bound", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    environment(f"{args.rounds} rounds")
    result: dict[str, Any] = {}
    if args.part in ("stacks", "all"):
        result["stacks"] = stacks(args)
    if args.part in ("bound", "all"):
        result["bound"] = bound(args)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
