"""Training-step benchmark: what do constraints cost on top of plain Adam?

A 4-layer MLP (2048x2048 kernels + biases, 16.8M parameters, tanh, batch 32) trained with
loss + grad + Adam (+ constraints) in ONE jitted step whose params and optimizer state are
donated. At this size the optimizer's memory traffic dominates the step, so whatever a
constraint adds to that traffic shows up in full. Cases (see benchmarks/README.md):

  adam       plain ``optax.adam(1e-3)``: the 1.00 reference
  after      ``optax.adam`` then a hand-written projection ``tree_map`` after
             ``optax.apply_updates``, in the same jit
  naive      ``optax.chain(adam, T)`` with ``T.update = P(params + updates) - params``
  jaxcons    ``optax.chain(adam, jaxcons.constrain({"**/kernel": MaxNorm(2.),
             "**/bias": NonNeg()}))`` with its defaults; ``jaxcons[scratch=...]`` rows force
             the scratch buffer on or off (see the `jaxcons.constrain` docstring)
  keras      Keras 3 (JAX backend) ``train_on_batch``, unconstrained and with
             ``kernel_constraint=MaxNorm(2.)``, ``bias_constraint=NonNeg()``

Every case lives in one process; timing is round-robin (one step of every case per round,
the starting case rotated each round) so drifting machine load hits all cases alike.
Reported: the median step time, ratios of medians against ``adam`` from the same run, the
median of per-round (paired) ratios and the ratio of minimum times. A second table times
the optimizer step alone (``tx.update`` + ``optax.apply_updates`` on fixed gradients).
``memory_analysis()`` of each compiled step gives the XLA temporary-buffer size.

Run: ``make bench`` or ``python benchmarks/train_step.py [--rounds N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ["KERAS_BACKEND"] = "jax"  # Before anything imports keras.

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcons
from jaxcons.constraints import MaxNorm, NonNeg

WIDTH = 2048
LAYERS = 4
BATCH = 32
MAX_NORM = 2.0
LEARNING_RATE = 1e-3
RULES = {"**/kernel": MaxNorm(MAX_NORM), "**/bias": NonNeg()}

Params = dict[str, dict[str, jax.Array]]


# ----------------------------------------------------------------------------- model


def init_params(key: jax.Array) -> Params:
    """Glorot-uniform kernels and zero biases, as Keras's Dense initialises them."""
    limit = float(np.sqrt(6.0 / (WIDTH + WIDTH)))
    keys = jax.random.split(key, LAYERS)
    return {
        f"dense_{i}": {
            "kernel": jax.random.uniform(k, (WIDTH, WIDTH), jnp.float32, -limit, limit),
            "bias": jnp.zeros((WIDTH,), jnp.float32),
        }
        for i, k in enumerate(keys)
    }


def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of the MLP: tanh on every hidden layer, linear output."""
    h = x
    for i in range(LAYERS):
        layer = params[f"dense_{i}"]
        h = h @ layer["kernel"] + layer["bias"]
        if i < LAYERS - 1:
            h = jnp.tanh(h)
    return jnp.mean(jnp.square(h - y))


# ----------------------------------------------------------------------------- cases


def hand_projection(params: Params) -> Params:
    """The projection written out by hand: max-norm columns of kernels, non-negative biases."""

    def project(path: tuple[Any, ...], w: jax.Array) -> jax.Array:
        if path[-1].key == "kernel":
            n = jnp.sqrt(jnp.sum(jnp.square(w), axis=0, keepdims=True))
            return w * jnp.where(n > MAX_NORM, MAX_NORM / n, 1.0)
        return jnp.maximum(w, 0.0)

    return jax.tree_util.tree_map_with_path(project, params)


def naive_constrain(rules: Any) -> optax.GradientTransformation:
    """The textbook transform ``u' = P(p + u) - p``, nothing more."""

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        target = jaxcons.apply_constraints(optax.apply_updates(params, updates), rules)
        return jax.tree_util.tree_map(jnp.subtract, target, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def jaxcons_variants(params: Params) -> dict[str, optax.GradientTransformation]:
    """``jaxcons.constrain`` as shipped, plus the other scratch setting (see its docstring)."""
    adam = optax.adam(LEARNING_RATE)
    default = jaxcons.constrain(RULES)
    out = {"jaxcons": optax.chain(adam, default)}
    if "scratch" in inspect.signature(jaxcons.constrain).parameters:
        on_by_default = bool(default.init(params).scratch)
        flag = not on_by_default
        out[f"jaxcons[scratch={flag}]"] = optax.chain(adam, jaxcons.constrain(RULES, scratch=flag))
    return out


def optax_cases(params: Params) -> dict[str, tuple[optax.GradientTransformation, bool]]:
    """``name -> (optimizer, project after apply_updates)``."""
    adam = optax.adam(LEARNING_RATE)
    cases = {
        "adam": (adam, False),
        "after": (adam, True),
        "naive": (optax.chain(adam, naive_constrain(RULES)), False),
    }
    cases.update({name: (tx, False) for name, tx in jaxcons_variants(params).items()})
    return cases


def make_train_step(tx: optax.GradientTransformation, project_after: bool) -> Callable:
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Params, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if project_after:
            params = hand_projection(params)
        return params, opt_state, loss

    return step


def make_opt_step(tx: optax.GradientTransformation) -> Callable:
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Params, opt_state: Any, grads: Params) -> tuple:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


class JaxCase:
    """A jitted step with its own donated params and optimizer state."""

    def __init__(self, step: Callable, params: Params, opt_state: Any, *args: jax.Array):
        self.step, self.args = step, args
        self.params, self.opt_state = params, opt_state
        compiled = step.lower(params, opt_state, *args).compile()
        analysis = compiled.memory_analysis()
        self.temp_bytes = None if analysis is None else int(analysis.temp_size_in_bytes)

    def __call__(self) -> None:
        out = self.step(self.params, self.opt_state, *self.args)
        self.params, self.opt_state = out[0], out[1]
        jax.block_until_ready(out)


def fresh(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.copy, tree)


# ----------------------------------------------------------------------------- keras


def keras_cases(params: Params, x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], None]]:
    """Keras 3 models with the same weights, trained by ``train_on_batch`` as users do."""
    try:
        import keras
    except ImportError as e:  # The benchmark still runs without Keras.
        print(f"[keras cases skipped: {e}]", file=sys.stderr)
        return {}
    if keras.backend.backend() != "jax":
        print(f"[keras cases skipped: backend is {keras.backend.backend()}]", file=sys.stderr)
        return {}

    def build(constrained: bool) -> Callable[[], None]:
        kw: dict[str, Any] = {}
        if constrained:
            kw = {
                "kernel_constraint": keras.constraints.MaxNorm(MAX_NORM),
                "bias_constraint": keras.constraints.NonNeg(),
            }
        layers: list[Any] = [keras.Input((WIDTH,))]
        for i in range(LAYERS):
            act = "tanh" if i < LAYERS - 1 else None
            layers.append(keras.layers.Dense(WIDTH, activation=act, name=f"dense_{i}", **kw))
        model = keras.Sequential(layers)
        for i in range(LAYERS):
            layer = params[f"dense_{i}"]
            model.get_layer(f"dense_{i}").set_weights(
                [np.asarray(layer["kernel"]), np.asarray(layer["bias"])]
            )
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
        return lambda: model.train_on_batch(x, y)

    return {"keras": build(False), "keras+constraints": build(True)}


# ----------------------------------------------------------------------------- timing


def interleaved(
    cases: dict[str, Callable[[], None]], rounds: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Times one call of every case per round, rotating which case goes first.

    Returns wall-clock and process CPU times (all threads, user + system) per call. On a
    shared machine the CPU time is the steadier of the two: it leaves out the time spent
    waiting for a core, but keeps page faults and Python overhead.
    """
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            c0, t0 = time.process_time(), time.perf_counter()
            cases[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def summarize(
    wall: dict[str, list[float]], cpu: dict[str, list[float]], ref: str
) -> dict[str, dict[str, float]]:
    """Medians and ratios against case ``ref`` (all from the same interleaved run)."""
    med_ref, min_ref = statistics.median(wall[ref]), min(wall[ref])
    cpu_ref = statistics.median(cpu[ref])
    out = {}
    for name, ts in wall.items():
        paired = [t / t_ref for t, t_ref in zip(ts, wall[ref], strict=True)]
        out[name] = {
            "median_ms": 1e3 * statistics.median(ts),
            "min_ms": 1e3 * min(ts),
            "ratio": statistics.median(ts) / med_ref,
            "paired_ratio": statistics.median(paired),
            "min_ratio": min(ts) / min_ref,
            "cpu_median_ms": 1e3 * statistics.median(cpu[name]),
            "cpu_ratio": statistics.median(cpu[name]) / cpu_ref,
        }
    return out


def print_table(title: str, stats: dict[str, dict[str, float]], temps: dict[str, Any]) -> None:
    print(f"\n{title}")
    head = (
        f"{'case':<24}{'median ms':>10}{'min ms':>8}{'ratio':>7}{'paired':>7}{'min-ratio':>10}"
        f"{'cpu-ratio':>10}{'XLA temp MiB':>13}"
    )
    print(head)
    print("-" * len(head))
    for name, s in stats.items():
        temp = temps.get(name)
        temp_s = "n/a" if temp is None else f"{temp / 2**20:.1f}"
        print(
            f"{name:<24}{s['median_ms']:>10.1f}{s['min_ms']:>8.1f}{s['ratio']:>7.2f}"
            f"{s['paired_ratio']:>7.2f}{s['min_ratio']:>10.2f}{s['cpu_ratio']:>10.2f}{temp_s:>13}"
        )


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras 3 cases")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step table")
    parser.add_argument("--no-opt", action="store_true", help="skip the optimizer-step table")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, jaxcons {jaxcons.__version__}; "
        f"device {device.platform}:{device.device_kind}; {os.cpu_count()} CPUs; "
        f"{LAYERS}x({WIDTH}x{WIDTH} kernel + bias), batch {BATCH}; {args.rounds} rounds"
    )
    key_p, key_x, key_y, key_g = jax.random.split(jax.random.PRNGKey(0), 4)
    params = init_params(key_p)
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    x = jax.random.normal(key_x, (BATCH, WIDTH), jnp.float32)
    y = jax.random.normal(key_y, (BATCH, WIDTH), jnp.float32)
    result: dict[str, Any] = {
        "config": {
            "layers": LAYERS, "width": WIDTH, "batch": BATCH, "params": int(n_params),
            "rounds": args.rounds, "warmup": args.warmup,
        },
        "env": {
            "jax": jax.__version__, "optax": optax.__version__, "jaxcons": jaxcons.__version__,
            "platform": device.platform, "device_kind": device.device_kind,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
        },
    }

    if not args.no_train:
        cases: dict[str, Callable[[], None]] = {}
        temps: dict[str, Any] = {}
        for name, (tx, after) in optax_cases(params).items():
            p = fresh(params)
            case = JaxCase(make_train_step(tx, after), p, tx.init(p), x, y)
            cases[name], temps[name] = case, case.temp_bytes
        if not args.no_keras:
            cases.update(keras_cases(params, np.asarray(x), np.asarray(y)))
        wall, cpu = interleaved(cases, args.rounds, args.warmup)
        stats = summarize(wall, cpu, "adam")
        if "keras" in stats:
            vs_keras = summarize(wall, cpu, "keras")
            for name, s in stats.items():
                s["ratio_vs_keras"] = vs_keras[name]["ratio"]
                s["min_ratio_vs_keras"] = vs_keras[name]["min_ratio"]
                s["cpu_ratio_vs_keras"] = vs_keras[name]["cpu_ratio"]
        print_table(f"Training step ({n_params / 1e6:.1f}M params), ratios vs adam", stats, temps)
        if "keras" in stats:
            kc, kj = stats["keras+constraints"], stats.get("jaxcons")
            print(
                f"keras+constraints / keras: {kc['ratio_vs_keras']:.2f} "
                f"(min-ratio {kc['min_ratio_vs_keras']:.2f}, "
                f"cpu-ratio {kc['cpu_ratio_vs_keras']:.2f})"
            )
            if kj is not None:
                print(
                    f"jaxcons / keras+constraints: {kj['ratio'] / kc['ratio']:.2f} "
                    f"(min-ratio {kj['min_ratio'] / kc['min_ratio']:.2f}, "
                    f"cpu-ratio {kj['cpu_ratio'] / kc['cpu_ratio']:.2f})"
                )
        result["train_step"] = {n: {**s, "temp_bytes": temps.get(n)} for n, s in stats.items()}

    if not args.no_opt:
        grads = jax.tree_util.tree_map(
            lambda p: 1e-3 * jax.random.normal(key_g, p.shape, p.dtype), params
        )
        txs = {"adam": optax.adam(LEARNING_RATE), "naive": optax_cases(params)["naive"][0]}
        txs.update(jaxcons_variants(params))
        cases, temps = {}, {}
        for name, tx in txs.items():
            p = fresh(params)
            case = JaxCase(make_opt_step(tx), p, tx.init(p), grads)
            cases[name], temps[name] = case, case.temp_bytes
        stats = summarize(*interleaved(cases, args.rounds, args.warmup), "adam")
        print_table("Optimizer step alone (update + apply_updates), ratios vs adam", stats, temps)
        result["opt_step"] = {n: {**s, "temp_bytes": temps.get(n)} for n, s in stats.items()}

    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
