"""jaxcons demo: a flax MLP on scikit-learn's digits, trained under constraints and regularizers.

The same model (a linen MLP 64 -> 128 -> 64 -> 10, ReLU), data split, initial weights and batch
order are trained three ways:

1. ``adam``: plain ``optax.adam``, for reference;
2. ``constrained``: ``jaxcons.chain(optax.adam(lr), constraints=rules)`` with
   ``MaxNorm`` on every kernel (each column, i.e. one unit's incoming weights, has norm
   <= the bound) and ``NonNeg`` on every bias;
3. ``regularized``: the same constraints, plus a penalty in the loss (L2 on kernels, L1 on biases,
   ``jaxcons.penalty``) and a proximal L1 step on the first layer's kernel
   (``jaxcons.proximal``), which sets weights exactly to zero: the optimizer knows about the
   sparsity, instead of a loss term that only pushes weights towards zero.

It prints per-epoch loss, accuracy and the largest ``jaxcons.violations`` against the constraint
set (every run, the unconstrained one too), then one table checking every constrained parameter
against its bound, and one reporting the penalties per parameter (``jaxcons.penalties``) and
the fraction of exact zeros. It writes ``kernel_norms.png`` (kernel column norms and violations
over training) and ``report.txt`` (the printed report, without the timing) to ``--out``.

Norm bounds reached through ``jaxcons.constrain`` may be exceeded by a few ulps (the update is
``P(p + u) - p``, and ``p + (P(p + u) - p)`` rounds); elementwise bounds such as ``NonNeg`` hold
exactly. The table counts the ulps.

Usage::

    python examples/digits_demo.py [--epochs 30] [--out demo_out] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxcons

LEARNING_RATE = 2e-3
BATCH_SIZE = 32
HIDDEN = (128, 64)
MAX_NORM = 1.5  # Binds: without it, kernel columns grow past 2 within a few epochs.
KERNEL_L2 = 1e-4
BIAS_L1 = 1e-4
PROXIMAL_L1 = 0.2  # Per-step threshold LEARNING_RATE * PROXIMAL_L1 on the first kernel.
NORM_ULP_TOLERANCE = 4  # "A few ulps" over a norm bound is within jaxcons' documented contract.


@dataclass(frozen=True)
class Setup:
    """One way of training: optimizer rules, and regularizers in the loss and the optimizer."""

    name: str
    description: str
    constraints: dict[str, Any] | None = None
    penalty_rules: dict[str, Any] | None = None
    proximal_rules: dict[str, Any] | None = None


def make_setups() -> list[Setup]:
    """The three trainings compared (the same constraint rules for the last two)."""
    constraints = {"**/kernel": jaxcons.MaxNorm(MAX_NORM), "**/bias": jaxcons.NonNeg()}
    return [
        Setup("adam", "optax.adam, no constraints"),
        Setup(
            "constrained",
            "jaxcons.chain(adam, constraints=MaxNorm kernels, NonNeg biases)",
            constraints=constraints,
        ),
        Setup(
            "regularized",
            "loss + penalty(L2 kernels, L1 biases); "
            "jaxcons.chain(adam, proximal=L1 Dense_0/kernel, constraints=...)",
            constraints=constraints,
            penalty_rules={"**/kernel": jaxcons.L2(KERNEL_L2), "**/bias": jaxcons.L1(BIAS_L1)},
            proximal_rules={"Dense_0/kernel": jaxcons.L1(PROXIMAL_L1)},
        ),
    ]


class MLP(nn.Module):
    """A multilayer perceptron: ReLU hidden layers, linear output (logits)."""

    hidden: Sequence[int] = HIDDEN
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.classes)(x)


@dataclass(frozen=True)
class Data:
    """The digits split: 8x8 images flattened to 64 features in [0, 1], labels 0-9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(seed: int) -> Data:
    """Loads scikit-learn's bundled digits (no download) and splits 75/25, stratified."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return Data(x_train, y_train, x_test, y_test)


@dataclass
class History:
    """Per-epoch records of one training (epoch 0 is the initial state)."""

    setup: Setup
    params: Any = None
    loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    col_norm_max: dict[str, list[float]] = field(default_factory=dict)
    col_norm_median: dict[str, list[float]] = field(default_factory=dict)
    zeros: list[float] = field(default_factory=list)
    violation: list[float] = field(default_factory=list)


def make_optimizer(setup: Setup) -> optax.GradientTransformation:
    """Adam, then the proximal step, then the projection: `jaxcons.chain` puts each in place."""
    adam = optax.adam(LEARNING_RATE)
    if setup.constraints is None and setup.proximal_rules is None:
        return adam
    return jaxcons.chain(
        adam,
        constraints=setup.constraints,
        proximal=setup.proximal_rules,
        learning_rate=None if setup.proximal_rules is None else LEARNING_RATE,
    )


def make_steps(
    model: nn.Module, tx: optax.GradientTransformation, penalty_rules: dict[str, Any] | None
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Returns the jitted training step and the jitted evaluation (loss, penalty, accuracy)."""

    def losses(params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Any]:
        logits = model.apply({"params": params}, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        penalty = (
            jnp.zeros((), loss.dtype)
            if penalty_rules is None
            else jaxcons.penalty(params, penalty_rules)
        )
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        return loss + penalty, (loss, penalty, accuracy)

    @jax.jit
    def train_step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        grads, _ = jax.grad(losses, has_aux=True)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def evaluate(params: Any, x: jax.Array, y: jax.Array) -> Any:
        return losses(params, x, y)[1]

    return train_step, evaluate


def kernel_column_norms(params: Any) -> dict[str, np.ndarray]:
    """The L2 norm of every kernel column (axis 0: one output unit's weights), in float64."""
    return {
        path: np.sqrt(np.sum(np.square(np.asarray(leaf, np.float64)), axis=0))
        for path, leaf in zip(jaxcons.paths(params), jax.tree_util.tree_leaves(params), strict=True)
        if path.endswith("kernel")
    }


def leaf_at(params: Any, path: str) -> np.ndarray:
    """The parameter at ``path`` (a path as `jaxcons.paths` writes it)."""
    leaves = jax.tree_util.tree_leaves(params)
    return np.asarray(dict(zip(jaxcons.paths(params), leaves, strict=True))[path])


def zero_fraction(params: Any) -> float:
    """The fraction of parameters that are exactly zero."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]
    return sum(int(np.sum(leaf == 0)) for leaf in leaves) / sum(leaf.size for leaf in leaves)


EPOCH_HEADER = (
    f"{'epoch':>5}  {'loss':>7}  {'penalty':>9}  {'train acc':>9}  {'test acc':>8}  "
    f"{'max col norm':>12}  {'violation':>9}  {'exact zeros':>11}"
)

# What every run is measured against, the unconstrained one included (jaxcons.violations).
FEASIBLE_SET = {"**/kernel": jaxcons.MaxNorm(MAX_NORM), "**/bias": jaxcons.NonNeg()}
max_violation = jax.jit(
    lambda params: jnp.max(jnp.stack(list(jaxcons.violations(params, FEASIBLE_SET).values())))
)


def record(history: History, params: Any, train: Any, test: Any) -> str:
    """Appends one epoch's figures to ``history`` and returns its table line.

    ``train`` and ``test`` are ``(loss, penalty, accuracy)`` on the whole training / test set.
    """
    loss, penalty, train_acc = (float(v) for v in train)
    test_acc = float(test[2])
    norms = kernel_column_norms(params)
    for path, n in norms.items():
        history.col_norm_max.setdefault(path, []).append(float(n.max()))
        history.col_norm_median.setdefault(path, []).append(float(np.median(n)))
    history.loss.append(loss)
    history.penalty.append(penalty)
    history.train_acc.append(train_acc)
    history.test_acc.append(test_acc)
    history.zeros.append(zero_fraction(params))
    history.violation.append(float(max_violation(params)))
    penalty_text = "-" if history.setup.penalty_rules is None else f"{penalty:.3e}"
    return (
        f"{len(history.loss) - 1:>5}  {loss:>7.4f}  {penalty_text:>9}  {train_acc:>9.2%}  "
        f"{test_acc:>8.2%}  {max(float(n.max()) for n in norms.values()):>12.7f}  "
        f"{history.violation[-1]:>9.2e}  {history.zeros[-1]:>11.2%}"
    )


def train(setup: Setup, data: Data, epochs: int, seed: int, log: Callable[[str], None]) -> History:
    """Trains the MLP under ``setup``, logging one line per epoch (epoch 0: initial weights)."""
    model = MLP()
    params = model.init(jax.random.key(seed), data.x_train[:1])["params"]
    if setup.constraints is not None:
        # Constraints act after each update; project the initial weights too.
        params = jaxcons.apply_constraints(params, setup.constraints)
    tx = make_optimizer(setup)
    opt_state = tx.init(params)
    train_step, evaluate = make_steps(model, tx, setup.penalty_rules)
    rng = np.random.default_rng(seed)  # The same batch order in every run.
    steps = len(data.y_train) // BATCH_SIZE

    history = History(setup)

    def epoch_line() -> str:
        train = evaluate(params, data.x_train, data.y_train)
        test = evaluate(params, data.x_test, data.y_test)
        return record(history, params, train, test)

    log(EPOCH_HEADER)
    log(epoch_line())
    for _ in range(epochs):
        order = rng.permutation(len(data.y_train))[: steps * BATCH_SIZE].reshape(steps, -1)
        for idx in order:
            params, opt_state = train_step(params, opt_state, data.x_train[idx], data.y_train[idx])
        log(epoch_line())
    history.params = params
    return history


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Formats rows as aligned text columns (``align``: one ``<`` or ``>`` per column)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = (
            cell.ljust(w) if a == "<" else cell.rjust(w)
            for cell, w, a in zip(row, widths, align, strict=True)
        )
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


@dataclass(frozen=True)
class Check:
    """One constrained parameter measured against its bound."""

    path: str
    constraint: Any
    measure: str
    bound: str
    values: dict[str, float]  # Run name -> measured value.
    status: str
    ok: bool


def check_constraint(constraint: Any, leaf: Any) -> tuple[str, str, float, float]:
    """Returns (measure, bound text, value, ulps past the bound) for a MaxNorm or NonNeg.

    Values are measured in float64; a NonNeg violation counts as infinitely many ulps.
    """
    w = np.asarray(leaf, np.float64)
    if isinstance(constraint, jaxcons.NonNeg):
        value = float(w.min())
        return "min entry", ">= 0", value, 0 if value >= 0 else math.inf
    if isinstance(constraint, jaxcons.MaxNorm):
        config = constraint.get_config()
        axis = config["axis"]
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis
        value = float(np.sqrt(np.sum(np.square(w), axis=axis)).max())
        bound = float(config["max_value"])
        ulp = float(np.spacing(np.asarray(bound, leaf.dtype)))
        ulps = max(0, int(np.ceil((value - bound) / ulp)))
        return "max column norm", f"<= {bound:g}", value, ulps
    raise TypeError(f"The demo has no check for {constraint!r}.")


def constraint_checks(histories: Sequence[History]) -> list[Check]:
    """Checks every constrained parameter of every constrained run."""
    constrained = [h for h in histories if h.setup.constraints is not None]
    rules = constrained[0].setup.constraints
    resolution = jaxcons.Rules(rules, kind="constraint").resolve(constrained[0].params)
    checks = []
    for i, path, constraint in resolution.active():
        values: dict[str, float] = {}
        worst = 0.0
        for h in histories:
            leaf = jax.tree_util.tree_leaves(h.params)[i]
            measure, bound, value, ulps = check_constraint(constraint, leaf)
            values[h.setup.name] = value
            if h.setup.constraints is not None:
                worst = max(worst, ulps)
        ok = worst <= NORM_ULP_TOLERANCE
        status = "OK" if worst == 0 else (f"OK (+{worst:.0f} ulp)" if ok else "VIOLATED")
        checks.append(Check(path, constraint, measure, bound, values, status, ok))
    return checks


def constraint_table(checks: Sequence[Check], runs: Sequence[str]) -> list[str]:
    """One row per constrained parameter: its measure in every run and the status."""
    header = ["parameter", "constraint", "measure", "bound", *runs, "status"]
    rows = [
        [c.path, repr(c.constraint), c.measure, c.bound]
        + [f"{c.values[r]:.7f}" for r in runs]
        + [c.status]
        for c in checks
    ]
    return format_table(header, rows, "<<<<" + ">" * len(runs) + "<")


def regularizer_table(histories: Sequence[History]) -> list[str]:
    """Penalties (``jaxcons.penalties``) of the regularized run and exact zeros of every run."""
    (reg,) = (h for h in histories if h.setup.penalty_rules is not None)
    penalty_rules, proximal_rules = reg.setup.penalty_rules, reg.setup.proximal_rules
    in_loss = jaxcons.penalties(reg.params, penalty_rules)
    proximal = jaxcons.penalties(reg.params, proximal_rules)
    rules = jaxcons.Rules(penalty_rules, kind="regularizer").resolve(reg.params)
    prox = jaxcons.Rules(proximal_rules, kind="regularizer").resolve(reg.params)
    runs = [h.setup.name for h in histories]
    header = ["parameter", "penalty in loss", "value", "proximal step", "its penalty"]
    header += [f"zeros ({r})" for r in runs]
    rows = []
    for i, path in enumerate(rules.paths):
        row = [
            path,
            "-" if rules.values[i] is None else repr(rules.values[i]),
            f"{float(in_loss[path]):.3e}" if path in in_loss else "-",
            "-" if prox.values[i] is None else repr(prox.values[i]),
            f"{float(proximal[path]):.3e}" if path in proximal else "-",
        ]
        for h in histories:
            leaf = np.asarray(jax.tree_util.tree_leaves(h.params)[i])
            row.append(f"{np.mean(leaf == 0):.2%}")
        rows.append(row)
    rows.append(
        [
            "total",
            "jaxcons.penalty",
            f"{float(jaxcons.penalty(reg.params, penalty_rules)):.3e}",
            "",
            f"{float(jaxcons.penalty(reg.params, proximal_rules)):.3e}",
        ]
        + [f"{h.zeros[-1]:.2%}" for h in histories]
    )
    return format_table(header, rows, "<<><>" + ">" * len(runs))


def plot_norms(histories: Sequence[History], path: Path) -> None:
    """Writes the kernel column norms per layer and epoch, and the proximal step's zeros.

    One panel per kernel: the largest and the median column norm of every run, with the
    MaxNorm bound; then the largest ``jaxcons.violations`` of every run against the constraint
    set (0 while feasible; symlog axis); a last panel shows, per input pixel, the share of the
    first layer's weights that the proximal L1 step set exactly to zero.
    """
    layers = list(histories[0].col_norm_max)
    fig = Figure(figsize=(4.0 * (len(layers) + 2), 4.2), layout="constrained")  # Agg, no GUI.
    axes = fig.subplots(1, len(layers) + 2, width_ratios=[1.0] * (len(layers) + 1) + [0.8])
    colors = ("tab:gray", "tab:blue", "tab:orange")
    for ax, layer in zip(axes, layers, strict=False):
        for color, h in zip(colors, histories, strict=True):
            epochs = np.arange(len(h.col_norm_max[layer]))
            ax.plot(epochs, h.col_norm_max[layer], color=color, label=f"{h.setup.name}: max")
            ax.plot(
                epochs,
                h.col_norm_median[layer],
                color=color,
                linestyle=":",
                label=f"{h.setup.name}: median",
            )
        ax.axhline(MAX_NORM, color="black", linestyle="--", linewidth=1, label="MaxNorm bound")
        ax.set_title(f"{layer}: column norms")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("L2 norm of a kernel column")
    ax = axes[len(layers)]
    for color, h in zip(colors, histories, strict=True):
        ax.plot(np.arange(len(h.violation)), h.violation, color=color, label=h.setup.name)
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_title("jaxcons.violations: max |w - P(w)|")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize="small")

    (reg,) = (h for h in histories if h.setup.proximal_rules is not None)
    (target,) = reg.setup.proximal_rules
    kernel = leaf_at(reg.params, target)
    image = axes[-1].imshow(np.mean(kernel == 0, axis=1).reshape(8, 8), vmin=0.0, vmax=1.0)
    axes[-1].set_title(f"{target}: exact zeros\nper input pixel ({reg.setup.name})")
    axes[-1].set_xticks([])
    axes[-1].set_yticks([])
    fig.colorbar(image, ax=axes[-1], shrink=0.8, label="share of the pixel's weights")
    fig.suptitle("jaxcons digits demo: kernel column norms during training")
    fig.savefig(path, dpi=100)


@dataclass(frozen=True)
class DemoResult:
    """What `main` produced: the trainings, the constraint checks and the files written."""

    histories: list[History]
    checks: list[Check]
    plot: Path
    report: Path


def run(epochs: int, out: Path, seed: int) -> DemoResult:
    """Runs the demo: trains every setup, prints the tables, writes the plot and report."""
    lines: list[str] = []

    def log(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    start = time.perf_counter()
    data = load_data(seed)
    log(
        f"jaxcons {jaxcons.__version__} digits demo: {len(data.y_train)} train / "
        f"{len(data.y_test)} test images, MLP 64-{'-'.join(map(str, HIDDEN))}-10, "
        f"Adam lr={LEARNING_RATE:g}, batch {BATCH_SIZE}, {epochs} epochs, seed {seed}"
    )
    histories = []
    setups = make_setups()
    for k, setup in enumerate(setups, 1):
        log()
        log(f"[{k}/{len(setups)}] {setup.name}: {setup.description}")
        histories.append(train(setup, data, epochs, seed, log))

    runs = [h.setup.name for h in histories]
    checks = constraint_checks(histories)
    log()
    log(
        "Constraints after training: every constrained parameter against its bound (the adam "
        "column: the same measure, unconstrained)"
    )
    for line in constraint_table(checks, runs):
        log(line)
    log(
        f"Norm bounds reached through jaxcons.constrain may be exceeded by a few ulps (rounding "
        f"in p + (P(p + u) - p));\nup to {NORM_ULP_TOLERANCE} ulps counts as OK. NonNeg holds "
        f"exactly."
    )
    log()
    log("Regularizers after training: penalties per parameter (regularized run) and exact zeros")
    for line in regularizer_table(histories):
        log(line)
    log(
        "Exact zeros come from the proximal L1 step (soft-thresholding by lr * l1 each step) and "
        "from NonNeg (biases\nprojected onto >= 0). The proximal regularizer is not in the loss: "
        "its penalty is logged with jaxcons.penalties.\nWith Adam, whose steps are ~lr whatever "
        "the gradient's scale, proximal factors are far larger than loss factors."
    )

    out.mkdir(parents=True, exist_ok=True)
    plot = out / "kernel_norms.png"
    plot_norms(histories, plot)
    report = out / "report.txt"
    log()
    log(f"wrote {plot} and {report}")
    report.write_text("\n".join(lines) + "\n")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return DemoResult(histories, checks, plot, report)


def main(argv: Sequence[str] | None = None) -> DemoResult:
    """Parses the command line and runs the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="data split, init and batch order")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    return run(args.epochs, args.out, args.seed)


if __name__ == "__main__":
    main()
