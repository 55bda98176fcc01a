"""One process of a jaxcons training run on JAX's distributed runtime; run by test_multihost.py.

``python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT`` gives this process
``8 // NUM_PROCESSES`` CPU devices (``--xla_force_host_platform_device_count``) and, when
``NUM_PROCESSES > 1``, joins the others through ``jax.distributed.initialize`` with a
coordinator on ``127.0.0.1:PORT`` and CPU collectives over gloo. All processes then build the
same 8-device global mesh ``('data', 'model')`` of shape (2, 4), laid out so that the 'model'
axis spans the processes: each process holds two of its four positions, so every kernel below
is split between the processes and every norm over it crosses the process boundary ('data'
stays within a process). With ``NUM_PROCESSES == 1`` the same mesh is built on 8 local devices:
the single-process reference run.

Parameters (global ``jax.Array``s, the same values in every run):

* ``dense0/kernel`` (16, 32), sharded along axis 0 over 'model', under ``MaxNorm(axis=0)``:
  the column norms reduce over the sharded axis;
* ``dense0/bias`` (32,), replicated, under ``NonNeg``;
* ``dense1/kernel`` (32, 48), sharded along axis 1 over 'model', under ``SpectralNorm``: wider
  than tall, so its certificate's Gram matrix ``W W^T`` (32 x 32) reduces over the sharded
  axis (a tall kernel sharded along its output axis would be gathered, README "Sharding");
* ``L2`` on both kernels.

The step is ``jaxcons.chain(optax.adam(1e-2), constraints=..., regularizers=...)``
on a tanh MLP with the batch sharded over 'data'. It is compiled once; its HLO text is scanned
for parameter-sized gathers with the helpers of ``sharding_checks.py``, and the same compiled
executable runs 10 steps. After training, and outside the step, the final parameters are
gathered to every process (``multihost_utils.process_allgather``) and written to OUT (``.npz``)
with a JSON report of the collectives; the parent test compares the runs.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # Must happen before jax is imported.
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} PROCESS_ID NUM_PROCESSES PORT OUT (got {sys.argv[1:]})")
    _N_PROCESSES = int(sys.argv[2])
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ.get("XLA_FLAGS", ""),
            f"--xla_force_host_platform_device_count={8 // _N_PROCESSES}",
        ]
    ).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"

import json
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from sharding_checks import adam, collectives, describe, on_mesh, parameter_sized_moves

import jaxcons

N_DEVICES = 8
STEPS = 10
MESH_SHAPE = (2, 4)  # ('data', 'model')

# name -> (shape, partition spec, scale of the initial normal values).
PARAMS = {
    "dense0/kernel": ((16, 32), P("model", None), 0.5),  # Column norms ~2 > MaxNorm's 1.
    "dense0/bias": ((32,), P(), 1.0),  # Half negative: NonNeg binds.
    "dense1/kernel": ((32, 48), P(None, "model"), 0.3),  # Spectral norm ~3.8 > 1.
}
CONSTRAINTS = {
    "dense0/kernel": jaxcons.MaxNorm(1.0, axis=0),
    "dense0/bias": jaxcons.NonNeg(),
    "dense1/kernel": jaxcons.SpectralNorm(1.0),
}
REGULARIZERS = {"**/kernel": jaxcons.L2(1e-3)}
# Activations (8 x 32, 8 x 48) stay smaller than a kernel (16 x 32): no false alarm.
BATCH = 8


def initial_values() -> dict[str, np.ndarray]:
    """The parameters and the batch as host arrays, identical in every process and run."""
    rng = np.random.default_rng(0)
    values = {
        name: (scale * rng.standard_normal(shape)).astype(np.float32)
        for name, (shape, _, scale) in PARAMS.items()
    }
    values["x"] = rng.standard_normal((BATCH, 16)).astype(np.float32)
    values["y"] = rng.standard_normal((BATCH, 48)).astype(np.float32)
    return values


def make_mesh() -> Mesh:
    """The (2, 4) mesh whose 'model' rows take two devices from each half of the device list.

    ``jax.devices()`` lists process 0's devices first, so with two processes row ``j`` of the
    mesh is ``[p0[2j], p0[2j + 1], p1[2j], p1[2j + 1]]``; one process gets the same layout by
    device index.
    """
    devices = np.array(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)))
    grid = devices.reshape(2, 2, 2).transpose(1, 0, 2).reshape(MESH_SHAPE)
    return Mesh(grid, ("data", "model"))


def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the host value every process holds: each fills its own shards."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tree: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        layer, _, leaf_name = name.partition("/")
        tree.setdefault(layer, {})[leaf_name] = value
    return tree


def leaf(tree: dict[str, dict[str, Any]], name: str) -> Any:
    layer, _, leaf_name = name.partition("/")
    return tree[layer][leaf_name]


def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    h = jnp.tanh(x @ params["dense0"]["kernel"] + params["dense0"]["bias"][None])
    return jnp.mean(jnp.square(h @ params["dense1"]["kernel"] - y))


def run(process_id: int, num_processes: int, port: int, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_numpy_dtype_promotion", "strict")  # As in the test suite.
    jax.config.update("jax_numpy_rank_promotion", "raise")
    if num_processes > 1:
        jax.distributed.initialize(
            f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=30,
        )
    if jax.process_count() != num_processes or jax.device_count() != N_DEVICES:
        raise RuntimeError(
            f"expected {num_processes} processes and {N_DEVICES} devices, got "
            f"{jax.process_count()} and {jax.device_count()}"
        )
    mesh = make_mesh()
    values = initial_values()
    tx = jaxcons.chain(
        adam(1e-2),  # optax.adam under standard dtype promotion (sharding_checks.adam).
        constraints=CONSTRAINTS,
        regularizers=REGULARIZERS,
    )

    def step(params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    with jax.set_mesh(mesh):
        params = nest(
            {
                name: global_array(values[name], NamedSharding(mesh, spec))
                for name, (_, spec, _) in PARAMS.items()
            }
        )
        batch_sharding = NamedSharding(mesh, P("data", None))
        batch = (
            global_array(values["x"], batch_sharding),
            global_array(values["y"], batch_sharding),
        )
        opt_state = on_mesh(tx.init(params), mesh)  # Adam's counter: replicated, not local.
        compiled = jax.jit(step).lower(params, opt_state, batch).compile()
        found = collectives(compiled.as_text())
        # The detector must see a real gather: the same scan of a program that replicates a
        # sharded kernel.
        gather = jax.jit(lambda w: w * 2.0, out_shardings=NamedSharding(mesh, P()))
        gather_hlo = gather.lower(leaf(params, "dense0/kernel")).compile().as_text()
        detector = parameter_sized_moves(collectives(gather_hlo), params)
        losses = []
        for _ in range(STEPS):
            params, opt_state, loss = compiled(params, opt_state, batch)
            losses.append(loss)
        shardings_kept = {
            name: leaf(params, name).sharding.is_equivalent_to(
                NamedSharding(mesh, spec), len(shape)
            )
            for name, (shape, spec, _) in PARAMS.items()
        }
        # After training, outside the step: every process fetches the whole parameters.
        final = multihost_utils.process_allgather(params, tiled=True)
        losses = [float(v) for v in multihost_utils.process_allgather(losses, tiled=True)]

    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "mesh_process_layout": [[d.process_index for d in row] for row in mesh.devices],
        "collectives": describe(found),
        "collective_ops": sorted({c.op for c in found}),
        "parameter_sized_moves": describe(parameter_sized_moves(found, params)),
        "n_parameter_sized_moves": len(parameter_sized_moves(found, params)),
        "detector_sees": describe(detector),
        "n_detector_moves": len(detector),
        "shardings_kept": shardings_kept,
        "losses": losses,
    }
    arrays = {name: np.asarray(leaf(final, name)) for name in PARAMS}
    arrays.update({f"initial/{name}": values[name] for name in PARAMS})
    np.savez(out, report=np.array(json.dumps(report)), **arrays)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    warnings.simplefilter("error")
    run(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
