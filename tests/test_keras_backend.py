"""`import jaxcons.keras` picks Keras's JAX backend, or says what to set.

Keras chooses its backend when first imported, from ``KERAS_BACKEND`` (default TensorFlow,
which a JAX user rarely has). Each case runs in a fresh interpreter, since a process's Keras
backend cannot change once chosen.
"""

from __future__ import annotations

import os
import subprocess
import sys


def _run(code: str, backend: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def test_without_keras_backend_set_jaxcons_keras_selects_jax():
    result = _run(
        "import jaxcons.keras, keras\n"
        "print(keras.backend.backend())\n"
        "print(jaxcons.keras.from_keras(keras.constraints.NonNeg()))",
        backend=None,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["jax", "NonNeg()"]


def test_keras_loaded_on_another_backend_is_an_error_saying_what_to_set():
    # The numpy backend ships with Keras 3 and needs nothing else installed.
    result = _run("import keras\nimport jaxcons.keras", backend="numpy")
    assert result.returncode != 0
    assert (
        "ImportError: jaxcons.keras needs Keras on its JAX backend, but Keras runs on 'numpy' "
        "(KERAS_BACKEND='numpy'). Set KERAS_BACKEND=jax before Keras is first imported"
    ) in result.stderr, result.stderr


def test_a_backend_the_user_chose_is_kept_and_refused_if_not_jax():
    # KERAS_BACKEND set by the user is respected (not overwritten), then refused.
    result = _run("import jaxcons.keras", backend="numpy")
    assert result.returncode != 0
    assert "Keras runs on 'numpy'" in result.stderr, result.stderr
