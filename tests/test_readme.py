"""The README's ```python blocks run as written (```py blocks are illustrations only)."""

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_runnable_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("source", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(source, capsys, standard_promotion):
    # The README shows user code as it runs under JAX's defaults (the suite's strict promotion
    # would also reject the optax.adam it builds; see tests/conftest.py).
    with standard_promotion(), jax.numpy_rank_promotion("allow"):
        exec(compile(source, str(README), "exec"), {"__name__": "readme"})
    # Each block checks its own claim with an assert (a block that only runs proves little).
    assert "\nassert " in source or "    assert " in source
    if "print(e)" in source:
        assert "matches no parameter" in capsys.readouterr().out
