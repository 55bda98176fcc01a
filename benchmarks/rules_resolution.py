"""Rules-resolution benchmark: how long does matching rules against a big tree take?

Resolution runs in Python, once per tree structure (per trace under `jax.jit`), never per
step; issue 2 asks for "well under a second" on a 10,000-leaf tree. The synthetic tree is a
linen-style ``params`` dict of ``--blocks`` blocks, each with two Dense layers (kernel, bias)
and a LayerNorm scale: five leaves a block, 10,000 leaves for the default 2,000 blocks.
The rule set mixes every pattern kind: an exemption (``None``), globs with ``**``, a ``re:``
regex and a callable.

Cases, each the median (and minimum) of ``--repeats`` runs:

  flatten       ``jax.tree_util.tree_flatten_with_path`` alone: the floor
  paths         ``jaxcons.paths``: flatten plus building the path strings
  build         ``Rules(...)``: compiling the patterns
  cold strict   ``Rules(...).resolve(tree)`` on a fresh `Rules` (strict: every rule is tried
                on every leaf, to prove each matches something)
  cold loose    the same with ``strict=False`` (stops at the first match)
  cached        a second ``resolve`` of a tree of the same structure (new leaves): a cache hit
  constrain     ``jaxcons.constrain(rules).init(tree)`` on a fresh transform (cold resolve
                plus the transform's own set-up)

Run: ``python benchmarks/rules_resolution.py [--blocks N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import jaxcons
from jaxcons.constraints import Clip, MaxNorm, NonNeg


def make_tree(blocks: int, seed: int = 0) -> dict[str, Any]:
    """A linen-style params dict with ``5 * blocks`` small float32 leaves."""
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    return {
        "params": {
            f"Block_{i}": {
                "Dense_0": {"kernel": arr(4, 4), "bias": arr(4)},
                "Dense_1": {"kernel": arr(4, 2), "bias": arr(2)},
                "LayerNorm_0": {"scale": arr(2)},
            }
            for i in range(blocks)
        }
    }


def _is_scale(path: str, leaf: Any) -> bool:
    return path.endswith("/scale") and leaf.ndim == 1


def make_rules() -> dict[Any, Any]:
    """A typical rule set: one of each pattern kind, first match wins."""
    return {
        "params/Block_0/**": None,  # exempt the first block
        "**/Dense_0/kernel": MaxNorm(2.0),
        "**/kernel": MaxNorm(3.0),
        r"re:params/Block_\d+/Dense_\d+/bias": NonNeg(),
        _is_scale: Clip(0.5, 2.0),
    }


def timeit(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Returns (median, minimum) wall time of ``fn()`` in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2000, help="5 leaves per block")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    tree = make_tree(args.blocks)
    other = make_tree(args.blocks, seed=1)  # same structure, new leaves
    n_leaves = len(jax.tree_util.tree_leaves(tree))
    rules = make_rules()

    # Sanity: the rule set governs what it should (and every rule matches, strictly).
    resolution = jaxcons.Rules(rules, kind="constraint").resolve(tree)
    governed = sum(1 for _ in resolution.active())
    assert governed == n_leaves - 5, (governed, n_leaves)

    warm = jaxcons.Rules(rules, kind="constraint")
    warm.resolve(tree)

    cases: dict[str, Callable[[], Any]] = {
        "flatten": lambda: jax.tree_util.tree_flatten_with_path(tree),
        "paths": lambda: jaxcons.paths(tree),
        "build": lambda: jaxcons.Rules(rules, kind="constraint"),
        "cold strict": lambda: jaxcons.Rules(rules, kind="constraint").resolve(tree),
        "cold loose": lambda: jaxcons.Rules(rules, strict=False, kind="constraint").resolve(tree),
        "cached": lambda: warm.resolve(other),
        "constrain": lambda: jaxcons.constrain(rules).init(tree),
    }

    print(
        f"jaxcons {jaxcons.__version__}, jax {jax.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    print(
        f"tree: {n_leaves} leaves ({args.blocks} blocks), {len(rules)} rules, "
        f"{governed} leaves governed; median / min of {args.repeats} runs\n"
    )
    print(f"{'case':<14}{'median ms':>12}{'min ms':>10}{'us/leaf':>10}")
    results = {}
    for name, fn in cases.items():
        fn()  # warm-up (imports, regex caches)
        median, minimum = timeit(fn, args.repeats)
        results[name] = median
        print(
            f"{name:<14}{median * 1e3:>12.2f}{minimum * 1e3:>10.2f}{median / n_leaves * 1e6:>10.2f}"
        )
    verdict = "yes" if results["cold strict"] < 1.0 else "NO"
    print(
        f"\ncold strict resolve under one second: {verdict} "
        f"({results['cold strict']:.3f} s); cached resolve "
        f"{results['cold strict'] / results['cached']:.1f}x faster"
    )


if __name__ == "__main__":
    main()
