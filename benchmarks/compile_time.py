"""Compile-time benchmark: what do jaxcons' transforms add to tracing and compiling a step?

On a tree of many small leaves (``--leaves N``: N/2 blocks, each an ``(8, 8)`` kernel and an
``(8,)`` bias) one jitted step is traced, lowered and compiled for every case, each phase
timed on its own (``jax.jit(f).trace(...)``, ``.lower()``, ``.compile()``). Every case is
built from scratch for every repeat (a fresh transform, a fresh function) after
``jax.clear_caches()``, so nothing is cached between cases or repeats: each figure is what
the first compile of a training script costs.

Cases (each a pair: jaxcons and the same math written by hand with ``jax.tree_util``):

  opt                 the optimizer step alone: ``tx.update`` + ``optax.apply_updates``
  constrain/hand      ``opt``, then a hand-written projection ``tree_map`` on the new params
                      (max-norm columns for kernels, ``max(b, 0)`` for biases)
  constrain/jaxcons   ``optax.chain(tx, jaxcons.constrain({"**/kernel": MaxNorm(2.),
                      "**/bias": NonNeg()}))``
  penalty/hand        gradient of a hand-written ``l2 * sum(k**2) + l1 * sum(|b|)`` loss, then
                      ``opt``
  penalty/jaxcons     the same with ``jaxcons.penalty(params, {"**/kernel": L2(l2),
                      "**/bias": L1(l1)})`` as the loss
  regularize/hand     the hand-written penalty's gradient added to the gradients, then ``opt``
  regularize/jaxcons  ``optax.chain(jaxcons.regularize(rules), tx)``
  proximal/hand       ``opt``, then hand-written proximal steps (shrink kernels, soft-threshold
                      biases)
  proximal/jaxcons    ``optax.chain(tx, jaxcons.proximal(rules, lr))``

Rounds are interleaved (one compile of every case per round, the starting case rotated), and
the medians are reported with their spread (min-max over the repeats). Use one process per
tree size: ``python benchmarks/compile_time.py --leaves 1000`` and ``--leaves 10000
--repeats 1`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from train_step import environment, write_json

import jaxcons
from jaxcons.constraints import MaxNorm, NonNeg

MAX_NORM = 2.0
L2_FACTOR = 1e-4
L1_FACTOR = 1e-5
LEARNING_RATE = 1e-3

Params = dict[str, dict[str, jax.Array]]


def make_params(leaves: int) -> Params:
    rng = np.random.default_rng(0)
    return {
        f"block_{i}": {
            "kernel": jnp.asarray(rng.standard_normal((8, 8), dtype=np.float32)),
            "bias": jnp.asarray(np.abs(rng.standard_normal(8, dtype=np.float32))),
        }
        for i in range(leaves // 2)
    }


def constraint_rules() -> dict[str, Any]:
    return {"**/kernel": MaxNorm(MAX_NORM), "**/bias": NonNeg()}


def regularizer_rules() -> dict[str, Any]:
    return {"**/kernel": jaxcons.L2(L2_FACTOR), "**/bias": jaxcons.L1(L1_FACTOR)}


def optimizer(name: str) -> optax.GradientTransformation:
    return optax.adam(LEARNING_RATE) if name == "adam" else optax.sgd(LEARNING_RATE)


# ----------------------------------------------------------------------------- hand-written


def _by_name(fn_kernel: Callable, fn_bias: Callable) -> Callable[[Any], Any]:
    def apply(tree: Any, *rest: Any) -> Any:
        def leaf(path: tuple[Any, ...], x: jax.Array, *more: jax.Array) -> jax.Array:
            fn = fn_kernel if path[-1].key == "kernel" else fn_bias
            return fn(x, *more)

        return jax.tree_util.tree_map_with_path(leaf, tree, *rest)

    return apply


def _max_norm(w: jax.Array) -> jax.Array:
    n = jnp.sqrt(jnp.sum(jnp.square(w), axis=0, keepdims=True))
    return w * jnp.where(n > MAX_NORM, MAX_NORM / n, 1.0)


hand_projection = _by_name(_max_norm, lambda b: jnp.maximum(b, 0.0))


def hand_penalty(params: Params) -> jax.Array:
    terms = _by_name(
        lambda k: L2_FACTOR * jnp.sum(jnp.square(k)), lambda b: L1_FACTOR * jnp.sum(jnp.abs(b))
    )(params)
    return sum(jax.tree_util.tree_leaves(terms))


def _soft_threshold(b: jax.Array) -> jax.Array:
    t = LEARNING_RATE * L1_FACTOR
    return jnp.where(jnp.abs(b) <= t, 0.0, b - jnp.sign(b) * t)


hand_prox = _by_name(lambda k: k / (1.0 + 2.0 * LEARNING_RATE * L2_FACTOR), _soft_threshold)


# ----------------------------------------------------------------------------- cases


def _opt_step(tx: optax.GradientTransformation, after: Callable | None = None) -> Callable:
    def step(params: Params, state: Any, grads: Params) -> tuple[Params, Any]:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (after(params) if after else params), state

    return step


def _loss_step(tx: optax.GradientTransformation, loss: Callable) -> Callable:
    def step(params: Params, state: Any, grads: Params) -> tuple[Params, Any]:
        del grads
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    return step


def _regularized_step(tx: optax.GradientTransformation) -> Callable:
    def step(params: Params, state: Any, grads: Params) -> tuple[Params, Any]:
        grads = jax.tree_util.tree_map(jnp.add, grads, jax.grad(hand_penalty)(params))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def build_case(name: str, opt: str) -> tuple[Callable, optax.GradientTransformation]:
    """A fresh step function and the transform whose state it takes, for case ``name``."""
    tx = optimizer(opt)
    if name == "opt":
        return _opt_step(tx), tx
    if name == "constrain/hand":
        return _opt_step(tx, hand_projection), tx
    if name == "constrain/jaxcons":
        tx = optax.chain(tx, jaxcons.constrain(constraint_rules()))
        return _opt_step(tx), tx
    if name == "penalty/hand":
        return _loss_step(tx, hand_penalty), tx
    if name == "penalty/jaxcons":
        rules = regularizer_rules()
        return _loss_step(tx, lambda p: jaxcons.penalty(p, rules)), tx
    if name == "regularize/hand":
        return _regularized_step(tx), tx
    if name == "regularize/jaxcons":
        tx = optax.chain(jaxcons.regularize(regularizer_rules()), tx)
        return _opt_step(tx), tx
    if name == "proximal/hand":
        return _opt_step(tx, hand_prox), tx
    if name == "proximal/jaxcons":
        tx = optax.chain(tx, jaxcons.proximal(regularizer_rules(), LEARNING_RATE))
        return _opt_step(tx), tx
    raise ValueError(f"unknown case {name!r}")


CASES = (
    "opt",
    "constrain/hand",
    "constrain/jaxcons",
    "penalty/hand",
    "penalty/jaxcons",
    "regularize/hand",
    "regularize/jaxcons",
    "proximal/hand",
    "proximal/jaxcons",
)
PHASES = ("trace", "lower", "compile", "total", "cpu")


def time_case(name: str, opt: str, params: Params, grads: Params) -> dict[str, float]:
    step, tx = build_case(name, opt)
    state = tx.init(params)
    jax.clear_caches()  # No trace or compile cached by an earlier case or round.
    gc.collect()
    jitted = jax.jit(step)
    c0, t0 = time.process_time(), time.perf_counter()
    traced = jitted.trace(params, state, grads)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    return {"trace": t1 - t0, "lower": t2 - t1, "compile": t3 - t2, "total": t3 - t0, "cpu": cpu}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leaves", type=int, default=1000, help="leaves in the tree (N)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    env = environment(f"{args.leaves} leaves; {args.optimizer}; {args.repeats} rounds")
    params = make_params(args.leaves)
    grads = jax.tree_util.tree_map(lambda p: 1e-2 * jnp.ones_like(p), params)
    tiny = make_params(4)
    for name in args.cases:  # Warm-up: first-call costs of JAX itself stay out of the figures.
        time_case(name, args.optimizer, tiny, tiny)
    times: dict[str, dict[str, list[float]]] = {c: {ph: [] for ph in PHASES} for c in args.cases}
    for r in range(args.repeats):
        for j in range(len(args.cases)):
            name = args.cases[(r + j) % len(args.cases)]
            t = time_case(name, args.optimizer, params, grads)
            for ph in PHASES:
                times[name][ph].append(t[ph])
            print(
                f"  round {r}: {name:<20} " + " ".join(f"{ph} {t[ph]:6.2f}s" for ph in PHASES),
                flush=True,
            )

    med = {c: {ph: statistics.median(v) for ph, v in t.items()} for c, t in times.items()}
    print(
        f"\nmedian seconds over {args.repeats} rounds [min-max]; cpu = process CPU time of "
        "trace + lower + compile; ratios = jaxcons / hand-written (total and cpu)"
    )
    head = f"{'case':<20}" + "".join(f"{ph:>20}" for ph in PHASES) + f"{'ratio':>7}{'cpu':>6}"
    print(head)
    print("-" * len(head))
    for c in args.cases:
        cells = "".join(
            f"{med[c][ph]:.2f} [{min(times[c][ph]):.2f}-{max(times[c][ph]):.2f}]".rjust(20)
            for ph in PHASES
        )
        hand = c.replace("/jaxcons", "/hand")
        if c != hand and hand in med:
            cells += f"{med[c]['total'] / med[hand]['total']:>7.2f}"
            cells += f"{med[c]['cpu'] / med[hand]['cpu']:>6.2f}"
        print(f"{c:<20}{cells}")
    result = {
        "config": {"leaves": args.leaves, "optimizer": args.optimizer, "repeats": args.repeats},
        "env": env,
        "seconds": times,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
