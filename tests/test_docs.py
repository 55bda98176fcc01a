"""The docs: the check that every public name is documented, and the guides' code.

``make docs`` (run by ``make test``) builds the site; these tests check the extension's
functions on fake modules (the failure paths a real build should never reach) and run every
```python block of the guides under docs/.
"""

import importlib.util
import pathlib
import re
import sys
import types
from typing import NamedTuple

import jax
import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def _load_extension() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("jaxcons_api", DOCS / "_ext" / "jaxcons_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there.
    spec.loader.exec_module(module)
    return module


api = _load_extension()


def _fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name, "A fake public module.")
    for key, value in attributes.items():
        setattr(module, key, value)
    module.__all__ = list(attributes)
    return module


def documented_function():
    """Does something, and says so."""


def undocumented_function():
    pass


class DocumentedClass:
    """A class with its own docstring."""


class InheritsItsDocstring(DocumentedClass):
    pass


class AutoDocumentedState(NamedTuple):
    count: int


def test_check_fails_naming_the_undocumented_name():
    fake = _fake_module("fakepkg", ok=documented_function, forgotten=undocumented_function)
    assert api.undocumented([fake]) == ["fakepkg.forgotten (function)"]
    with pytest.raises(
        api.UndocumentedNameError,
        match=r"public names without a docstring .*: fakepkg\.forgotten \(function\)$",
    ):
        api.check_documented([fake])


def test_check_lists_every_undocumented_name_of_every_module():
    first = _fake_module("fake_a", f=undocumented_function, C=DocumentedClass)
    second = _fake_module("fake_b", Sub=InheritsItsDocstring, State=AutoDocumentedState)
    # An inherited docstring and a NamedTuple's generated "AutoDocumentedState(count)" do not
    # document the name.
    with pytest.raises(
        api.UndocumentedNameError,
        match=r": fake_a\.f \(function\), fake_b\.Sub \(class\), fake_b\.State \(class\)$",
    ):
        api.check_documented([first, second])


def test_check_reads_comment_docs_of_constants(tmp_path, monkeypatch):
    (tmp_path / "fake_constants.py").write_text(
        '"""Constants."""\n\n__all__ = ["DOCUMENTED", "BARE"]\n\n'
        "#: The documented constant.\nDOCUMENTED = 1.0\nBARE = 2.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("fake_constants")
    try:
        assert api.undocumented([module]) == ["fake_constants.BARE (data)"]
    finally:
        sys.modules.pop("fake_constants", None)


def test_check_rejects_a_module_without_all():
    module = types.ModuleType("fake_no_all", "Docstring.")
    with pytest.raises(api.UndocumentedNameError, match=r"fake_no_all has no __all__"):
        api.check_documented([module])


def test_check_rejects_an_all_listing_a_missing_name():
    module = _fake_module("fake_missing", ok=documented_function)
    module.__all__.append("ghost")
    with pytest.raises(
        api.UndocumentedNameError,
        match=r"fake_missing\.__all__ lists 'ghost', which fake_missing does not define",
    ):
        api.check_documented([module])


def test_pages_reject_a_public_submodule_not_in_the_list():
    sub = _fake_module("fakepkg.sub", f=documented_function)
    parent = _fake_module("fakepkg", sub=sub)
    with pytest.raises(
        api.UndocumentedNameError,
        match=r"fakepkg\.sub is a public module missing from PUBLIC_MODULES .*add 'fakepkg\.sub'",
    ):
        api.api_pages([parent])
    assert "fakepkg.sub.f" in api.api_pages([parent, sub])


def test_missing_pages_names_what_the_built_docs_lack():
    expected = [("pkg.f", "function"), ("pkg.C", "class"), ("pkg.sub", "module")]
    assert api.missing_pages(expected, objects=["pkg.f", "pkg.C"], modules=["pkg.sub"]) == []
    assert api.missing_pages(expected, objects=["pkg.f"], modules=[]) == ["pkg.C", "pkg.sub"]


def test_aliases_point_to_one_full_page():
    fake = _fake_module(
        "fakepkg", DocumentedClass=DocumentedClass, alias=DocumentedClass, f=documented_function
    )
    pages = api.api_pages([fake])
    assert ".. autoclass:: DocumentedClass" in pages["fakepkg.DocumentedClass"]
    assert "The same object as :py:class:`fakepkg.DocumentedClass`" in pages["fakepkg.alias"]
    assert ".. autofunction:: f" in pages["fakepkg.f"]


def test_every_public_name_of_jaxcons_is_documented_and_has_a_page():
    modules = [importlib.import_module(name) for name in api.PUBLIC_MODULES]
    api.check_documented(modules)  # Raises, naming them, if any name lacks a docstring.
    pages = api.api_pages(modules)
    names = [e for module in modules for e in api.public_names(module)]
    assert len(names) > 50
    for e in names:
        if isinstance(e.obj, types.ModuleType):
            assert e.obj.__name__ in pages
        else:
            # Case-insensitive file systems: jaxcons.l1's page is "jaxcons.l1-2".
            page = pages.get(e.fullname) or pages[f"{e.fullname}-2"]
            assert page.startswith(e.fullname.replace("_", r"\_") + "\n")


GUIDES = sorted(DOCS.glob("*.md"))
BLOCKS = {
    path.name: re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)
    for path in GUIDES
}


@pytest.mark.parametrize("name", [name for name, blocks in BLOCKS.items() if blocks])
def test_guide_code_runs(name):
    # Each page's blocks run in order in one namespace, as a reader would run them, under JAX's
    # default promotion (optax's Adam raises a Python float to an int32 power).
    namespace = {"__name__": f"docs_{name}"}
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for i, block in enumerate(BLOCKS[name]):
            exec(compile(block, f"docs/{name}, block {i}", "exec"), namespace)
    # Every page checks its claims (a block that only runs proves little).
    assert all("assert" in block for block in BLOCKS[name])


def test_the_guides_have_code():
    assert {"getting-started.md", "rules.md", "equinox.md", "flax-nnx.md"} <= {
        name for name, blocks in BLOCKS.items() if blocks
    }
