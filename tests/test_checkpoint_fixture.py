"""A checkpoint written by an earlier jaxcons restores and continues bit for bit.

``tests/fixtures/checkpoint_v0_1`` holds an orbax checkpoint of ``(params, opt_state)`` that
jaxcons 0.1.0 wrote before its package layout changed, and the params that run reached a few
steps later (``tests/fixtures/write_checkpoint.py`` wrote both and says how). The optimizer
state's structure is data users keep: today's code must restore that checkpoint into the state
its own ``init`` builds, and continue the run to the very same bits. The continuation was
rewritten once, from the same stored state, when `SpectralNorm` and `Orthogonal` became
certified (their numbers changed on purpose; ``written_by.json`` says so); a resumed run still
matches the uninterrupted one bit for bit (the last test).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxcons

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "checkpoint_v0_1"


def _writer():
    spec = importlib.util.spec_from_file_location(
        "write_checkpoint", FIXTURES / "write_checkpoint.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def writer():
    return _writer()


def _restore(writer):
    tx = writer.optimizer()
    params = writer.initial_params()
    params["ortho"]["kernel"] = jaxcons.Orthogonal()(params["ortho"]["kernel"])
    target = {"params": params, "opt_state": tx.init(params)}
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(CHECKPOINT / "state", abstract)
    return tx, target, restored


def _flat(params):
    return {
        jaxcons.path_str(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)
    }


def test_the_restored_state_has_the_structure_init_builds_today(writer, standard_promotion):
    with standard_promotion():
        _, target, restored = _restore(writer)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(target)
    for a, b in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(target), strict=True
    ):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    # The state holds what the old run kept: SpectralNorm's vectors, Orthogonal's state and the
    # step counts (3 steps were taken), none of them at their initial values.
    counts = [x for x in jax.tree_util.tree_leaves(restored["opt_state"]) if x.dtype == np.int32]
    assert counts and all(int(c) == writer.STEPS_BEFORE for c in counts)


def test_the_restored_run_continues_bit_for_bit(writer, standard_promotion):
    written_by = json.loads((CHECKPOINT / "written_by.json").read_text())
    written_by = written_by.get("continued_by", written_by)  # Who wrote continued.npz.
    with standard_promotion():
        tx, _, restored = _restore(writer)
        step = writer.make_step(tx)
        params, opt_state = restored["params"], restored["opt_state"]
        for _ in range(writer.STEPS_AFTER):
            params, opt_state = step(params, opt_state)
    expected = dict(np.load(CHECKPOINT / "continued.npz"))
    got = _flat(params)
    assert sorted(got) == sorted(expected)
    for path, value in got.items():
        if jax.__version__ == written_by["jax"]:
            # The compiler that wrote the fixture: the very same bits.
            np.testing.assert_array_equal(value, expected[path], err_msg=path)
        else:
            # Another XLA (the version floors of `make test-min`) may round differently.
            np.testing.assert_allclose(value, expected[path], rtol=2e-5, atol=2e-6, err_msg=path)


def test_a_restored_run_matches_the_uninterrupted_run_bit_for_bit(
    writer, standard_promotion, tmp_path
):
    # The fixture's run (every stateful transform of the old checkpoint) with today's code:
    # saved after STEPS_BEFORE steps, restored into a fresh state and continued, it reaches the
    # very bits of the run that never stopped.
    with standard_promotion():
        tx = writer.optimizer()
        params = writer.initial_params()
        params["ortho"]["kernel"] = jaxcons.Orthogonal()(params["ortho"]["kernel"])
        opt_state = tx.init(params)
        abstract = jax.tree_util.tree_map(
            ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state}
        )
        step = writer.make_step(tx)
        for _ in range(writer.STEPS_BEFORE):
            params, opt_state = step(params, opt_state)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp_path / "state", {"params": params, "opt_state": opt_state})
            ckpt.wait_until_finished()
            restored = ckpt.restore(tmp_path / "state", abstract)
        resumed, resumed_state = restored["params"], restored["opt_state"]
        for _ in range(writer.STEPS_AFTER):
            params, opt_state = step(params, opt_state)
            resumed, resumed_state = step(resumed, resumed_state)
    assert _flat(resumed).keys() == _flat(params).keys()
    for path, value in _flat(resumed).items():
        np.testing.assert_array_equal(value, _flat(params)[path], err_msg=path)
