"""The package's layout, checked: the engine below, the catalogue and adapters above.

* no import cycle among jaxcons modules, counting imports inside functions;
* the engine (``jaxcons/_src``) imports neither the catalogue (``jaxcons.constraints``,
  ``jaxcons.regularizers``) nor an adapter; only ``jaxcons/flax`` imports ``jaxcons.flax``, and
  nothing imports ``jaxcons.keras``;
* static namespaces: literal ``__all__`` lists, every public name an explicit import or
  assignment, no ``globals().update``, and ``py.typed`` shipped;
* no engine module names a catalogue class;
* no module much over 400 lines.

The imports are read from the source with ``ast``; an import of a submodule counts as an edge to
that submodule, not to the packages above it (which Python imports first, but which are not
what the importing module depends on).
"""

from __future__ import annotations

import ast
import pathlib
import tomllib

import pytest

import jaxcons
import jaxcons.constraints
import jaxcons.flax
import jaxcons.regularizers

PACKAGE = pathlib.Path(jaxcons.__file__).resolve().parent
ROOT = PACKAGE.parent
NAMESPACES = {
    "jaxcons": jaxcons,
    "jaxcons.constraints": jaxcons.constraints,
    "jaxcons.regularizers": jaxcons.regularizers,
    "jaxcons.flax": jaxcons.flax,
}
MAX_LINES = 450  # "No module much over 400 lines."


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The jaxcons modules ``name`` imports anywhere in its source (functions included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import sub` imports the submodule where one exists.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != name}
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions():
    # The reader itself: a module known to import another one at module level.
    assert "jaxcons._src.base" in GRAPH["jaxcons._src.registry"]
    assert "jaxcons.constraints._boxes" in GRAPH["jaxcons.constraints"]


def test_no_import_cycle():
    assert _cycles() == []


def test_the_engine_imports_neither_the_catalogue_nor_an_adapter():
    engine = [m for m in MODULES if m.startswith("jaxcons._src")]
    assert len(engine) >= 15
    for module in engine:
        outside = sorted(t for t in GRAPH[module] if not t.startswith("jaxcons._src"))
        assert outside == [], f"{module} imports {outside}"


def test_only_the_flax_adapter_imports_jaxcons_flax_and_nothing_imports_keras():
    for module, targets in GRAPH.items():
        if not module.startswith("jaxcons.flax"):
            assert not any(t.startswith("jaxcons.flax") for t in targets), module
        assert "jaxcons.keras" not in targets, module


def test_the_catalogue_imports_no_adapter():
    for module, targets in GRAPH.items():
        if module.startswith(("jaxcons.constraints", "jaxcons.regularizers")):
            assert all(
                t.startswith(("jaxcons._src", "jaxcons.constraints", "jaxcons.regularizers"))
                for t in targets
            ), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_much_over_400_lines(module):
    assert len(MODULES[module].read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_calls_globals_update(module):
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            inner = node.func.value
            if isinstance(inner, ast.Call) and getattr(inner.func, "id", None) == "globals":
                pytest.fail(f"{module} calls globals().{node.func.attr}")


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_all_is_a_literal_list_of_explicitly_bound_names(namespace):
    module = NAMESPACES[namespace]
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    literal = None
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "__all__"
        ]:
            assert isinstance(node.value, ast.List), f"{namespace}.__all__ is not a list literal"
            literal = [ast.literal_eval(e) for e in node.value.elts]
        elif isinstance(node, ast.AugAssign) and getattr(node.target, "id", None) == "__all__":
            pytest.fail(f"{namespace}.__all__ is extended after its literal")
        elif isinstance(node, ast.ImportFrom | ast.Import):
            # A re-export is `import x as x` / `from m import x as x`: the form type checkers
            # take as public.
            bound |= {a.asname for a in node.names if a.asname == a.name.rpartition(".")[2]}
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
    assert literal is not None, f"{namespace} has no literal __all__"
    assert literal == list(module.__all__)
    assert len(set(literal)) == len(literal)
    missing = sorted(set(literal) - bound)
    assert missing == [], f"{namespace}: {missing} are not explicit imports or assignments"


def test_py_typed_ships_with_the_package():
    assert (PACKAGE / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["jaxcons"]


def test_the_type_check_script_touches_every_public_name():
    # `make lint` runs pyright over this script; it must name every public name.
    script = (ROOT / "tests" / "typing" / "public_names.py").read_text()
    touched = {
        (ast.unparse(n.value), n.attr)
        for n in ast.walk(ast.parse(script))
        if isinstance(n, ast.Attribute)
    }
    for namespace, module in NAMESPACES.items():
        for name in module.__all__:
            assert (namespace, name) in touched, f"{namespace}.{name}"


def _catalogue_classes() -> set[str]:
    out = set()
    for module in (jaxcons.constraints, jaxcons.regularizers):
        out |= {n for n in module.__all__ if isinstance(getattr(module, n), type)}
    return out - {"Constraint", "StatefulConstraint", "Regularizer"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("jaxcons._src")))
def test_no_engine_module_names_a_catalogue_class(module):
    # Facts about a class live on the class: the engine keeps no list of classes.
    tree = ast.parse(MODULES[module].read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert sorted(names & _catalogue_classes()) == []


def _public_classes(module, base):
    return [
        getattr(module, n)
        for n in module.__all__
        if isinstance(getattr(module, n), type)
        and issubclass(getattr(module, n), base)
        and getattr(module, n) not in (jaxcons.Constraint, jaxcons.StatefulConstraint, base)
        and n == getattr(module, n).__name__
    ]


CONSTRAINT_CLASSES = _public_classes(jaxcons.constraints, jaxcons.Constraint)
REGULARIZER_CLASSES = _public_classes(jaxcons.regularizers, jaxcons.Regularizer)
CONSTRAINT_FACTS = (
    "identifiers",
    "keras_equivalent",
    "traced_once",
    "convex",
    "elementwise_bounds",
)
REGULARIZER_FACTS = ("identifiers", "keras_equivalent", "traced_once")


def test_the_class_lists_are_complete():
    assert len(CONSTRAINT_CLASSES) >= 17 and len(REGULARIZER_CLASSES) >= 6


@pytest.mark.parametrize("cls", CONSTRAINT_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fact", CONSTRAINT_FACTS)
def test_every_constraint_class_declares_its_facts(cls, fact):
    assert fact in vars(cls), f"{cls.__name__} does not declare {fact} in its class body"


@pytest.mark.parametrize("cls", REGULARIZER_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fact", REGULARIZER_FACTS)
def test_every_regularizer_class_declares_its_facts(cls, fact):
    assert fact in vars(cls), f"{cls.__name__} does not declare {fact} in its class body"


@pytest.mark.parametrize(
    ("namespace", "cls"),
    [(jaxcons.constraints, c) for c in CONSTRAINT_CLASSES]
    + [(jaxcons.regularizers, c) for c in REGULARIZER_CLASSES],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_every_identifier_is_a_registered_name_and_the_first_a_module_alias(namespace, cls):
    assert cls.identifiers, f"{cls.__name__} declares no identifiers"
    alias = cls.identifiers[0]
    assert getattr(namespace, alias, None) is cls, f"{namespace.__name__}.{alias} = {cls.__name__}"
    assert getattr(jaxcons, alias, None) is cls, f"jaxcons.{alias} = {cls.__name__}"
    assert getattr(jaxcons, cls.__name__, None) is cls, f"jaxcons.{cls.__name__}"
    for name in (cls.__name__, *cls.identifiers):
        assert name in namespace.__all__ or name in cls.identifiers[1:]
        try:
            built = namespace.get(name)
        except ValueError as e:  # A class that needs arguments.
            assert "needs arguments" in str(e)
            continue
        assert type(built) is cls


def test_facts_are_not_inherited():
    class Louder(jaxcons.MaxNorm):
        def __call__(self, w):
            return 2 * w

    assert jaxcons.MaxNorm.traced_once and jaxcons.MaxNorm.convex
    assert Louder.traced_once is False
    assert Louder.convex is None
    assert Louder.keras_equivalent is None
    assert Louder.identifiers == ()


@pytest.mark.parametrize("cls", CONSTRAINT_CLASSES, ids=lambda c: c.__name__)
def test_traced_once_only_for_stateless_classes(cls):
    if cls.traced_once:
        assert not issubclass(cls, jaxcons.StatefulConstraint)
        assert cls.init is jaxcons.Constraint.init


def test_every_package_directory_is_a_regular_package():
    # setuptools' find_packages (pyproject.toml) ships only directories with an __init__.py.
    for directory in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir())]:
        if directory.name == "__pycache__" or not any(directory.glob("*.py")):
            continue
        assert (directory / "__init__.py").is_file(), directory
