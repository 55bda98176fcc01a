"""Smoke test of `make demo` (examples/digits_demo.py): a short run, its tables and its plot."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

DEMO = Path(__file__).resolve().parents[1] / "examples" / "digits_demo.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, standard_promotion):
    """Runs the demo's ``main`` for two epochs; returns (module, result, printed text)."""
    spec = importlib.util.spec_from_file_location("digits_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "digits_demo", module)  # dataclasses look the module up.
        spec.loader.exec_module(module)
        out = tmp_path_factory.mktemp("demo_out")
        # The demo builds its own optax.adam, whose bias correction strict promotion rejects
        # (tests/conftest.py); everything else here is strict-clean.
        with standard_promotion():
            result = module.main(["--epochs", "2", "--out", str(out), "--seed", "0"])
    return module, result, out


def test_every_constraint_bound_holds(demo):
    module, result, _ = demo
    paths = {c.path for c in result.checks}
    assert paths == {f"Dense_{i}/{name}" for i in range(3) for name in ("kernel", "bias")}
    for check in result.checks:
        assert check.ok, check
        assert check.status.startswith("OK"), check
    # NonNeg binds even in a short run: plain Adam drives some biases negative.
    for check in result.checks:
        if check.measure == "min entry":
            assert check.values["adam"] < 0.0
            assert check.values["constrained"] >= 0.0
            assert check.values["regularized"] >= 0.0
        else:
            assert check.bound == "<= 1.5"
            for run in ("constrained", "regularized"):
                assert check.values[run] <= 1.5 * (1 + module.NORM_ULP_TOLERANCE * 2.0**-23)


def test_report_tables(demo):
    _, result, out = demo
    report = result.report.read_text()
    assert result.report == out / "report.txt"
    assert "VIOLATED" not in report
    assert "Constraints after training" in report
    assert "Regularizers after training" in report
    constraint_rows = [
        line for line in report.splitlines() if line.startswith("Dense_") and "Norm" in line
    ]
    assert len(constraint_rows) == 3
    assert all(re.search(r"  OK( \(\+\d ulp\))?$", line) for line in constraint_rows)
    total = next(line for line in report.splitlines() if line.startswith("total"))
    assert "jaxcons.penalty" in total


def test_plot_is_a_png(demo):
    _, result, out = demo
    assert result.plot == out / "kernel_norms.png"
    assert result.plot.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(result.plot)
    assert image.ndim == 3
    assert image.shape[0] > 200
    assert image.shape[1] > 800
    assert np.std(image) > 0.05  # Not a blank canvas.


def test_training_learns_and_proximal_step_zeroes(demo):
    _, result, _ = demo
    assert [h.setup.name for h in result.histories] == ["adam", "constrained", "regularized"]
    for history in result.histories:
        assert len(history.test_acc) == 3  # Initial weights and two epochs.
        assert history.test_acc[-1] > 0.5  # Chance is 0.1.
        assert history.train_acc[-1] > 0.5
        assert history.loss[-1] < history.loss[0]
    # jaxcons.violations, logged every epoch: the constrained runs stay within a few ulps of
    # the set (norm bounds, see NORM_ULP_TOLERANCE) while plain Adam leaves it.
    for history in result.histories[1:]:
        assert max(history.violation) <= 1.5 * 4 * 2.0**-23, history.violation
    assert result.histories[0].violation[-1] > 1e-3
    regularized = result.histories[-1]
    kernel = np.asarray(regularized.params["Dense_0"]["kernel"])
    assert np.mean(kernel == 0) > 0.01
    assert np.all(np.asarray(result.histories[0].params["Dense_0"]["kernel"]) != 0)
    assert regularized.penalty[-1] > 0.0
