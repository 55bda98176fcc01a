"""Sphinx extension for the jaxcons docs: API pages from ``__all__``, and a check they are complete.

`PUBLIC_MODULES` is the one list of documented modules. When the build starts
(``builder-inited``) this extension

* imports each of them and fails the build if a name in its ``__all__`` has no docstring
  (`check_documented`), if ``__all__`` is missing or lists a name the module lacks, or if
  ``__all__`` exports a module that is not in `PUBLIC_MODULES`;
* writes ``docs/api/``: an index, one page per public module, and one page per public name
  (`api_pages`). An object exported under several names (``jaxcons.MaxNorm``,
  ``jaxcons.constraints.MaxNorm``, ``jaxcons.max_norm``) is documented in full once, under its
  canonical name (the first module in `PUBLIC_MODULES` that exports it under its own
  ``__name__``); its other names get a page that points there;
* writes the catalogue tables (``docs/_generated/*.rst``: every constraint and regularizer
  class, with its constructor, its other names and its docstring's first line);
* copies ``notebooks/*.ipynb`` to ``docs/notebooks/`` (rendered, never executed).

When the documents have been read (``env-check-consistency``) it fails the build if a public
name has no page or its page defines no Python object of that name (`missing_pages`).

Everything it writes is generated afresh on every build and git-ignored; files are rewritten
only when their content changes, so a build without ``-E`` re-reads only what changed (``make
docs`` passes ``-E``: an incremental build would not repeat the warnings of unchanged pages).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pathlib
import re
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any

# The public modules, in the order their names are documented. A new public module is added
# here (and nowhere else); see BUILD.md, "Docs".
PUBLIC_MODULES = (
    "jaxcons",
    "jaxcons.constraints",
    "jaxcons.regularizers",
    "jaxcons.flax",
    "jaxcons.flax.nnx",
    "jaxcons.keras",
)

# Catalogue tables: (file stem, module, base class name, base classes left out of the table).
CATALOGUES = (
    (
        "constraints_table",
        "jaxcons.constraints",
        "Constraint",
        ("Constraint", "StatefulConstraint"),
    ),
    ("regularizers_table", "jaxcons.regularizers", "Regularizer", ("Regularizer",)),
)

API_DIR = "api"
GENERATED_DIR = "_generated"
NOTEBOOKS_DIR = "notebooks"


class UndocumentedNameError(Exception):
    """A public name without a docstring, or a public module the docs cannot cover."""


@dataclasses.dataclass(frozen=True)
class PublicName:
    """One name of one public module's ``__all__``."""

    module: str
    name: str
    obj: Any

    @property
    def fullname(self) -> str:
        return f"{self.module}.{self.name}"


def public_names(module: types.ModuleType) -> list[PublicName]:
    """The names of ``module.__all__``, with their objects.

    Raises:
      UndocumentedNameError: if the module has no ``__all__`` or ``__all__`` lists a name the
        module does not define.
    """
    exported = getattr(module, "__all__", None)
    if exported is None:
        raise UndocumentedNameError(
            f"public module {module.__name__} has no __all__: the docs document exactly the "
            "names of __all__."
        )
    out = []
    for name in exported:
        if not hasattr(module, name):
            raise UndocumentedNameError(
                f"{module.__name__}.__all__ lists {name!r}, which {module.__name__} does not "
                "define."
            )
        out.append(PublicName(module.__name__, name, getattr(module, name)))
    return out


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(obj):
        return "function"
    return "data"


def _own_docstring(entry: PublicName) -> str:
    """The docstring that documents ``entry`` itself (``""`` if it has none)."""
    obj = entry.obj
    kind = _kind(obj)
    if kind == "class":
        # A class's own docstring, not one inherited from a base; a NamedTuple's or dataclass's
        # generated ``Name(field, ...)`` does not count.
        doc = obj.__dict__.get("__doc__") or ""
        if re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc.strip(), flags=re.S):
            return ""
        return doc.strip()
    if kind in ("module", "function"):
        return (getattr(obj, "__doc__", None) or "").strip()
    # Data (an instance, a constant) cannot carry a docstring of its own: it is documented by a
    # ``#:`` comment above its assignment in the exporting module, as Sphinx's autodoc reads it.
    from sphinx.errors import PycodeError
    from sphinx.pycode import ModuleAnalyzer

    try:
        analyzer = ModuleAnalyzer.for_module(entry.module)
        analyzer.analyze()
    except PycodeError:
        return ""
    return "\n".join(analyzer.attr_docs.get(("", entry.name), [])).strip()


def undocumented(modules: Iterable[types.ModuleType]) -> list[str]:
    """The full names (``module.name``) in the modules' ``__all__`` that have no docstring."""
    return [
        f"{e.fullname} ({_kind(e.obj)})"
        for module in modules
        for e in public_names(module)
        if not _own_docstring(e)
    ]


def check_documented(modules: Iterable[types.ModuleType]) -> None:
    """Raises `UndocumentedNameError` naming every public name without a docstring."""
    missing = undocumented(modules)
    if missing:
        raise UndocumentedNameError(
            "public names without a docstring (every name in a public module's __all__ needs "
            "one; a constant needs a '#:' comment above its assignment): " + ", ".join(missing)
        )


def canonical_names(entries: Sequence[PublicName]) -> dict[int, str]:
    """For every exported object but modules (by ``id``), the full name documenting it in full.

    The first entry that exports the object under its own ``__name__`` wins, in the order of
    ``entries`` (`PUBLIC_MODULES` order, then ``__all__`` order); failing that, the first entry.
    """
    canonical: dict[int, str] = {}
    for prefer_own_name in (True, False):
        for e in entries:
            if id(e.obj) in canonical or inspect.ismodule(e.obj):
                continue
            if not prefer_own_name or getattr(e.obj, "__name__", None) == e.name:
                canonical[id(e.obj)] = e.fullname
    return canonical


def _docname(fullname: str, taken: set[str]) -> str:
    # ``jaxcons.L1`` and ``jaxcons.l1`` must not share a file on case-insensitive file systems.
    docname, n = fullname, 1
    while docname.lower() in taken:
        n += 1
        docname = f"{fullname}-{n}"
    taken.add(docname.lower())
    return docname


def _title(text: str) -> list[str]:
    escaped = text.replace("_", r"\_")
    return [escaped, "=" * len(escaped), ""]


def _summary(e: PublicName) -> str:
    """The first paragraph of the name's docstring, on one line."""
    return " ".join(inspect.cleandoc(_own_docstring(e)).split("\n\n")[0].split())


def _role(kind: str) -> str:
    return {"module": "mod", "class": "class", "function": "func", "data": "data"}[kind]


def _full_page(e: PublicName) -> list[str]:
    kind = _kind(e.obj)
    lines = [*_title(e.fullname), f".. currentmodule:: {e.module}", ""]
    if kind == "class" and e.obj.__name__ != e.name:
        # autodoc shows a class bound under another name as "alias of <private name>", without
        # its docstring; describe it by hand under its public name instead.
        lines += _renamed_class(e)
    elif kind == "class":
        lines += [f".. autoclass:: {e.name}", "   :members:", "   :show-inheritance:"]
        # Members inherited from jaxcons's own (private) bases are part of the class's API;
        # those of other projects' bases (``tuple.count``, flax's methods) are not.
        foreign = sorted({b.__name__ for b in e.obj.__mro__[1:] if not _is_jaxcons(b)})
        lines += [f"   :inherited-members: {', '.join(foreign)}"]
        if hasattr(e.obj, "_fields"):  # A NamedTuple: its docstring's Attributes cover these.
            lines += [f"   :exclude-members: {', '.join(e.obj._fields)}"]
    elif kind == "function":
        lines += [f".. autofunction:: {e.name}"]
    else:
        lines += [f".. autodata:: {e.name}", "   :annotation:"]
    return [*lines, ""]


def _renamed_class(e: PublicName) -> list[str]:
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    init = inspect.signature(e.obj.__init__)
    params = [
        p.replace(annotation=inspect.Parameter.empty) for p in list(init.parameters.values())[1:]
    ]
    signature = str(inspect.Signature(params))  # Names and defaults only: no self.
    doc = str(GoogleDocstring(inspect.cleandoc(e.obj.__doc__), Config(napoleon_use_ivar=True)))
    body = [f"   {line}" if line else "" for line in doc.splitlines()]
    return [f".. py:class:: {e.name}{signature}", f"   :module: {e.module}", "", *body]


def _pointer_page(e: PublicName, canonical: str) -> list[str]:
    kind = _kind(e.obj)
    return [
        *_title(e.fullname),
        f".. py:{kind}:: {e.name}",
        f"   :module: {e.module}",
        "",
        f"   The same object as :py:{_role(kind)}:`{canonical}`; see its page.",
        "",
    ]


def _module_page(module: types.ModuleType, rows: list[tuple[str, str, str, bool]]) -> list[str]:
    lines = [
        *_title(module.__name__),
        f".. automodule:: {module.__name__}",
        "   :no-members:",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 70",
        "",
        "   * - name",
        "     - summary",
    ]
    for docname, name, summary, _ in rows:
        lines += [f"   * - :doc:`{name} <{docname}>`", f"     - {summary}"]
    lines += ["", ".. toctree::", "   :hidden:", ""]
    lines += [f"   {docname}" for docname, _, _, own in rows if own]
    return [*lines, ""]


def api_pages(modules: Sequence[types.ModuleType]) -> dict[str, str]:
    """The API reference: ``{docname: reStructuredText}``, docnames relative to ``api/``.

    Raises:
      UndocumentedNameError: if a module's ``__all__`` exports a module that is not in
        ``modules``.
    """
    listed = {m.__name__ for m in modules}
    entries = [e for m in modules for e in public_names(m)]
    for e in entries:
        if inspect.ismodule(e.obj) and e.obj.__name__ not in listed:
            raise UndocumentedNameError(
                f"{e.fullname} is a public module missing from PUBLIC_MODULES in "
                f"{pathlib.Path(__file__).name}: add {e.obj.__name__!r} there."
            )
    canonical = canonical_names(entries)
    taken = {m.__name__.lower() for m in modules} | {"index"}
    pages: dict[str, str] = {}
    index = [*_title("API reference"), ".. toctree::", "   :maxdepth: 1", ""]
    for module in modules:
        index.append(f"   {module.__name__}")
        rows = []
        for e in public_names(module):
            if inspect.ismodule(e.obj):  # Its page is the module's own.
                rows.append((e.obj.__name__, e.name, _summary(e), False))
                continue
            docname = _docname(e.fullname, taken)
            if canonical[id(e.obj)] == e.fullname:
                page = _full_page(e)
            else:
                page = _pointer_page(e, canonical[id(e.obj)])
            pages[docname] = "\n".join(page)
            rows.append((docname, e.name, _summary(e), True))
        pages[module.__name__] = "\n".join(_module_page(module, rows))
    pages["index"] = "\n".join([*index, ""])
    return pages


def expected_objects(modules: Sequence[types.ModuleType]) -> list[tuple[str, str]]:
    """``(full name, kind)`` of every public name: what the built docs must define."""
    return [(e.fullname, _kind(e.obj)) for m in modules for e in public_names(m)]


def missing_pages(
    expected: Iterable[tuple[str, str]], objects: Iterable[str], modules: Iterable[str]
) -> list[str]:
    """The public names the built docs define no Python object for.

    Args:
      expected: ``(full name, kind)`` pairs, as `expected_objects` gives.
      objects: the full names of the objects the Python domain holds.
      modules: the full names of the modules it holds.
    """
    objects, modules = set(objects), set(modules)
    return [
        name for name, kind in expected if name not in (modules if kind == "module" else objects)
    ]


def catalogue_table(
    module: types.ModuleType, base: type, skip: Iterable[str], canonical: dict[int, str]
) -> str:
    """A ``list-table`` of the ``base`` subclasses exported by ``module`` (rST).

    Each class links to its full page, ``canonical[id(cls)]`` (from `canonical_names`).
    """
    entries = public_names(module)
    skip = set(skip)
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 22 14 46",
        "",
        "   * - class",
        "     - arguments",
        "     - other names",
        "     - what it does",
    ]
    for e in entries:
        obj = e.obj
        if not (inspect.isclass(obj) and issubclass(obj, base)) or e.name in skip:
            continue
        if obj.__name__ != e.name:
            continue  # An alias: listed under "other names" of its class.
        aliases = [f"``{a.name}``" for a in entries if a.obj is obj and a.name != e.name]
        params = [
            p.replace(annotation=inspect.Parameter.empty)
            for p in inspect.signature(obj).parameters.values()
        ]
        arguments = ", ".join(str(p) for p in params)
        lines += [
            f"   * - :py:class:`~{canonical[id(obj)]}`",
            f"     - ``{arguments}``" if arguments else "     - (none)",
            f"     - {', '.join(aliases) or '(none)'}",
            f"     - {_summary(e)}",
        ]
    return "\n".join([*lines, ""])


def _write_if_changed(path: pathlib.Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _sync_dir(directory: pathlib.Path, files: dict[str, str], pattern: str) -> None:
    """Makes ``directory``'s files matching ``pattern`` exactly ``files`` (name -> text)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(pattern):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        _write_if_changed(directory / name, text)


def _modules() -> list[types.ModuleType]:
    return [importlib.import_module(name) for name in PUBLIC_MODULES]


def _generate(app: Any) -> None:
    from sphinx.errors import ExtensionError

    srcdir = pathlib.Path(app.srcdir)
    try:
        modules = _modules()
        check_documented(modules)
        pages = api_pages(modules)
    except UndocumentedNameError as e:
        raise ExtensionError(str(e)) from e
    _sync_dir(srcdir / API_DIR, {f"{k}.rst": v for k, v in pages.items()}, "*.rst")
    canonical = canonical_names([e for m in modules for e in public_names(m)])
    tables = {}
    for stem, module_name, base_name, skip in CATALOGUES:
        module = importlib.import_module(module_name)
        table = catalogue_table(module, getattr(module, base_name), skip, canonical)
        tables[f"{stem}.rst"] = table
    _sync_dir(srcdir / GENERATED_DIR, tables, "*.rst")
    notebooks = srcdir.parent / "notebooks"
    copies = {p.name: p.read_text() for p in sorted(notebooks.glob("*.ipynb"))}
    _sync_dir(srcdir / NOTEBOOKS_DIR, copies, "*.ipynb")


def _check_pages(app: Any, env: Any) -> None:
    from sphinx.errors import ExtensionError

    domain = env.get_domain("py")
    missing = missing_pages(expected_objects(_modules()), domain.objects, domain.modules)
    if missing:
        raise ExtensionError(
            "public names with no page or no Python object in the docs: " + ", ".join(missing)
        )


def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """Shows a private base class (``jaxcons._src.base.Configurable``) as its own bases."""
    expanded: list[Any] = []
    for base in bases:
        while _is_private(base) and base.__bases__ != (object,):
            base = base.__bases__[0]
        expanded.append(object if _is_private(base) else base)
    bases[:] = expanded


def _is_jaxcons(cls: type) -> bool:
    return cls.__module__ == "jaxcons" or cls.__module__.startswith("jaxcons.")


def _is_private(cls: type) -> bool:
    public = {id(e.obj) for m in _modules() for e in public_names(m)}
    return _is_jaxcons(cls) and id(cls) not in public


def _resolve_in_jaxcons(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolves a reference that is not found as written as a top-level ``jaxcons`` name.

    Docstrings write `MaxNorm` or `constrain` wherever they are; this finds
    ``jaxcons.MaxNorm`` from inside ``jaxcons.flax``, say. Targets that start with an imported
    module's name (``jaxcons.X``, ``flax.X``, ``optax.X``) are left as they are.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or target.split(".")[0] in sys.modules:
        return None  # ``flax.linen.Module`` is flax's, not ``jaxcons.flax.linen.Module``.
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], f"jaxcons.{target}", node, contnode
    )


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _generate)
    app.connect("env-check-consistency", _check_pages)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _resolve_in_jaxcons)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
