"""No import cycles between Shoal's modules: read from the source, and once in a fresh interpreter.

A cycle works only as long as every module in it happens to be imported in a lucky order, or one
import hides in a function; both break on the next refactoring (service/pools.py and
service/autoscale.py used to import each other, the second inside four functions).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import shoal

ROOT = Path(shoal.__file__).parent
# Packages held to "not even inside a function": all of Shoal (the last hidden cycle, the agent's
# command line and its main loop, went in stop 20).
NO_LOCAL_CYCLES = ("shoal",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.stmt | ast.expr) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        yield node.module
        yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, module-level and function-local imports) between Shoal's modules;
    imports under ``if TYPE_CHECKING:`` never run and do not count."""
    sources = {_module_name(path): ast.parse(path.read_text()) for path in ROOT.rglob("*.py")}
    top: dict[str, set[str]] = {}
    everywhere: dict[str, set[str]] = {}
    for name, tree in sources.items():
        top[name] = {dep for node in tree.body for dep in _imported(node) if dep in sources and dep != name}
        local = {dep for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(fn) for dep in _imported(node) if dep in sources and dep != name}
        everywhere[name] = top[name] | local
    return top, everywhere


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_another_that_imports_it_back() -> None:
    top, _ = _graphs()
    assert _cycles(top) == []


def test_no_module_hides_a_cycle_in_a_function() -> None:
    _, everywhere = _graphs()
    inside = {name: {dep for dep in deps if dep.startswith(NO_LOCAL_CYCLES)}
              for name, deps in everywhere.items() if name.startswith(NO_LOCAL_CYCLES)}
    assert _cycles(inside) == []


def test_autoscale_imports_first_in_a_fresh_interpreter() -> None:
    code = "import shoal.service.autoscale, shoal.service.pools; shoal.service.autoscale.enable; shoal.service.pools.load"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# The layers below HTTP never reach up into it (ARCHITECTURE.md: api/ translates HTTP ⇄ service).
BELOW_HTTP = ("shoal.service", "shoal.model", "shoal.scheduler", "shoal.store", "shoal.autoscale", "shoal.odata")


def test_nothing_below_http_imports_the_api_layer() -> None:
    _top, everywhere = _graphs()
    reaching_up = sorted(f"{module} → {dep}" for module, deps in everywhere.items()
                         if module.startswith(BELOW_HTTP) for dep in deps if dep.startswith("shoal.api"))
    assert reaching_up == []
