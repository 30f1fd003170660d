"""The architecture page is in step with the tree, and the tree keeps its shape.

``docs/architecture.md`` names every module of ``supervisor/``, ``agents/`` and
``strategies/``; the structural limits (module, class and function sizes) and the absence
of import cycles are checked here, each failure listing every offender.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("supervisor", "agents", "strategies")
PAGE = ROOT / "docs" / "architecture.md"

MAX_MODULE_LINES = 800
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_OPT_OUT = re.compile(r"#\s*long:\s*\S")


def _modules() -> list[Path]:
    """Every Python module of the packages (package ``__init__`` files included)."""
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# --------------------------------------------------------------------------------------
# The page


def test_the_architecture_page_names_every_module_and_only_real_ones() -> None:
    """Each module (``__init__.py`` aside) is named on the page as its path in backticks,
    e.g. `supervisor/_hub.py`, and each path the page names exists."""
    text = PAGE.read_text()
    packages = "|".join(PACKAGES)
    named = set(re.findall(rf"`((?:{packages})/[\w/]+\.py)`", text))
    present = {_rel(p) for p in _modules() if p.name != "__init__.py"}

    missing = sorted(present - named)
    extra = sorted(named - present)

    assert not missing and not extra, (
        f"docs/architecture.md is out of step with the tree.\n"
        f"modules not named on the page (add them to their layer): {missing}\n"
        f"modules the page names that do not exist (rename or remove them): {extra}"
    )


# --------------------------------------------------------------------------------------
# Sizes


Def = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def _defs(tree: ast.AST) -> Iterator[Def]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _size_offenders() -> list[str]:
    offenders = []
    for path in _modules():
        source = path.read_text()
        lines = source.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            offenders.append(f"{_rel(path)}: module of {len(lines)} lines > {MAX_MODULE_LINES}")
        for node in _defs(ast.parse(source)):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if isinstance(node, ast.ClassDef):
                if size > MAX_CLASS_LINES:
                    offenders.append(
                        f"{_rel(path)}:{node.lineno}: class {node.name} of {size} lines "
                        f"> {MAX_CLASS_LINES}"
                    )
            elif size > MAX_FUNCTION_LINES and not LONG_OPT_OUT.search(lines[node.lineno - 1]):
                offenders.append(
                    f"{_rel(path)}:{node.lineno}: function {node.name} of {size} lines "
                    f"> {MAX_FUNCTION_LINES} (a match over a closed table may say "
                    f"'# long: <reason>' on its def line)"
                )
    return offenders


SIZE_OFFENDERS = _size_offenders()


def test_no_module_class_or_function_is_over_its_size_limit() -> None:
    """Modules <= 800 lines, classes <= 400, functions <= 80 (``# long:`` opts out)."""
    assert not SIZE_OFFENDERS, "too long:\n" + "\n".join(SIZE_OFFENDERS)


# --------------------------------------------------------------------------------------
# Import cycles


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module loads: not in functions, not under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level_imports(block)
            for handler in node.handlers:
                yield from _top_level_imports(handler.body)
        elif isinstance(node, ast.With):
            yield from _top_level_imports(node.body)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules that must load for it to load.

    Importing ``a.b.c`` loads ``a`` and ``a.b`` too, but for a module inside ``a.b`` that
    is vacuous (its package loads first in any case), so a package's ``__init__`` that
    re-exports its submodules makes no loop with them; a submodule that imports a *name*
    from its own package's ``__init__`` (``from . import thing``) does.
    """
    paths = {_module_name(p): p for p in _modules()}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` loads the module pkg.mod; `from pkg import name`, pkg
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names
                ]
            for target in targets:
                if target in paths and target != name:
                    graph[name].add(target)
                parts = target.split(".")
                for parent in (".".join(parts[:i]) for i in range(1, len(parts))):
                    if parent in paths and not name.startswith(parent + "."):
                        graph[name].add(parent)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


CYCLES = _cycles(_import_graph())


def test_the_import_graph_is_read() -> None:
    """The reader finds the imports it must (a check on the check)."""
    graph = _import_graph()

    assert "supervisor._spec" in graph["supervisor._runtime"]
    assert "agents._protocol" in graph["supervisor._notify"]
    assert "agents._protocol" in graph["agents.base"]
    assert {["a", "b"] == c for c in _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})} == {True}


def test_no_import_cycles_among_the_packages() -> None:
    """No module imports itself back through others when it loads (imports under
    ``TYPE_CHECKING`` and inside functions aside)."""
    assert not CYCLES, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in CYCLES)
