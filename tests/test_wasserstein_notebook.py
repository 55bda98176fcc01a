"""The Wasserstein-1 notebook, notebooks/08_lipschitz_wasserstein.ipynb, in its quick setting.

``make test`` runs the notebook in full with nbmake; this runs it with ``JAXCONS_W1_QUICK=1``
(a smaller critic, fewer steps) in a Jupyter kernel of its own, as nbmake would, so the jax
settings of this test session (strict dtype promotion, ``conftest.py``) do not reach it. The
notebook's own assertions fail the run; the numbers it reports are then read back from its
``RESULTS`` dict and checked here: the estimate reaches 90% of the exact distance, 35, and stays
below 35 times the certified Lipschitz bound, as it must for any network that bound is valid for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")  # The notebooks extra (nbmake brings it).
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_lipschitz_wasserstein.ipynb"
W1_EXACT = 35.0


def test_quick_configuration_estimates_35_under_its_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JAXCONS_W1_QUICK", "1")  # The kernel inherits the environment.
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import json\nprint(json.dumps(RESULTS))"))
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # Raises CellExecutionError if an assertion in the notebook fails.

    printed = "".join(
        output["text"] for output in notebook.cells[-1].outputs if output["output_type"] == "stream"
    )
    results = json.loads(printed)
    assert results["quick"] is True
    estimate, bound = results["estimate"], results["certified_bound"]
    # Orthonormal kernels: every singular value is 1, and the certificate is tight.
    assert 1.0 - 1e-5 <= bound <= 1.01, bound
    assert 0.9 * W1_EXACT <= estimate <= W1_EXACT * bound, (estimate, bound)
    assert 0.9 * W1_EXACT <= results["exact_expectation"] <= W1_EXACT * bound, results
