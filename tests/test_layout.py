"""
The package's shape (issue 12): no import circle between the gateway's
modules, counting imports made inside functions and under C{TYPE_CHECKING}
as well, since a lazy import back into a module is a circle all the same;
and modules and functions small enough to read (about 600 lines a module,
80 a function outside the demo game, 400 for the service's root).
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

MODULE_LINES = 650
"""About 600 lines: the most a module of the package may have."""

FUNCTION_LINES = 80
"""The most a function or method may have, outside the demo game."""

SERVICE_LINES = 400
"""The most the service's root (gateway/process/service.py) may have."""

PACKAGE = Path(gateway.__file__).parent


def _modules() -> dict[str, Path]:
    """
    Every module of the package, by dotted name.
    """
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """
    Which of the package's modules each module imports, anywhere in its text.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The strongly connected groups of more than one module (Tarjan's
    algorithm, iterative): each is an import circle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_circles_are_found() -> None:
    """
    The check itself finds a circle, however long, and nothing else.
    """
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    """
    No module of the gateway imports, directly or through others, a module
    that imports it.
    """
    graph = import_graph()
    assert "gateway.process.service" in graph  # the walk saw the package
    assert circles(graph) == []


def test_modules_are_small() -> None:
    """
    No module is over L{MODULE_LINES} lines, and the service's root is
    under L{SERVICE_LINES}.
    """
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: size for name, size in sizes.items() if size > MODULE_LINES} == {}
    assert sizes["gateway.process.service"] <= SERVICE_LINES


def test_functions_are_short() -> None:
    """
    No function or method is over L{FUNCTION_LINES} lines, outside the
    demo game (whose lobby is one readable state machine).
    """
    long = []
    for name, path in _modules().items():
        if name.startswith("gateway.demo"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                if node.end_lineno - node.lineno + 1 > FUNCTION_LINES:
                    long.append(f"{name}.{node.name}")
    assert long == []
