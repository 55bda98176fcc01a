"""Sharding checks for jaxcons on 8 CPU devices; a script run in its own process.

``tests/test_sharding.py`` runs this file with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` in its environment: the flag only takes
effect if it is set before jax starts, hence the separate process (run by hand,
``python tests/sharding_checks.py [check ...]`` sets it itself). On a 1-D ``('model',)`` mesh
of 8 devices and a 2-D ``('data', 'model')`` mesh of 2 x 4, each in JAX's ``Auto`` and
``Explicit`` axis modes, every entry point runs on parameters sharded with ``NamedSharding``:
a Megatron-style dense pair (output axis sharded, then input axis sharded), Conv2D kernels with
sharded input or output channels, sharded and replicated biases, and a square kernel sharded
on both mesh axes. Each check asserts that

* every output leaf keeps the sharding of the matching input leaf
  (``out.sharding.is_equivalent_to(in.sharding, ndim)``), and the values agree with the same
  computation on unsharded copies;
* the compiled program (``jax.jit(f).lower(...).compile().as_text()``) never gathers a
  parameter: a norm across a sharded axis compiles to an all-reduce of the small norms only.

One ``PASS``, ``FAIL`` or ``NOTE`` line is printed per check and mesh, then a ``SUMMARY`` line;
the exit status is 1 if any check failed. ``NOTE`` lines report documented limitations.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # Must happen before jax is imported.
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
    ).strip()

import math
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcons import (
    L1,
    L1L2,
    L2,
    Clip,
    GroupLasso,
    L1Ball,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    NuclearBall,
    Orthogonal,
    OrthogonalRegularizer,
    RadialConstraint,
    Simplex,
    SingularValueClip,
    SpectralNorm,
    UnitNorm,
    apply_constraints,
    chain,
    constrain,
    path_str,
    penalty,
    proximal,
    regularize,
    spectral_norm_bounds,
)
from jaxcons.flax import TrainState

N_DEVICES = 8

# ---------------------------------------------------------------------------------------------
# Collectives in compiled HLO text.

_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\(.*?\)|[a-z][a-z0-9]*\[[0-9,]*\]\S*)\s+"
    r"(?P<op>all-gather|all-to-all|ragged-all-to-all|all-reduce|reduce-scatter|"
    r"collective-permute|collective-broadcast)(?P<start>-start)?\("
)
_ARRAY = re.compile(r"\b[a-z][a-z0-9]*\[([0-9,]*)\]")
_COMMENT = re.compile(r"/\*.*?\*/")
_LAYOUT = re.compile(r"\{[^}]*\}")

# Collectives that move (rather than reduce) data between devices: a parameter-sized one means
# a parameter was gathered.
MOVING_OPS = ("all-gather", "all-to-all", "ragged-all-to-all", "collective-permute")


class Collective(NamedTuple):
    """One collective instruction: its opcode, its result shape, its number of elements, and
    whether it lies in a branch of a ``conditional`` (a `jax.lax.cond`: a fallback that runs
    only when a check fails, such as the exact SVD of a certified constraint)."""

    op: str
    shape: str
    elements: int
    in_branch: bool = False


_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) \(.*\{$")
_BRANCHES = re.compile(
    r"(?:branch_computations=\{(?P<list>[^}]*)\}|true_computation=%(?P<t>[\w.\-]+)"
    r"|false_computation=%(?P<f>[\w.\-]+))"
)
_CALLED = re.compile(
    r"(?:calls|to_apply|body|condition|called_computations)=\{?(?P<names>%[\w.\-]+"
    r"(?:, %[\w.\-]+)*)"
)


def _branch_computations(hlo: str) -> set[str]:
    """The computations run only inside a conditional's branches, and those they call."""
    calls: dict[str, set[str]] = {}
    roots: set[str] = set()
    current = None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m["name"]
            calls[current] = set()
            continue
        if current is None:
            continue
        text = _COMMENT.sub("", line)
        for b in _BRANCHES.finditer(text):
            names = b["list"] or b["t"] or b["f"] or ""
            roots |= {n.strip().lstrip("%") for n in names.split(",") if n.strip()}
        for c in _CALLED.finditer(text):
            calls[current] |= {n.strip().lstrip("%") for n in c["names"].split(",")}
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(calls.get(name, ()))
    return seen


def collectives(hlo: str) -> list[Collective]:
    """Lists the collective instructions of compiled HLO text, with their result sizes.

    An asynchronous ``-start`` instruction has a tuple shape (operands, results): its size is
    that of its largest member, and the matching ``-done`` is not listed again. A collective
    that combines several arrays (a tuple shape) counts all of them.
    """
    found = []
    branches = _branch_computations(hlo)
    current = None
    for line in hlo.splitlines():
        computation = _COMPUTATION.match(line)
        if computation:
            current = computation["name"]
        m = _COLLECTIVE.search(_COMMENT.sub("", line))
        if m is None:
            continue
        sizes = [
            math.prod(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(m["shape"])
        ]
        elements = max(sizes) if m["start"] else sum(sizes)
        shape = _LAYOUT.sub("", m["shape"])
        found.append(Collective(m["op"], shape, elements, current in branches))
    return found


def describe(found: list[Collective]) -> str:
    """``all-reduce f32[64] x2, ...``: each distinct collective once, with its count."""
    if not found:
        return "no collectives"
    counts: dict[str, int] = {}
    for c in found:
        key = f"{c.op} {c.shape}" + (" (in a cond branch)" if c.in_branch else "")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in counts.items())


def parameter_size(params: Any) -> int:
    """The number of elements of the smallest sharded parameter of rank >= 2 (a kernel)."""
    return min(
        x.size
        for x in jax.tree_util.tree_leaves(params)
        if x.ndim >= 2 and not x.sharding.is_fully_replicated
    )


def parameter_sized_moves(found: list[Collective], params: Any) -> list[Collective]:
    """The gathers (all-to-alls, permutes) with at least as many elements as a sharded kernel."""
    size = parameter_size(params)
    return [c for c in found if c.op in MOVING_OPS and c.elements >= size]


def compiled_collectives(fn: Callable[..., Any], *args: Any, **jit_kwargs: Any) -> list[Collective]:
    return collectives(jax.jit(fn, **jit_kwargs).lower(*args).compile().as_text())


# ---------------------------------------------------------------------------------------------
# Problem finders: each returns a list of messages, empty when all is well.


def moves_problems(found: list[Collective]) -> list[str]:
    """For projections and penalties: no data moves between devices at all, only reductions."""
    moves = [c for c in found if c.op in MOVING_OPS]
    return [f"the program moves data between devices: {describe(moves)}"] if moves else []


def gather_problems(found: list[Collective], params: Any) -> list[str]:
    """For whole training steps: no parameter-sized gather, except in the branches of a
    conditional (a certified constraint's fallback, which runs only when its check fails)."""
    big = parameter_sized_moves([c for c in found if not c.in_branch], params)
    if not big:
        return []
    return [
        f"parameter-sized gathers (>= {parameter_size(params)} elements): {describe(big)}; "
        f"all collectives: {describe(found)}"
    ]


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """``[(path, leaf), ...]`` and the treedef, masked nodes kept as leaves."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
    )
    return [(path_str(kp), leaf) for kp, leaf in leaves], treedef


def sharding_problems(out: Any, ref: Any, what: str) -> list[str]:
    """Every array leaf of ``out`` must be sharded like the matching leaf of ``ref``."""
    out_flat, out_def = flatten_with_paths(out)
    ref_flat, ref_def = flatten_with_paths(ref)
    if out_def != ref_def:
        return [f"{what}: the tree structure changed: {out_def} vs {ref_def}"]
    bad = [
        f"{path or '<root>'}: {_spec(o)} instead of {_spec(r)}"
        for (path, o), (_, r) in zip(out_flat, ref_flat, strict=True)
        if isinstance(r, jax.Array) and not o.sharding.is_equivalent_to(r.sharding, r.ndim)
    ]
    return [f"{what}: shardings changed: " + "; ".join(bad)] if bad else []


def _spec(x: jax.Array) -> str:
    spec = getattr(x.sharding, "spec", None)
    return str(spec) if spec is not None else type(x.sharding).__name__


def value_problems(out: Any, ref: Any, what: str, rtol: float = 2e-5) -> list[str]:
    """``out`` (sharded) must agree with ``ref`` (computed on unsharded copies)."""
    problems = []
    for (path, o), (_, r) in zip(
        flatten_with_paths(out)[0], flatten_with_paths(ref)[0], strict=True
    ):
        o, r = np.asarray(o), np.asarray(r)
        if not np.allclose(o, r, rtol=rtol, atol=rtol / 10):
            err = float(np.max(np.abs(o.astype(np.float64) - r)))
            problems.append(f"{what}: {path} differs from the unsharded result by {err:.3g}")
    return problems


def count_arrays(tree: Any) -> int:
    return sum(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(tree))


class ProblemsFoundError(AssertionError):
    """A check found problems."""


class KnownLimitationError(Exception):
    """A known, documented limitation: reported on a NOTE line, not a failure."""


def finish(problems: list[str], detail: str) -> str:
    if problems:
        raise ProblemsFoundError(" | ".join(problems))
    return detail


# ---------------------------------------------------------------------------------------------
# Meshes, parameters and placement.


def finish_gathers_known(problems: list[str], detail: str, what: str) -> str:
    """For kernels sharded along their output axis, whose Gram matrix ``X^T X`` pairs every
    column block with every other: any problem but a parameter-sized gather fails the check;
    the gathers end it on a NOTE (a known limitation)."""
    finish([p for p in problems if "parameter-sized gathers" not in p], "")
    if problems:
        raise KnownLimitationError(
            f"values, shardings and donation are right, but {what} of a kernel sharded along "
            f"its output axis gathers it: {' | '.join(problems)}"
        )
    return detail


class Setup(NamedTuple):
    name: str
    mesh: Mesh
    params: dict[str, Any]  # Sharded.
    host: dict[str, Any]  # The same values as NumPy arrays.
    batch: tuple[jax.Array, jax.Array]


# (name, mesh shape, axis names): each is built in the Auto and the Explicit axis mode (the
# default of ``jax.sharding.Mesh`` and of ``jax.make_mesh`` respectively).
MESHES = (("model8", (8,), ("model",)), ("data2xmodel4", (2, 4), ("data", "model")))
MODES = (("auto", AxisType.Auto), ("explicit", AxisType.Explicit))
MESH_NAMES = tuple(f"{name}/{mode}" for mode, _ in MODES for name, _, _ in MESHES)


def meshes() -> Iterator[tuple[str, Mesh]]:
    devices = np.array(jax.devices()[:N_DEVICES])
    for mode, axis_type in MODES:
        for name, shape, axis_names in MESHES:
            mesh = Mesh(devices.reshape(shape), axis_names, axis_types=(axis_type,) * len(shape))
            yield f"{name}/{mode}", mesh


def param_specs(mesh: Mesh) -> dict[str, dict[str, tuple[tuple[int, ...], P]]]:
    """Shapes and partition specs. Every kernel has at least 16384 elements, every vector,
    activation and norm fewer, so a parameter-sized gather cannot be mistaken for another."""
    two_d = "data" in mesh.axis_names
    return {
        "dense_col": {  # Column-parallel: the output axis is sharded.
            "kernel": ((64, 256), P(None, "model")),
            "bias": ((256,), P("model")),
        },
        "dense_row": {  # Row-parallel: the input axis, which norms run over, is sharded.
            "kernel": ((256, 64), P("model", None)),
            "bias": ((64,), P()),
        },
        "conv_in": {  # Conv2D kernel (rows, cols, in, out) with sharded input channels.
            "kernel": ((3, 3, 32, 64), P(None, None, "model", None)),
            "bias": ((64,), P("model")),
        },
        "conv_out": {"kernel": ((3, 3, 32, 64), P(None, None, None, "model"))},
        "conv_even": {"kernel": ((4, 4, 16, 64), P(None, None, "model", None))},
        "square": {"kernel": ((128, 128), P("data", "model") if two_d else P(None, "model"))},
    }


def make_setup(name: str, mesh: Mesh) -> Setup:
    rng = np.random.default_rng(0)
    specs = param_specs(mesh)
    host = {
        layer: {
            leaf: (0.3 * rng.standard_normal(shape)).astype(np.float32)
            for leaf, (shape, _) in leaves.items()
        }
        for layer, leaves in specs.items()
    }
    params = {
        layer: {
            leaf: jax.device_put(host[layer][leaf], NamedSharding(mesh, spec))
            for leaf, (_, spec) in leaves.items()
        }
        for layer, leaves in specs.items()
    }
    batch_sharding = NamedSharding(mesh, P("data", None) if "data" in mesh.axis_names else P())
    x = rng.standard_normal((32, 64)).astype(np.float32)
    y = rng.standard_normal((32, 64)).astype(np.float32)
    batch = (jax.device_put(x, batch_sharding), jax.device_put(y, batch_sharding))
    return Setup(name, mesh, params, host, batch)


def to_host(tree: Any) -> Any:
    return jax.tree_util.tree_map(np.asarray, tree)


def on_mesh(tree: Any, mesh: Mesh) -> Any:
    """Replicates over the mesh the leaves that live on one device (optimizer counters)."""

    def place(x: Any) -> Any:
        if isinstance(x, jax.Array) and not isinstance(x.sharding, NamedSharding):
            return jax.device_put(x, NamedSharding(mesh, P()))
        return x

    return jax.tree_util.tree_map(place, tree)


def fresh_copy(tree: Any) -> Any:
    """A copy with new buffers and the same shardings (donation consumes its inputs)."""
    return jax.tree_util.tree_map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def not_donated(tree: Any) -> list[str]:
    return [
        path
        for path, x in flatten_with_paths(tree)[0]
        if isinstance(x, jax.Array) and not x.is_deleted()
    ]


# ---------------------------------------------------------------------------------------------
# Rules and the model.


def constraint_rules() -> dict[str, Any]:
    """One constraint per parameter; norms run both along and across sharded axes."""
    return {
        "dense_col/kernel": MaxNorm(2.0, axis=0),  # Along an unsharded axis.
        "dense_col/bias": NonNeg(),  # Sharded bias.
        "dense_row/kernel": MinMaxNorm(0.5, 3.0, rate=0.5, axis=0),  # Across 'model'.
        "dense_row/bias": Clip(-0.1, 0.1),  # Replicated bias.
        "conv_in/kernel": MaxNorm(1.0, axis=[0, 1, 2]),  # Across the sharded input channels.
        "conv_in/bias": NonNeg(),
        "conv_out/kernel": RadialConstraint(),
        "conv_even/kernel": RadialConstraint(mode="tf_keras"),
        "square/kernel": UnitNorm(axis=1),  # Across 'model' (and along 'data' on 2-D).
    }


def spectral_rules() -> dict[str, Any]:
    """SpectralNorm on every kernel whose certificate's Gram matrix contracts its sharded axes
    (the smaller Gram matrix: X^T X of a tall view, X X^T of a wide one), so that it is an
    all-reduce of partial Gram matrices."""
    return {
        "dense_col/kernel": SpectralNorm(1.0),  # Wide: X X^T contracts the sharded output.
        "dense_row/kernel": SpectralNorm(1.0, n_power_iterations=2),
        "conv_in/kernel": SpectralNorm(2.0),
        "conv_even/kernel": SpectralNorm(2.0),
    }


def spectral_output_sharded_rules() -> dict[str, Any]:
    """SpectralNorm on tall kernels sharded along their output axis: X^T X pairs every column
    block with every other."""
    return {"conv_out/kernel": SpectralNorm(2.0), "square/kernel": SpectralNorm(1.0)}


def regularizer_rules() -> dict[str, Any]:
    """A penalty on every parameter (the gradient of an unused parameter is a zero constant
    that XLA may place anywhere); OrthogonalRegularizer is checked on its own."""
    return {
        "dense_col/kernel": L2(1e-3),
        "dense_col/bias": L1(1e-3),
        "dense_row/kernel": GroupLasso(1e-2, axis=0),  # Group norms across 'model'.
        "dense_row/bias": L2(1e-3),
        "conv_in/kernel": L1L2(l1=1e-3, l2=1e-3),
        "conv_in/bias": L1(1e-3),
        "conv_out/kernel": GroupLasso(1e-2, axis=[0, 1, 2]),  # Across the sharded filters.
        "conv_even/kernel": L2(1e-3),
        "square/kernel": L2(1e-3),
    }


def loss_fn(params: dict[str, Any], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """A Megatron-style MLP on the dense pair, plus a quadratic on the other kernels."""
    x, y = batch
    h = jnp.tanh(x @ params["dense_col"]["kernel"] + params["dense_col"]["bias"][None])
    # The contraction runs over a sharded axis: an Explicit mesh needs the output sharding.
    explicit = AxisType.Explicit in jax.sharding.get_abstract_mesh().axis_types
    out_sharding = jax.typeof(x).sharding if explicit else None
    out = jnp.matmul(h, params["dense_row"]["kernel"], out_sharding=out_sharding)
    out = out + params["dense_row"]["bias"][None]
    loss = jnp.mean(jnp.square(out - y))
    for layer in ("conv_in", "conv_out", "conv_even", "square"):
        loss = loss + jnp.mean(jnp.square(params[layer]["kernel"] - 1.0))
    return loss + jnp.mean(params["conv_in"]["bias"])


def adam(learning_rate: float) -> optax.GradientTransformation:
    """`optax.adam`, run with standard dtype promotion.

    Its bias correction computes ``1 - b1 ** count`` (a Python float to the power of an int32),
    which strict promotion rejects; jaxcons itself runs under strict promotion here.
    """
    tx = optax.adam(learning_rate)

    def update_fn(updates: Any, state: Any, params: Any = None) -> Any:
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update_fn)


# ---------------------------------------------------------------------------------------------
# The checks: each returns a one-line detail, or raises ProblemsFoundError with every problem
# found, or KnownLimitationError for a documented limitation.


def check_detector(s: Setup) -> str:
    """The gather detector must see a real gather: a kernel replicated on purpose."""
    kernel = s.params["dense_row"]["kernel"]
    with jax.set_mesh(s.mesh):
        found = compiled_collectives(
            lambda w: w * 2.0, kernel, out_shardings=NamedSharding(s.mesh, P())
        )
    big = parameter_sized_moves(found, s.params)
    problems = [] if big else [f"replicating a kernel went unseen: {describe(found)}"]
    return finish(problems, f"a replicated kernel shows as {describe(big)}")


def check_apply_constraints(s: Setup) -> str:
    rules = constraint_rules()

    def fn(params: Any) -> Any:
        return apply_constraints(params, rules)

    with jax.set_mesh(s.mesh):
        out = jax.jit(fn)(s.params)
        found = compiled_collectives(fn, s.params)
    problems = sharding_problems(out, s.params, "apply_constraints")
    problems += value_problems(out, jax.jit(fn)(s.host), "apply_constraints")
    problems += moves_problems(found)
    return finish(problems, f"{count_arrays(out)} leaves keep their sharding; {describe(found)}")


def check_l1_simplex(s: Setup) -> str:
    """L1Ball and Simplex find their threshold without a sort: along a sharded axis they
    all-reduce a few numbers per slice per iteration and never move the parameter."""
    rules = {
        "dense_col/kernel": Simplex(axis=0),  # Along an unsharded axis.
        "dense_row/kernel": L1Ball(5.0, axis=0),  # Across 'model'.
        "conv_in/kernel": L1Ball(2.0, axis=[0, 1, 2]),  # Across the sharded input channels.
        "square/kernel": Simplex(axis=1),  # Across 'model' (and along 'data' on 2-D).
    }

    def fn(params: Any) -> Any:
        return apply_constraints(params, rules, strict=False)

    with jax.set_mesh(s.mesh):
        out = jax.jit(fn)(s.params)
        found = compiled_collectives(fn, s.params)
    problems = sharding_problems(out, s.params, "L1Ball/Simplex apply_constraints")
    problems += value_problems(out, jax.jit(fn)(s.host), "L1Ball/Simplex apply_constraints")
    problems += moves_problems(found)
    return finish(problems, f"{count_arrays(out)} leaves keep their sharding; {describe(found)}")


def check_spectral_apply_constraints(s: Setup) -> str:
    """The exact path (an SVD): shardings must be kept; a gather is a documented limitation."""
    rules = spectral_rules()

    def fn(params: Any) -> Any:
        return apply_constraints(params, rules)

    with jax.set_mesh(s.mesh):
        out = jax.jit(fn)(s.params)
        found = compiled_collectives(fn, s.params)
    problems = sharding_problems(out, s.params, "SpectralNorm apply_constraints")
    problems += value_problems(out, jax.jit(fn)(s.host), "SpectralNorm apply_constraints")
    finish(problems, "")
    big = parameter_sized_moves(found, s.params)
    if big:
        raise KnownLimitationError(
            f"{count_arrays(out)} leaves keep their sharding, but the exact SVD gathers "
            f"every kernel: {describe(big)}"
        )
    return f"{count_arrays(out)} leaves keep their sharding; {describe(found)}"


def check_penalty(s: Setup) -> str:
    rules = regularizer_rules()
    value_and_grad = jax.value_and_grad(lambda p: penalty(p, rules))
    with jax.set_mesh(s.mesh):
        value, grads = jax.jit(value_and_grad)(s.params)
        found = compiled_collectives(value_and_grad, s.params)
    ref_value, ref_grads = jax.jit(value_and_grad)(s.host)
    problems = sharding_problems(grads, s.params, "grad of penalty")
    problems += value_problems(value, ref_value, "penalty")
    problems += value_problems(grads, ref_grads, "grad of penalty")
    problems += moves_problems(found)
    return finish(
        problems,
        f"value and {count_arrays(grads)} gradient leaves keep their sharding; {describe(found)}",
    )


def check_penalty_orthogonal(s: Setup) -> str:
    """OrthogonalRegularizer needs every pair of rows: a gather there is a limitation."""
    rules = {"kernel": OrthogonalRegularizer(1e-2, mode="columns")}
    value_and_grad = jax.value_and_grad(lambda p: penalty(p, rules))
    kernel = {"kernel": s.params["dense_col"]["kernel"]}
    with jax.set_mesh(s.mesh):
        value, grads = jax.jit(value_and_grad)(kernel)
        found = compiled_collectives(value_and_grad, kernel)
    ref_value, ref_grads = jax.jit(value_and_grad)(to_host(kernel))
    problems = sharding_problems(grads, kernel, "grad of penalty")
    problems += value_problems(value, ref_value, "penalty")
    problems += value_problems(grads, ref_grads, "grad of penalty")
    finish(problems, "")
    big = parameter_sized_moves(found, s.params)
    if big:
        raise KnownLimitationError(
            "gradients keep their sharding, but the Gram matrix of a kernel sharded along "
            f"the compared axis gathers it: {describe(big)}"
        )
    return f"gradients keep their sharding; {describe(found)}"


def _train_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    def step(params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def _run_train_steps(
    s: Setup, tx: optax.GradientTransformation, what: str
) -> tuple[list[str], Any, str]:
    """Two jitted steps with donated params and state: shardings, donation, values, gathers."""
    step = _train_step(tx)
    with jax.set_mesh(s.mesh):
        state0 = on_mesh(tx.init(s.params), s.mesh)
        found = compiled_collectives(step, s.params, state0, s.batch)
        jitted = jax.jit(step, donate_argnums=(0, 1))
        params_in, state_in = fresh_copy(s.params), fresh_copy(state0)
        params, state, _ = jitted(params_in, state_in, s.batch)
        problems = sharding_problems(params, s.params, f"{what} params, step 1")
        problems += sharding_problems(state, state0, f"{what} optimizer state, step 1")
        missed = not_donated((params_in, state_in))
        if missed:
            problems.append(f"{what}: donated buffers not reused: {', '.join(missed)}")
        params, state, _ = jitted(params, state, s.batch)
        problems += sharding_problems(params, s.params, f"{what} params, step 2")
        problems += sharding_problems(state, state0, f"{what} optimizer state, step 2")
    ref_step = jax.jit(step)
    ref_params, ref_state, _ = ref_step(s.host, to_host(state0), to_host(s.batch))
    ref_params, _, _ = ref_step(ref_params, ref_state, to_host(s.batch))
    problems += value_problems(params, ref_params, what, rtol=1e-4)
    problems += gather_problems(found, s.params)
    n = count_arrays((params, state))
    return (
        problems,
        params,
        f"{n} leaves keep their sharding over 2 donated steps; " + describe(found),
    )


def check_constrain_train_step(s: Setup) -> str:
    tx = optax.chain(adam(1e-2), constrain(constraint_rules()))
    problems, params, detail = _run_train_steps(s, tx, "constrain")
    if float(jnp.min(params["dense_col"]["bias"])) < 0:
        problems.append("NonNeg violated after the step")
    if float(jnp.max(jnp.abs(params["dense_row"]["bias"]))) > np.float32(0.1):
        problems.append("Clip violated after the step")
    if float(jnp.max(jnp.linalg.norm(params["dense_col"]["kernel"], axis=0))) > 2.0 * (1 + 1e-6):
        problems.append("MaxNorm violated after the step")
    return finish(problems, detail)


def check_spectral_constrain(s: Setup) -> str:
    """SpectralNorm's power iteration (its vectors in the optimizer state) and certificate
    (an all-reduced Gram matrix) never gather; its certificate's rare ladder is in a cond."""
    tx = optax.chain(adam(1e-2), constrain(spectral_rules()))
    problems, params, detail = _run_train_steps(s, tx, "SpectralNorm constrain")
    problems += _spectral_bound_problems(params, spectral_rules())
    return finish(problems, detail)


def _spectral_bound_problems(params: Any, rules: dict[str, Any]) -> list[str]:
    """The certified bound holds on every governed kernel (exact float64 SVD on the host)."""
    problems = []
    for path, c in rules.items():
        layer, leaf = path.split("/")
        w = np.asarray(params[layer][leaf], np.float64)
        sigma = float(np.linalg.norm(w.reshape(-1, w.shape[-1]), 2))
        if sigma > c.max_value:
            problems.append(f"{path}: sigma {sigma!r} > {c.max_value} after the steps")
    return problems


def check_spectral_output_sharded(s: Setup) -> str:
    """Tall kernels sharded along their output axis: the certificate's X^T X needs every
    column block on every device, so the kernel is gathered (values still right)."""
    rules = spectral_output_sharded_rules()
    tx = optax.chain(adam(1e-2), constrain(rules))
    problems, params, detail = _run_train_steps(s, tx, "SpectralNorm constrain (output sharded)")
    problems += _spectral_bound_problems(params, rules)
    return finish_gathers_known(problems, detail, "the certificate's Gram matrix")


def _orthogonal_setup(s: Setup, rules: dict[str, Any]) -> Setup:
    """``s`` with the governed kernels projected (exactly, on the host) onto the set, placed
    with their original shardings: Orthogonal's fast steps need an orthogonal start."""
    host = to_host(apply_constraints(s.host, rules))
    params = jax.tree_util.tree_map(lambda h, p: jax.device_put(h, p.sharding), host, s.params)
    return s._replace(params=params, host=host)


def _orthogonal_train(s: Setup, rules: dict[str, Any], what: str) -> tuple[list[str], str]:
    """Two donated steps of tangent + Adam + Orthogonal's Newton-Schulz steps."""
    s = _orthogonal_setup(s, rules)
    tx = chain(adam(1e-3), constraints=rules, tangent=True)
    problems, params, detail = _run_train_steps(s, tx, what)
    for path in rules:
        layer, leaf = path.split("/")
        w = np.asarray(params[layer][leaf], np.float64)
        m = w.reshape(-1, w.shape[-1])
        gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        deviation = float(np.max(np.abs(gram - np.eye(len(gram)))))
        if deviation > 1e-4:
            problems.append(f"{path}: max |W^T W - I| = {deviation:.2e} after 2 steps")
    return problems, detail


def check_orthogonal_constrain(s: Setup) -> str:
    """Orthogonal (with jaxcons.tangent) on kernels sharded along the axes its Gram matrix
    contracts: the row-parallel and conv kernels (X^T X) and the column-parallel one, which is
    wider than tall (X X^T). Only all-reduces of the small Gram matrices, no gather."""
    rules = {
        "dense_col/kernel": Orthogonal(),
        "dense_row/kernel": Orthogonal(),
        "conv_in/kernel": Orthogonal(),
    }
    problems, detail = _orthogonal_train(s, rules, "Orthogonal constrain")
    return finish(problems, detail)


def check_orthogonal_output_sharded(s: Setup) -> str:
    """A square kernel sharded along its output axis: X^T X pairs every column block with
    every other, so the kernel (on the 1-D mesh) or its rows (on the 2-D mesh) must travel."""
    rules = {"square/kernel": Orthogonal()}
    problems, detail = _orthogonal_train(s, rules, "Orthogonal constrain (output sharded)")
    return finish_gathers_known(problems, detail, "the Gram matrix")


def check_regularize_proximal(s: Setup) -> str:
    reg = regularizer_rules()
    prox = {"dense_col/kernel": L1(1e-3), "dense_row/kernel": GroupLasso(1e-2, axis=0)}
    tx = optax.chain(regularize(reg), adam(1e-2), proximal(prox, 1e-2))
    problems, _, detail = _run_train_steps(s, tx, "regularize + proximal")
    return finish(problems, detail)


def check_flax_train_state(s: Setup) -> str:
    """jaxcons.flax.TrainState.apply_gradients (constraints, SpectralNorm state, penalty)."""
    constraints = {**constraint_rules(), "dense_row/kernel": SpectralNorm(1.0)}

    def create(params: Any) -> TrainState:
        return TrainState.create(
            apply_fn=None,
            params=params,
            tx=adam(1e-2),
            constraints=constraints,
            regularizers=regularizer_rules(),
        )

    def step(state: TrainState, batch: Any) -> tuple[TrainState, jax.Array]:
        def loss(params: Any) -> jax.Array:
            return loss_fn(params, batch) + state.penalty(params)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads=grads), value

    with jax.set_mesh(s.mesh):
        state0 = on_mesh(create(s.params), s.mesh)
        found = compiled_collectives(step, state0, s.batch)
        jitted = jax.jit(step, donate_argnums=0)
        state_in = fresh_copy(state0)
        state, _ = jitted(state_in, s.batch)
        problems = sharding_problems(state, state0, "TrainState, step 1")
        missed = not_donated(state_in)
        if missed:
            problems.append(f"donated buffers not reused: {', '.join(missed)}")
        state, _ = jitted(state, s.batch)
        problems += sharding_problems(state, state0, "TrainState, step 2")
    ref_step = jax.jit(step)
    ref_state, _ = ref_step(create(s.host), to_host(s.batch))
    ref_state, _ = ref_step(ref_state, to_host(s.batch))
    problems += value_problems(state.params, ref_state.params, "TrainState", rtol=1e-4)
    problems += gather_problems(found, s.params)
    return finish(
        problems,
        f"{count_arrays(state)} leaves keep their sharding over 2 donated steps; "
        + describe(found),
    )


# Stacked matrices: 8 per parameter, their batch axis sharded over every device of the mesh.
N_MATRICES = 8


def stacked_rules() -> dict[str, Any]:
    return {
        "experts": Orthogonal(batch_axes=0),
        "heads": SpectralNorm(1.0, batch_axes=1),
        "qkv": Orthogonal(view=(N_MATRICES, 8, 32), batch_axes=0),
        "clipped": SingularValueClip(0.0, 1.0, batch_axes=0),
        "nuclear": NuclearBall(4.0, batch_axes=0),
    }


def _stacked_params(mesh: Mesh) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters (host and sharded) holding 8 matrices each, sharded along the batch axis."""
    every = P(tuple(mesh.axis_names))
    shapes = {
        "experts": ((N_MATRICES, 64, 32), P(*every)),
        "heads": ((64, N_MATRICES, 16), P(None, *every)),
        "qkv": ((N_MATRICES * 8, 32), P(*every)),
        "clipped": ((N_MATRICES, 32, 24), P(*every)),
        "nuclear": ((N_MATRICES, 16, 16), P(*every)),
    }
    key = jax.random.key(7)
    host = {}
    for name, (shape, _) in shapes.items():
        key, sub = jax.random.split(key)
        host[name] = np.asarray(jax.random.normal(sub, shape, jnp.float32) / math.sqrt(shape[-1]))
    host = to_host(apply_constraints(host, stacked_rules()))
    params = {
        name: jax.device_put(host[name], NamedSharding(mesh, spec))
        for name, (_, spec) in shapes.items()
    }
    return host, params


def check_stacked_constrain(s: Setup) -> str:
    """Per-expert and per-head constraints (batch_axes, view) on parameters sharded along the
    batch axis: the training step moves no matrix, only scalars or one statistic per matrix
    (a flag deciding a rare fallback, the loss), in every branch; values match an unsharded
    run and every matrix is in its set. Before jax 0.10, `jax.vmap` of the certificate's
    `jax.lax.fori_loop` on an Explicit mesh fails to trace (a known limitation, BUILD.md)."""
    try:
        return _check_stacked_constrain(s)
    except ValueError as e:
        old = tuple(int(p) for p in jax.__version__.split(".")[:2]) < (0, 10)
        if old and "is not found in mesh" in str(e) and "explicit" in s.name:
            raise KnownLimitationError(f"jax {jax.__version__}, Explicit mesh: {e}") from e
        raise


def _check_stacked_constrain(s: Setup) -> str:
    host, params = _stacked_params(s.mesh)
    rules = stacked_rules()
    tx = chain(adam(1e-2), constraints=rules, tangent={"experts": rules["experts"]})
    target = {
        k: jnp.asarray(np.cos(np.arange(v.size)).reshape(v.shape), v.dtype) for k, v in host.items()
    }

    def step(params: Any, opt_state: Any) -> tuple[Any, Any]:
        grads = jax.grad(lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    with jax.set_mesh(s.mesh):
        state0 = tx.init(params)
        found = compiled_collectives(step, params, state0)
        out, state = jax.jit(step)(params, state0)
        out, state = jax.jit(step)(out, state)
        problems = sharding_problems(out, params, "stacked params after 2 steps")
        bounds = spectral_norm_bounds(out, {"heads": rules["heads"]})
    ref, ref_state = jax.jit(step)(host, to_host(state0))
    ref, _ = jax.jit(step)(ref, ref_state)
    problems += value_problems(out, ref, "stacked constrain", rtol=1e-4)
    large = [c for c in found if c.elements > N_MATRICES]
    if large:
        problems.append(
            f"collectives larger than one value per matrix ({N_MATRICES}): {describe(large)}"
        )
    w = np.asarray(out["experts"], np.float64)
    deviation = np.max(np.abs(np.swapaxes(w, 1, 2) @ w - np.eye(w.shape[-1])))
    if deviation > 1e-4:
        problems.append(f"experts: max |W^T W - I| = {deviation:.2e}")
    heads = np.moveaxis(np.asarray(out["heads"], np.float64), 1, 0)
    sigma = np.linalg.norm(heads, ord=2, axis=(1, 2))
    if sigma.max() > 1.0 or np.any(sigma > np.asarray(bounds["heads"])):
        problems.append(f"heads: sigma {sigma.max()!r} above 1 or above its certified bound")
    return finish(problems, f"{N_MATRICES} matrices per parameter; " + describe(found))


CHECKS: dict[str, Callable[[Setup], str]] = {
    "detector": check_detector,
    "apply_constraints": check_apply_constraints,
    "l1_simplex_apply_constraints": check_l1_simplex,
    "constrain_train_step": check_constrain_train_step,
    "penalty": check_penalty,
    "penalty_orthogonal": check_penalty_orthogonal,
    "regularize_proximal_train_step": check_regularize_proximal,
    "spectral_constrain_train_step": check_spectral_constrain,
    "spectral_output_sharded_train_step": check_spectral_output_sharded,
    "spectral_apply_constraints": check_spectral_apply_constraints,
    "flax_train_state": check_flax_train_state,
    "orthogonal_constrain_train_step": check_orthogonal_constrain,
    "orthogonal_output_sharded_train_step": check_orthogonal_output_sharded,
    "stacked_constrain_train_step": check_stacked_constrain,
}

# The checks that may end on a NOTE: the exact SVD and the Gram matrix of every pair of
# columns (OrthogonalRegularizer's, and the X^T X of Orthogonal and of SpectralNorm's
# certificate for a kernel sharded along its output axis) need the whole kernel on every device.
MAY_NOTE = (
    "orthogonal_output_sharded_train_step",
    "stacked_constrain_train_step",
    "penalty_orthogonal",
    "spectral_apply_constraints",
    "spectral_output_sharded_train_step",
)


def main(argv: list[str]) -> int:
    """Runs the checks named in ``argv`` (all by default) on every mesh."""
    warnings.simplefilter("error")  # As in the pytest configuration.
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    if jax.device_count() < N_DEVICES:
        print(
            f"FAIL setup: {jax.device_count()} device(s); set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={N_DEVICES} before jax starts",
            flush=True,
        )
        return 1
    unknown = sorted(set(argv) - set(CHECKS))
    if unknown:
        print(f"FAIL setup: unknown checks {unknown}; known: {sorted(CHECKS)}", flush=True)
        return 1
    selected = {name: CHECKS[name] for name in argv} or CHECKS
    passed = failed = noted = 0
    for mesh_name, mesh in meshes():
        setup = make_setup(mesh_name, mesh)
        for name, check in selected.items():
            label = f"[{mesh_name}] {name}"
            try:
                detail = check(setup)
            except KnownLimitationError as e:
                noted += 1
                print(f"NOTE {label}: {e}", flush=True)
            except Exception as e:
                failed += 1
                message = " ".join(str(e).split())
                print(f"FAIL {label}: {type(e).__name__}: {message}", flush=True)
                if not isinstance(e, ProblemsFoundError):
                    traceback.print_exc(file=sys.stderr)
            else:
                passed += 1
                print(f"PASS {label}: {detail}", flush=True)
    print(f"SUMMARY passed={passed} failed={failed} noted={noted}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
