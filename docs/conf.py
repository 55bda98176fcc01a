"""Sphinx configuration of the jaxcons docs (``make docs``: warnings are errors)."""

import importlib.metadata
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")  # For any documented module that imports Keras.

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # This checkout's jaxcons, installed or not.
sys.path.insert(0, str(DOCS / "_ext"))

project = "jaxcons"
author = "jaxcons developers"
copyright = "jaxcons developers"
release = importlib.metadata.version("jaxcons")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "jaxcons_api",  # docs/_ext/jaxcons_api.py: API pages from __all__, and their check.
]

# docs/_generated holds included tables, not pages; docs/api and docs/notebooks are generated
# pages (see jaxcons_api); all three are git-ignored.
exclude_patterns = ["_build", "_generated", "_ext", "**/.ipynb_checkpoints"]
templates_path: list[str] = []

html_theme = "furo"
html_title = f"jaxcons {release}"

# Notebooks are rendered as committed (no outputs); `make test` executes them with nbmake.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Single backticks in docstrings are cross-references to jaxcons names.
default_role = "py:obj"
# An unresolved reference is an error (with -W), except to other projects' names: the build is
# offline, so there is no intersphinx inventory to resolve them against.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|jnp|np|numpy|optax|chex|flax|nn|nnx|keras|tf|equinox|eqx|re)(\..*)?"),
    (r"py:.*", r"(typing|orbax)(\..*)?"),
    (r"py:.*", r"(collections\.abc|dataclasses|functools)\..*"),
    (r"py:.*", r"Any|Callable|Sequence|Mapping|Iterator|NamedTuple|ClassVar|NoneType"),
    (r"py:.*", r"object|type|tuple|list|dict|str|int|float|bool|complex"),
    # chex's name for optax.Params, as flax's TrainState fields show it.
    (r"py:.*", r"ArrayTree"),
    # Private names that public signatures mention: the rules type alias and the result of
    # `Rules.resolve`.
    (r"py:.*", r"RulesLike|Resolution|jaxcons\._src\.rules\.Resolution"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
