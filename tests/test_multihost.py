"""Multi-host training on JAX's own distributed runtime, with two processes on localhost.

``multihost_worker.py`` is started three times at once: twice as the two processes of one
``jax.distributed`` job (coordinator on ``127.0.0.1`` at a free port, 4 CPU devices each, CPU
collectives over gloo, one 8-device global mesh whose 'model' axis spans both processes), and
once alone on 8 local devices with the same mesh as the single-process reference. Each runs
the same 10 steps of ``regularize -> adam -> constrain`` on a small MLP and writes its final
parameters and a report of its compiled step. The test below checks that both processes end
with the reference's parameters (to 1e-5: the devices reduce in a different order), that the
step gathers no parameter, and that the constraints held.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

WORKER = Path(__file__).with_name("multihost_worker.py")
TIMEOUT_S = 60  # The three processes together take about 10 s on 2 CPU cores.
NAMES = ("dense0/kernel", "dense0/bias", "dense1/kernel")


class Run(NamedTuple):
    """One worker's final parameters (NumPy), report and log."""

    arrays: dict[str, np.ndarray]
    report: dict[str, Any]
    log: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path) -> dict[str, Run]:
    """Runs the two distributed processes and the reference together; kills all on exit."""
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p
    )
    jobs = {"process0": (0, 2), "process1": (1, 2), "reference": (0, 1)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp / f"{name}.log" for name in jobs}
    try:
        for name, (process_id, count) in jobs.items():
            args = [str(process_id), str(count), str(port), str(tmp / f"{name}.npz")]
            with logs[name].open("wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, str(WORKER), *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + TIMEOUT_S
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish in {TIMEOUT_S} s:\n{_tails(logs)}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = {name: p.returncode for name, p in procs.items() if p.returncode != 0}
    assert not failed, f"exit statuses {failed}:\n{_tails(logs)}"
    runs = {}
    for name in jobs:
        with np.load(tmp / f"{name}.npz") as data:
            arrays = {key: data[key] for key in data.files if key != "report"}
            report = json.loads(str(data["report"]))
        runs[name] = Run(arrays, report, logs[name].read_text(errors="replace"))
    return runs


def _tails(logs: dict[str, Path]) -> str:
    return "\n".join(
        f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}"
        for name, path in logs.items()
        if path.exists()
    )


def test_two_processes_train_like_one(tmp_path: Path) -> None:
    """One launch, every check (a module fixture would run once per pytest-xdist worker)."""
    runs = launch(tmp_path)
    check_the_runs_are_what_they_claim(runs)
    for name, run in runs.items():
        check_the_step_gathers_no_parameter(run.report, name)
    for name in ("process0", "process1"):
        check_same_parameters(runs[name], runs["reference"], name)
        check_the_constraints_held_and_bound(runs[name].arrays)


def check_the_runs_are_what_they_claim(runs: dict[str, Run]) -> None:
    for name in ("process0", "process1"):
        report = runs[name].report
        assert (report["process_count"], report["local_devices"]) == (2, 4), report
        assert report["process_index"] == int(name[-1])
        # Every 'model' row of the (2, 4) mesh holds devices of both processes.
        assert report["mesh_process_layout"] == [[0, 0, 1, 1], [0, 0, 1, 1]]
        assert "Gloo" in runs[name].log  # The CPU collectives went through gloo.
    ref = runs["reference"].report
    assert (ref["process_count"], ref["local_devices"]) == (1, 8)
    assert ref["mesh_process_layout"] == [[0, 0, 0, 0], [0, 0, 0, 0]]


def check_the_step_gathers_no_parameter(report: dict[str, Any], name: str) -> None:
    # The scan sees a gather where there is one: a program that replicates a sharded kernel.
    assert report["n_detector_moves"] >= 1, f"{name}: {report['detector_sees']}"
    assert report["n_parameter_sized_moves"] == 0, (
        f"{name}: {report['parameter_sized_moves']}; all collectives: {report['collectives']}"
    )
    # The norms over the sharded axes are computed with reductions of small arrays.
    assert "all-reduce" in report["collective_ops"], f"{name}: {report['collectives']}"
    assert all(report["shardings_kept"].values()), f"{name}: {report['shardings_kept']}"


def check_same_parameters(run: Run, ref: Run, name: str) -> None:
    for param in NAMES:
        got, want = run.arrays[param], ref.arrays[param]
        assert got.shape == want.shape and got.dtype == want.dtype == np.float32, param
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name} {param}")
        # Training moved every parameter away from its start.
        assert not np.allclose(got, run.arrays[f"initial/{param}"], atol=1e-3), param
    np.testing.assert_allclose(run.report["losses"], ref.report["losses"], rtol=1e-5)


def check_the_constraints_held_and_bound(arrays: dict[str, np.ndarray]) -> None:
    """NumPy float64 on the final parameters; the initial ones violate every constraint."""
    start, end = (
        {name: arrays[prefix + name].astype(np.float64) for name in NAMES}
        for prefix in ("initial/", "")
    )
    assert np.linalg.norm(start["dense0/kernel"], axis=0).max() > 2.0
    assert np.linalg.norm(end["dense0/kernel"], axis=0).max() <= 1.0 + 1e-6
    assert start["dense0/bias"].min() < 0 and end["dense0/bias"].min() >= 0
    assert np.linalg.norm(start["dense1/kernel"], 2) > 2.0
    # Scaled by a certified bound every step: never above 1, and within 3% of it.
    assert 0.97 <= np.linalg.norm(end["dense1/kernel"], 2) <= 1.0
