"""Per-constraint cost: one constraint in ``jaxcons.constrain`` after Adam, vs plain Adam.

Every case is ``optax.chain(optax.adam(1e-3), jaxcons.constrain({"kernel": c}))`` on one
2048x2048 float32 kernel, timed as a jitted optimizer step (``tx.update`` +
``optax.apply_updates`` on fixed gradients) with the parameters and optimizer state donated;
the reference is plain ``optax.adam`` in the same process. The kernel starts inside each set
(``jaxcons.apply_constraints`` on a Glorot-uniform draw), as a training run would. Timing and
the table come from ``benchmarks/train_step.py`` (interleaved rounds, the starting case rotated
each round; ratios of medians against ``adam`` from the same run).

To add a constraint, add a row to ``CASES`` below.

Run: ``python benchmarks/constraint_cost.py [--rounds N] [--only SUBSTRING ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from train_step import (
    JaxCase,
    environment,
    fresh,
    interleaved,
    make_opt_step,
    print_table,
    summarize,
    write_json,
)

import jaxcons
from jaxcons.constraints import (
    Clip,
    Intersection,
    L1Ball,
    MaxNorm,
    NofM,
    NonNeg,
    Simplex,
    TopK,
)

WIDTH = 2048
LEARNING_RATE = 1e-3
LIMIT = float(np.sqrt(6.0 / (WIDTH + WIDTH)))  # Glorot uniform: entries in (-0.038, 0.038).


def optax_l1_ball(w: jax.Array) -> jax.Array:
    """The sort-based L1-ball projection of optax, column by column: what `L1Ball` replaces."""
    return jax.vmap(lambda v: optax.projections.projection_l1_ball(v, 10.0), 1, 1)(w)


class UnrecognisedClip(jaxcons.Constraint):
    """``clip(w, -a, a)`` without ``elementwise_bounds``: `Intersection` has no closed form
    for it, so an intersection with it runs Dykstra's algorithm."""

    convex = True  # The Euclidean projection onto a box: Intersection accepts it.

    def __init__(self, a: float):
        self.a = a

    def __call__(self, w: jax.Array) -> jax.Array:
        return jnp.clip(w, -self.a, self.a)

    def get_config(self) -> dict[str, Any]:
        return {"a": self.a}


# (name, constraint): one row per case (names of at most 23 characters, for the table). Bounds
# are chosen so that each constraint is active on the kernel (a column's L1 norm is about 39,
# its L2 norm about 1).
CASES: list[tuple[str, Any]] = [
    ("MaxNorm(0.5)", MaxNorm(0.5)),  # The existing norm constraint, for reference.
    ("Clip(-0.02, 0.02)", Clip(-0.02, 0.02)),
    ("Clip(max=per-column)", Clip(max_value=np.linspace(0.01, 0.03, WIDTH))),
    ("L1Ball(10.0)", L1Ball(10.0)),
    ("optax L1 ball (sort)", optax_l1_ball),  # A plain callable, as a baseline for L1Ball.
    ("Simplex()", Simplex()),
    ("TopK(10% of all)", TopK(WIDTH * WIDTH // 10)),
    ("TopK(205, axis=0)", TopK(205, axis=0)),
    ("NofM(2, 4)", NofM(2, 4)),
    ("Isect(NonNeg, Clip)", Intersection(NonNeg(), Clip(-0.02, 0.02))),  # One clip.
    ("Isect(NonNeg, MaxNorm)", Intersection(NonNeg(), MaxNorm(0.5))),  # Closed form.
    ("Isect(MaxNorm, Clip)", Intersection(MaxNorm(0.5), Clip(-0.02, 0.02))),  # KKT form.
    ("Isect Dykstra x10", Intersection(MaxNorm(0.5), UnrecognisedClip(0.02), n_iter=10)),
    ("Isect Dykstra x100", Intersection(MaxNorm(0.5), UnrecognisedClip(0.02), n_iter=100)),
    ("Isect Dykstra tol", Intersection(MaxNorm(0.5), UnrecognisedClip(0.02))),
]


def cases(selected: list[tuple[str, Any]]) -> dict[str, tuple[optax.GradientTransformation, Any]]:
    """``name -> (optimizer, constraint or None)``, plain Adam first."""
    adam = optax.adam(LEARNING_RATE)
    out: dict[str, tuple[optax.GradientTransformation, Any]] = {"adam": (adam, None)}
    for name, c in selected:
        out[name] = (optax.chain(adam, jaxcons.constrain({"kernel": c})), c)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case")
    parser.add_argument("--only", nargs="*", default=[], help="cases whose name contains one of")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    selected = [(n, c) for n, c in CASES if not args.only or any(s in n for s in args.only)]
    environment(f"{WIDTH}x{WIDTH} kernel; {args.rounds} rounds")
    key_p, key_g = jax.random.split(jax.random.PRNGKey(0))
    kernel = jax.random.uniform(key_p, (WIDTH, WIDTH), jnp.float32, -LIMIT, LIMIT)
    grads = {"kernel": 1e-3 * jax.random.normal(key_g, (WIDTH, WIDTH), jnp.float32)}
    timed: dict[str, JaxCase] = {}
    temps: dict[str, Any] = {}
    for name, (tx, c) in cases(selected).items():
        params = fresh({"kernel": kernel})
        if c is not None:
            params = jaxcons.apply_constraints(params, {"kernel": c})
        case = JaxCase(make_opt_step(tx), params, tx.init(params), grads)
        timed[name], temps[name] = case, case.temp_bytes
    stats = summarize(*interleaved(timed, args.rounds, args.warmup), "adam")
    print_table("Optimizer step (update + apply_updates), ratios vs adam", stats, timed, "adam")
    result = {n: {**s, "temp_bytes": temps.get(n)} for n, s in stats.items()}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
