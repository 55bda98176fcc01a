"""Training-step benchmark: what do constraints cost on top of plain Adam?

MLPs trained with loss + grad + Adam (+ constraints) in ONE jitted step whose params and
optimizer state are donated, in two configurations:

  memory    4 layers of 2048x2048 kernels + biases (16.8M parameters), tanh, batch 32: the
            optimizer's memory traffic dominates the step, so whatever a constraint adds to
            it shows in full
  compute   784-1024-1024-10 (1.9M parameters), relu, batch 256: the matrix products
            dominate; constraints should cost nothing measurable

Cases (see benchmarks/README.md):

  adam                   plain ``optax.adam(1e-3)``: the 1.00 reference
  after                  ``optax.adam`` then a hand-written projection ``tree_map`` after
                         ``optax.apply_updates``, in the same jit
  naive                  ``optax.chain(adam, T)`` with ``T.update = P(params + updates) -
                         params``
  jaxcons                ``optax.chain(adam, jaxcons.constrain({"**/kernel": MaxNorm(2.),
                         "**/bias": NonNeg()}))`` with its defaults (``scratch=False``: a
                         state with no buffers, the same on every backend)
  jaxcons[scratch=True]  the same with the opt-in CPU scratch buffers
  keras                  Keras 3 (JAX backend) ``train_on_batch``, unconstrained and with
                         ``kernel_constraint=MaxNorm(2.)``, ``bias_constraint=NonNeg()``

Every case of a configuration lives in one process; timing is round-robin (one step of every
case per round, the starting case rotated each round) so drifting machine load hits all cases
alike. Reported: the median step time, ratios of medians against ``adam`` from the same run,
the median of per-round (paired) ratios, the ratio of minimum times and the median number of
minor page faults per step. A second table times
the optimizer step alone (``tx.update`` + ``optax.apply_updates`` on fixed gradients; the same
cases but Keras). For
every compiled step, ``memory_analysis()`` gives the XLA temporary-buffer size and
``cost_analysis()`` XLA's count of bytes accessed (its estimate of the memory traffic).

The first line printed (``env`` in the JSON) names the versions, the device, the CPUs and
the ``malloc`` of the process: ``tcmalloc``, ``jemalloc`` or ``mimalloc`` when one is mapped
into it (``LD_PRELOAD`` or linked), else ``glibc malloc``. XLA:CPU allocates its temporaries on
every step, so on CPU the allocator moves the figures of the memory-bound step.

Run: ``make bench`` (this script with the default allocator, then again with
``libtcmalloc_minimal.so.4`` preloaded where it is installed) or ``python
benchmarks/train_step.py [--config memory|compute|all] [--rounds N] [--json PATH]``, with
``LD_PRELOAD=/path/to/libtcmalloc_minimal.so.4`` in front for tcmalloc. The defaults follow
the device: more rounds on GPU/TPU, where one step takes far less time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

os.environ["KERAS_BACKEND"] = "jax"  # Before anything imports keras.

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcons
from jaxcons.constraints import MaxNorm, NonNeg

MAX_NORM = 2.0
LEARNING_RATE = 1e-3
RULES = {"**/kernel": MaxNorm(MAX_NORM), "**/bias": NonNeg()}

Params = dict[str, dict[str, jax.Array]]


class Config(NamedTuple):
    """One model: layer sizes (input first), hidden activation, batch size."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    batch: int

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1

    def describe(self) -> str:
        return f"{'-'.join(map(str, self.sizes))} MLP, {self.activation}, batch {self.batch}"


CONFIGS = {
    "memory": Config("memory", (2048,) * 5, "tanh", 32),
    "compute": Config("compute", (784, 1024, 1024, 10), "relu", 256),
}
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


# ----------------------------------------------------------------------------- model


def init_params(key: jax.Array, cfg: Config) -> Params:
    """Glorot-uniform kernels and zero biases, as Keras's Dense initialises them."""
    keys = jax.random.split(key, cfg.layers)
    params = {}
    for i, (k, n_in, n_out) in enumerate(zip(keys, cfg.sizes[:-1], cfg.sizes[1:], strict=True)):
        limit = float(np.sqrt(6.0 / (n_in + n_out)))
        params[f"dense_{i}"] = {
            "kernel": jax.random.uniform(k, (n_in, n_out), jnp.float32, -limit, limit),
            "bias": jnp.zeros((n_out,), jnp.float32),
        }
    return params


def make_loss(cfg: Config) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
    act = ACTIVATIONS[cfg.activation]

    def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        """Mean squared error of the MLP: the activation on every hidden layer."""
        h = x
        for i in range(cfg.layers):
            layer = params[f"dense_{i}"]
            h = h @ layer["kernel"] + layer["bias"]
            if i < cfg.layers - 1:
                h = act(h)
        return jnp.mean(jnp.square(h - y))

    return loss_fn


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
    """``jaxcons.constrain`` with its defaults, and with the opt-in scratch buffers."""
    adam = optax.adam(LEARNING_RATE)
    default = jaxcons.constrain(RULES)
    if default.init(params).scratch:
        raise RuntimeError("jaxcons.constrain's default now keeps scratch buffers: relabel")
    return {
        "jaxcons": optax.chain(adam, default),
        "jaxcons[scratch=True]": optax.chain(adam, jaxcons.constrain(RULES, scratch=True)),
    }


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


def make_train_step(tx: optax.GradientTransformation, project_after: bool, loss_fn: Callable):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Params, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if project_after:
            params = hand_projection(params)
        return params, opt_state, loss

    return step


def make_opt_step(tx: optax.GradientTransformation, project_after: bool = False) -> Callable:
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Params, opt_state: Any, grads: Params) -> tuple:
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (hand_projection(params) if project_after else params), opt_state

    return step


def _bytes_accessed(compiled: Any) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device.
        analysis = analysis[0] if analysis else None
    value = None if analysis is None else analysis.get("bytes accessed")
    return None if value is None else float(value)


class JaxCase:
    """A jitted step with its own donated params and optimizer state."""

    def __init__(self, step: Callable, params: Params, opt_state: Any, *args: jax.Array):
        self.step, self.args = step, args
        self.params, self.opt_state = params, opt_state
        compiled = step.lower(params, opt_state, *args).compile()
        analysis = compiled.memory_analysis()
        self.temp_bytes = None if analysis is None else int(analysis.temp_size_in_bytes)
        self.bytes_accessed = _bytes_accessed(compiled)

    def __call__(self) -> None:
        out = self.step(self.params, self.opt_state, *self.args)
        self.params, self.opt_state = out[0], out[1]
        jax.block_until_ready(out)


def fresh(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.copy, tree)


# ----------------------------------------------------------------------------- keras


def keras_cases(
    cfg: Config, params: Params, x: np.ndarray, y: np.ndarray
) -> dict[str, Callable[[], None]]:
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
        layers: list[Any] = [keras.Input((cfg.sizes[0],))]
        for i, width in enumerate(cfg.sizes[1:]):
            act = cfg.activation if i < cfg.layers - 1 else None
            layers.append(keras.layers.Dense(width, activation=act, name=f"dense_{i}", **kw))
        model = keras.Sequential(layers)
        for i in range(cfg.layers):
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
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[int]]]:
    """Times one call of every case per round, rotating which case goes first.

    Returns wall-clock and process CPU times (all threads, user + system) per call, and the
    minor page faults of the process during each call (memory the kernel had to map in: XLA's
    temporaries, when they come fresh from the operating system). On a shared machine the CPU
    time is the steadier of the two times: it leaves out the time spent waiting for a core,
    but keeps page faults and Python overhead.
    """
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    for r in range(rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, t0 = time.process_time(), time.perf_counter()
            cases[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return wall, cpu, faults


def summarize(
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    faults: dict[str, list[int]],
    ref: str,
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
            "page_faults": statistics.median(faults[name]),
        }
    return out


def print_table(
    title: str, stats: dict[str, dict[str, float]], cases: dict[str, Any], ref: str
) -> None:
    """One row per case; ``XLA GB`` is XLA's count of bytes accessed by one step, ``faults``
    the median minor page faults of the process during one step."""
    print(f"\n{title}")
    head = (
        f"{'case':<24}{'median ms':>10}{'min ms':>8}{'ratio':>7}{'paired':>7}{'min-ratio':>10}"
        f"{'cpu-ratio':>10}{'faults':>8}{'XLA temp MiB':>13}{'XLA GB':>8}{'GB ratio':>9}"
    )
    print(head)
    print("-" * len(head))
    ref_bytes = getattr(cases.get(ref), "bytes_accessed", None)
    for name, s in stats.items():
        temp = getattr(cases[name], "temp_bytes", None)
        moved = getattr(cases[name], "bytes_accessed", None)
        temp_s = "n/a" if temp is None else f"{temp / 2**20:.1f}"
        moved_s = "n/a" if moved is None else f"{moved / 1e9:.3f}"
        ratio_s = "n/a" if moved is None or not ref_bytes else f"{moved / ref_bytes:.2f}"
        print(
            f"{name:<24}{s['median_ms']:>10.1f}{s['min_ms']:>8.1f}{s['ratio']:>7.2f}"
            f"{s['paired_ratio']:>7.2f}{s['min_ratio']:>10.2f}{s['cpu_ratio']:>10.2f}"
            f"{s['page_faults']:>8.0f}{temp_s:>13}{moved_s:>8}{ratio_s:>9}"
        )


ALLOCATORS = {"tcmalloc": "libtcmalloc", "jemalloc": "libjemalloc", "mimalloc": "libmimalloc"}


def allocator() -> dict[str, Any]:
    """Which ``malloc`` this process uses: tcmalloc, jemalloc or mimalloc if one is mapped.

    A library is found in ``/proc/self/maps`` (mapped into the process, preloaded or linked)
    or, where that file does not exist, in ``LD_PRELOAD``; ``allocator_preloaded`` says whether
    ``LD_PRELOAD`` names it. Otherwise the C library's own: ``glibc malloc`` on glibc Linux.
    XLA:CPU allocates its temporaries with ``malloc`` on every call, so the allocator moves
    the figures of a memory-bound step (BUILD.md, "CPU allocator").
    """
    preload = [p for p in re.split(r"[\s:]+", os.environ.get("LD_PRELOAD", "")) if p]
    try:
        with open("/proc/self/maps") as f:  # address perms offset dev inode [path]
            mapped = sorted({fields[5] for fields in map(str.split, f) if len(fields) > 5})
    except OSError:  # Not Linux: trust LD_PRELOAD alone.
        mapped = preload
    for name, stem in ALLOCATORS.items():
        found = [path for path in mapped if os.path.basename(path).startswith(stem)]
        if found:
            path = found[0]
            preloaded = any(os.path.basename(p).startswith(stem) for p in preload)
            return {"allocator": name, "allocator_library": path, "allocator_preloaded": preloaded}
    libc = platform.libc_ver()[0]
    default = "glibc malloc" if libc == "glibc" else f"{libc or platform.system()} system malloc"
    return {"allocator": default, "allocator_library": None, "allocator_preloaded": False}


def environment(details: str = "") -> dict[str, Any]:
    """Prints, and returns, what the figures are measured on: versions, device, CPUs and the
    ``malloc`` in use (:func:`allocator`).

    ``details`` (the run's configuration) is appended to the printed line.
    """
    device = jax.devices()[0]
    env = {
        "jax": jax.__version__,
        "optax": optax.__version__,
        "jaxcons": jaxcons.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **allocator(),
    }
    malloc = env["allocator"]
    if env["allocator_library"]:
        how = "LD_PRELOAD" if env["allocator_preloaded"] else "linked"
        malloc += f" ({how} {env['allocator_library']})"
    print(
        f"jax {env['jax']}, optax {env['optax']}, jaxcons {env['jaxcons']}; device "
        f"{env['platform']}:{env['device_kind']} ({env['device_count']} devices); "
        f"{env['cpu_count']} CPUs; Python {env['python']}; allocator {malloc}"
        + (f"; {details}" if details else ""),
        flush=True,
    )
    return env


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """Writes ``result`` to ``path`` as JSON (the ``--json`` option), if a path is given."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {path}")


def _with_xla_figures(stats: dict[str, dict[str, float]], cases: dict[str, Any]) -> dict:
    return {
        n: {
            **s,
            "temp_bytes": getattr(cases[n], "temp_bytes", None),
            "bytes_accessed": getattr(cases[n], "bytes_accessed", None),
        }
        for n, s in stats.items()
    }


# ----------------------------------------------------------------------------- main


def run_config(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    key_p, key_x, key_y, key_g = jax.random.split(jax.random.PRNGKey(0), 4)
    params = init_params(key_p, cfg)
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    x = jax.random.normal(key_x, (cfg.batch, cfg.sizes[0]), jnp.float32)
    y = jax.random.normal(key_y, (cfg.batch, cfg.sizes[-1]), jnp.float32)
    label = f"{cfg.name}-bound: {cfg.describe()}, {n_params / 1e6:.1f}M params"
    print(f"\n=== {label}; {args.rounds} rounds")
    result: dict[str, Any] = {
        "config": {**cfg._asdict(), "params": int(n_params)},
    }
    loss_fn = make_loss(cfg)

    if not args.no_train:
        cases: dict[str, Any] = {}
        for name, (tx, after) in optax_cases(params).items():
            p = fresh(params)
            cases[name] = JaxCase(make_train_step(tx, after, loss_fn), p, tx.init(p), x, y)
        if not args.no_keras:
            cases.update(keras_cases(cfg, params, np.asarray(x), np.asarray(y)))
        timings = interleaved(cases, args.rounds, args.warmup)
        stats = summarize(*timings, "adam")
        if "keras" in stats:
            vs_keras = summarize(*timings, "keras")
            for name, s in stats.items():
                s["ratio_vs_keras"] = vs_keras[name]["ratio"]
                s["min_ratio_vs_keras"] = vs_keras[name]["min_ratio"]
                s["cpu_ratio_vs_keras"] = vs_keras[name]["cpu_ratio"]
        print_table(f"Training step ({label}), ratios vs adam", stats, cases, "adam")
        if "keras" in stats:
            kc = stats["keras+constraints"]
            print(
                f"keras+constraints / keras: {kc['ratio_vs_keras']:.2f} "
                f"(min-ratio {kc['min_ratio_vs_keras']:.2f}, "
                f"cpu-ratio {kc['cpu_ratio_vs_keras']:.2f})"
            )
            for name in ("jaxcons", "jaxcons[scratch=True]"):
                kj = stats[name]
                print(
                    f"{name} / keras+constraints: {kj['ratio'] / kc['ratio']:.2f} "
                    f"(min-ratio {kj['min_ratio'] / kc['min_ratio']:.2f}, "
                    f"cpu-ratio {kj['cpu_ratio'] / kc['cpu_ratio']:.2f})"
                )
        result["train_step"] = _with_xla_figures(stats, cases)

    if not args.no_opt:
        grads = jax.tree_util.tree_map(
            lambda p: 1e-3 * jax.random.normal(key_g, p.shape, p.dtype), params
        )
        cases = {}
        for name, (tx, after) in optax_cases(params).items():
            p = fresh(params)
            cases[name] = JaxCase(make_opt_step(tx, after), p, tx.init(p), grads)
        stats = summarize(*interleaved(cases, args.rounds, args.warmup), "adam")
        print_table(
            f"Optimizer step alone ({cfg.name}-bound; update + apply_updates), ratios vs adam",
            stats,
            cases,
            "adam",
        )
        result["opt_step"] = _with_xla_figures(stats, cases)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    parser.add_argument(
        "--rounds", type=int, default=40 if on_cpu else 300, help="timed rounds (40 CPU, 300 else)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3 if on_cpu else 20, help="untimed calls per case"
    )
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras 3 cases")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step table")
    parser.add_argument("--no-opt", action="store_true", help="skip the optimizer-step table")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    env = environment()
    print(
        "jaxcons = constrain(rules) with its defaults (scratch=False: no scratch buffers, a "
        "state that is the same on every backend); jaxcons[scratch=True] = the opt-in CPU "
        "scratch buffers"
    )
    result: dict[str, Any] = {
        "env": env,
        "rounds": args.rounds,
        "warmup": args.warmup,
    }
    names = list(CONFIGS) if args.config == "all" else [args.config]
    for name in names:
        result[name] = run_config(CONFIGS[name], args)

    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
