"""The package layout, read from the source (ast), not by importing it: which module may import which.

- no import cycle between the modules of ``inversion``, ``label_restore`` and ``priors`` (imports run when a
  module loads; an import inside a function, or under ``if TYPE_CHECKING:``, runs later and cannot form one);
- ``label_restore`` and ``priors`` are leaves: they never import ``inversion`` (anywhere, even in a function);
- the library never imports the drivers (``inversion.experiments``), the command line (``inversion.cli``) or
  ``scripts``: the command line may import the drivers, the drivers anything but the command line;
- the root of ``inversion`` holds at most 4 modules (the rest lives in the folders that show the pipeline);
- ``import inversion`` loads neither matplotlib nor Flower nor the LPIPS package (nor kornia, Ray, Opacus).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from _data import REPO

PACKAGES = ("inversion", "label_restore", "priors")
LEAVES = ("label_restore", "priors")
TOP = ("inversion.cli", "inversion.experiments", "scripts")
"""The command line, the drivers and the scripts: what the library must not import."""
MAX_ROOT_MODULES = 4
HEAVY = ("matplotlib", "flwr", "lpips", "kornia", "ray", "opacus")


@dataclass(frozen=True)
class Import:
    """One imported module (the most specific existing one) of a module, and whether it runs at load time."""

    target: str
    line: int
    at_load: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    """Module name -> file, for every module of the three packages."""
    files = (path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py")))
    return {module_name(path): path for path in files}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules an import statement names: ``from a import b`` names ``a.b`` if that is a module, else ``a``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [name if name in known else base for name in names]


def imports_of(path: Path, known: set[str]) -> list[Import]:
    """Every import of a module, with ``at_load`` False for those in a function or under TYPE_CHECKING."""
    module = module_name(path)
    found: list[Import] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _imported(node, module, path.name == "__init__.py", known):
                found.append(Import(target, node.lineno, at_load))
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            at_load = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_load)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, at_load)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def import_graph() -> dict[str, list[Import]]:
    modules = source_modules()
    known = set(modules)
    return {name: imports_of(path, known) for name, path in modules.items()}


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def import_cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The strongly connected components (Tarjan) of more than one module, over the imports run at load time."""
    edges = {
        name: sorted({i.target for i in found if i.at_load and i.target in graph}) for name, found in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return cycles


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert {"inversion", "inversion.api", "inversion.cli", "label_restore.api", "priors.combine"} <= set(graph)
    targets = {i.target: i.at_load for i in graph["inversion.cli"]}
    assert targets["argparse"] is True and targets["inversion.utils.errors"] is False  # imported in run_cli
    assert "label_restore.api" in {i.target for i in graph["label_restore"]}  # a relative import, resolved
    lazy = {i.target: i.at_load for i in graph["inversion.utils.plotting"]}
    assert lazy["matplotlib.figure"] is False  # under TYPE_CHECKING and in figure()
    assert import_cycles({"a": [Import("b", 1, True)], "b": [Import("a", 1, True)], "c": []}) == [["a", "b"]]
    assert import_cycles({"a": [Import("b", 1, False)], "b": [Import("a", 1, True)]}) == []


def test_no_import_cycle():
    assert import_cycles(import_graph()) == []


def test_the_leaf_packages_never_import_inversion():
    wrong = [
        f"{name}:{i.line} imports {i.target}"
        for name, found in import_graph().items()
        if _within(name, LEAVES)
        for i in found
        if _within(i.target, ("inversion",))
    ]
    assert wrong == []


def test_the_library_never_imports_the_drivers_the_command_line_or_the_scripts():
    wrong = []
    for name, found in import_graph().items():
        if _within(name, ("inversion.cli",)):
            continue  # the command line runs the drivers
        allowed = ("inversion.experiments",) if _within(name, ("inversion.experiments",)) else ()
        wrong += [
            f"{name}:{i.line} imports {i.target}"
            for i in found
            if _within(i.target, TOP) and not _within(i.target, allowed)
        ]
    assert wrong == []


def test_the_root_of_inversion_holds_few_modules():
    root = sorted(path.name for path in (REPO / "inversion").glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"inversion/ holds {root}: move modules into the package folders"


def test_import_inversion_loads_nothing_heavy():
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, inversion; print(*[m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split() == []


def control_characters(source: str) -> list[int]:
    """Lines of the string constants in ``source`` holding a tab, form feed, backspace, bell or vertical tab: a
    ``\\theta`` or ``\\frac`` of a docstring's maths that Python read as an escape (write ``\\\\theta`` or use r)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if any(ch in node.value for ch in "\x07\x08\x0b\x0c\t")
    ]


def test_no_docstring_reads_its_maths_as_escapes():
    assert control_characters('def f():\n    """:math:`\\theta`"""\n') == [2]  # the check sees one
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for line in control_characters(path.read_text())
    ]
    assert not found, f"string constants with control characters (an unescaped \\t, \\f, ...): {found}"
