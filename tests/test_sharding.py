"""Sharding on multi-device meshes: jaxcons keeps every leaf's sharding and never gathers a
parameter.

The checks live in ``sharding_checks.py``, run in a separate process: fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) exist only if the flag is set before
jax starts. The child prints one line per check and mesh; each test below asserts on one line.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

SCRIPT = Path(__file__).with_name("sharding_checks.py")
TIMEOUT_S = 900  # The whole run takes a few minutes on 2 CPU cores.


def _load_checks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_jaxcons_sharding_checks", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _load_checks()


class ChildRun:
    """The child's exit status and output, split into per-check result lines."""

    def __init__(self, proc: subprocess.CompletedProcess[str]):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.lines = {}
        for line in proc.stdout.splitlines():
            status, _, rest = line.partition(" ")
            if status in ("PASS", "FAIL", "NOTE") and rest.startswith("["):
                label, _, detail = rest.partition(": ")
                self.lines[label] = (status, detail)

    def context(self) -> str:
        return (
            f"exit status {self.returncode}\n--- stdout ---\n{self.stdout[-6000:]}"
            f"\n--- stderr (tail) ---\n{self.stderr[-6000:]}"
        )


# Every test here reads one child run (8 fake devices, minutes): keep them on one xdist worker
# (`--dist loadgroup` in the Makefile), so the child runs once, not once per worker.
pytestmark = pytest.mark.xdist_group("sharding_child")


@pytest.fixture(scope="module")
def child() -> ChildRun:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={checks.N_DEVICES}"]
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"  # Fake devices are CPU devices, even where a GPU is present.
    try:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        pytest.fail(f"sharding checks timed out after {TIMEOUT_S} s\n{out}\n{err[-6000:]}")
    return ChildRun(proc)


def test_every_check_ran_and_none_failed(child: ChildRun) -> None:
    expected = len(checks.MESH_NAMES) * len(checks.CHECKS)
    assert child.returncode == 0, child.context()
    assert len(child.lines) == expected, child.context()
    assert f"SUMMARY passed={expected - _count(child, 'NOTE')} failed=0" in child.stdout


def _count(child: ChildRun, status: str) -> int:
    return sum(s == status for s, _ in child.lines.values())


@pytest.mark.parametrize("check", sorted(checks.CHECKS))
@pytest.mark.parametrize("mesh", checks.MESH_NAMES)
def test_check(child: ChildRun, mesh: str, check: str) -> None:
    label = f"[{mesh}] {check}"
    assert label in child.lines, f"{label} did not report\n{child.context()}"
    status, detail = child.lines[label]
    allowed = ("PASS", "NOTE") if check in checks.MAY_NOTE else ("PASS",)
    assert status in allowed, f"{status} {label}: {detail}\n--- stderr ---\n{child.stderr[-6000:]}"


# The HLO reader, on instruction lines as XLA prints them: a gather must never go unseen.

_HLO = """
HloModule jit_step, entry_computation_layout={(f32[256,64]{1,0})->f32[256,64]{1,0}}

ENTRY %main.1 (param: f32[32,64]) -> f32[256,64] {
  %all-gather = f32[256,64]{1,0} all-gather(%param), channel_id=1, dimensions={0}
  %all-gather-start = (f32[32,64]{1,0}, f32[256,64]{1,0}) all-gather-start(%param), dimensions={0}
  %all-gather-done = f32[256,64]{1,0} all-gather-done(%all-gather-start)
  %all-reduce.6 = (f32[32,64]{1,0}, f32[], /*index=2*/f32[64]{0}) all-reduce(%a, %b, %c)
  %all-reduce.1 = f32[64]{0} all-reduce(%ynn_fusion), channel_id=2, to_apply=%add
  %all-to-all = bf16[8,4,16]{2,1,0} all-to-all(%x), dimensions={0}
  %fusion = f32[256,64]{1,0} fusion(%all-gather), kind=kLoop, calls=%fused_computation
  ROOT %tuple = (f32[256,64]{1,0}, f32[64]{0}) tuple(%fusion, %all-reduce.1)
}
"""


def test_collectives_reads_every_form() -> None:
    found = checks.collectives(_HLO)
    assert [(c.op, c.elements) for c in found] == [
        ("all-gather", 256 * 64),
        ("all-gather", 256 * 64),  # The async start counts once, at its result's size.
        ("all-reduce", 32 * 64 + 1 + 64),  # A combined all-reduce counts every operand.
        ("all-reduce", 64),
        ("all-to-all", 8 * 4 * 16),
    ]
    assert found[0].shape == "f32[256,64]"
    assert checks.describe(found[3:4]) == "all-reduce f32[64]"
    assert checks.describe([]) == "no collectives"


def _leaf(shape: tuple[int, ...], *, replicated: bool) -> SimpleNamespace:
    """What `parameter_size` reads of an array: rank, size and whether it is replicated."""
    return SimpleNamespace(
        ndim=len(shape),
        size=math.prod(shape),
        sharding=SimpleNamespace(is_fully_replicated=replicated),
    )


def test_parameter_sized_moves_ignores_reductions_and_small_gathers() -> None:
    params = {
        "kernel": _leaf((64, 128), replicated=False),
        "replicated": _leaf((8, 8), replicated=True),
        "bias": _leaf((8,), replicated=False),
    }
    assert checks.parameter_size(params) == 64 * 128  # Replicated and 1-D leaves don't count.
    big = checks.parameter_sized_moves(checks.collectives(_HLO), params)
    assert [(c.op, c.elements) for c in big] == [("all-gather", 256 * 64)] * 2


_BRANCH_HLO = """\
%fallback.3 (x.0: (f32[256,64])) -> (f32[256,64]) {
  %gather = f32[256,64]{1,0} all-gather(f32[32,64]{1,0} %p), dimensions={0}
  %svd = f32[256,64]{1,0} fusion(%gather), kind=kLoop, calls=%fused_svd.1
}
%fused_svd.1 (param_0: f32[256,64]) -> f32[256,64] {
  %inner = f32[256,64]{1,0} all-gather(f32[32,64]{1,0} %param_0), dimensions={0}
}
%pass.4 (x.1: (f32[256,64])) -> (f32[256,64]) {
  %id = f32[256,64]{1,0} copy(%x.1)
}
ENTRY %main.7 (w: f32[32,64]) -> f32[256,64] {
  %gram = f32[64,64]{1,0} all-reduce(f32[64,64]{1,0} %g), to_apply=%add
  %c = (f32[256,64]) conditional(%pred, %t, %t), branch_computations={%pass.4, %fallback.3}
  %late = f32[256,64]{1,0} all-gather(f32[32,64]{1,0} %w), dimensions={0}
}
"""


def test_collectives_in_conditional_branches_are_marked() -> None:
    # A certified constraint's fallback lies in a cond branch: its gathers (and those of the
    # computations it calls) are marked, and gather_problems looks past them; one outside is not.
    found = checks.collectives(_BRANCH_HLO)
    assert [(c.op, c.elements, c.in_branch) for c in found] == [
        ("all-gather", 256 * 64, True),
        ("all-gather", 256 * 64, True),
        ("all-reduce", 64 * 64, False),
        ("all-gather", 256 * 64, False),
    ]
    assert checks.describe(found[:1]) == "all-gather f32[256,64] (in a cond branch)"
    params = {"kernel": _leaf((32, 64), replicated=False)}
    assert checks.gather_problems(found[:3], params) == []
    assert checks.gather_problems(found, params) != []
