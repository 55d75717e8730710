"""The package layers of docs/ARCHITECTURE.md, checked from the source with ``ast``: a module
imports only from its own layer or the layers below it, and the packages import in no cycle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gemma_worker"

#: Each top-level package or module of ``gemma_worker`` and its layer (lower = more basic).
RANKS = {
    "core": 0,
    "log_redaction": 0,
    "private_files": 0,
    "systemd": 0,
    "cluster": 1,
    "logging_setup": 1,
    "engine": 1,
    "sessions": 2,
    "settings": 2,
    "runtime": 3,
    "api": 4,
    "cli": 5,
    "__main__": 6,
    "__init__": 0,  # the version only
}

#: Wire schemas (pydantic request bodies and protocol events) that the engine must not see.
WIRE_MODULES = {"gemma_worker.core.request", "gemma_worker.core.events"}


def _imports(path: Path) -> set[str]:
    """The ``gemma_worker`` modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("gemma_worker", *path.relative_to(SRC).with_suffix("").parts[:-1]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "gemma_worker" or name.startswith("gemma_worker.")}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _name(path: Path) -> str:
    return ".".join(("gemma_worker", *path.relative_to(SRC).with_suffix("").parts))


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    tops = {_top(_name(path)) for path in _sources()}
    assert tops <= set(RANKS), f"packages without a layer: {sorted(tops - set(RANKS))}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_only(path: Path) -> None:
    own = _top(_name(path))
    upward = sorted(
        module
        for module in _imports(path)
        if _top(module) in RANKS and RANKS[_top(module)] > RANKS[own]
    )
    assert not upward, f"{own} (layer {RANKS[own]}) imports from above it: {upward}"


@pytest.mark.parametrize("path", sorted((SRC / "engine").rglob("*.py")), ids=lambda p: p.name)
def test_the_engine_sees_no_wire_schema(path: Path) -> None:
    wire = sorted(m for m in _imports(path) if any(m.startswith(w) for w in WIRE_MODULES))
    assert not wire, f"the engine imports wire schemas: {wire}"


def _package_of(module: str) -> str:
    """The package (as a path under ``gemma_worker``) a module name lives in."""
    parts = module.split(".")[1:]
    while parts and not (SRC / Path(*parts)).is_dir():
        parts.pop()
    return ".".join(parts) or "gemma_worker"


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def test_packages_import_in_no_cycle() -> None:
    """Between packages that are not inside one another (``api`` may import ``api.openai``
    and the reverse: the parent is the app that mounts its parts)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in _sources():
        source = ".".join(path.relative_to(SRC).parts[:-1]) or "gemma_worker"
        for module in _imports(path):
            target = _package_of(module)
            if not _nested(source, target) and target != "gemma_worker":
                graph[source].add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt]
                raise AssertionError(f"import cycle between packages: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
