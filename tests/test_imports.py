"""Imports run downward only: adamlab's internal import graph is acyclic and layered.

The graph is read from the source with `ast` (nothing is imported), counting imports at module
level and inside functions alike: a function-level import that closes a cycle or climbs a layer
is the same design debt, only deferred to run time.

Layers, bottom to top: `adamlab.switches` (the environment switches; only `os`) under all, and
`adamlab.runtime` (the process settings; the standard library) on it, beside the packages;
`adamlab.optim` (jax and optax only) and `adamlab.data` (TFDS) stand alone on switches;
`adamlab.diagnostics` builds on optim only; `adamlab.training` builds on them and
`adamlab.models`; `adamlab.experiments` on training; `adamlab.cli` owns the command line and
only `adamlab.__main__` imports it.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "adamlab"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """adamlab modules that `path` imports anywhere in its body (relative imports resolved;
    `from adamlab.x import y` counts as `adamlab.x.y` when y is a module, else `adamlab.x`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import adamlab.a.b` names adamlab.a.b; keep the longest known prefix.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("adamlab") and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(path, set(known)) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle [a, b, ..., a] of the graph, or None (iterative depth-first search)."""
    state = dict.fromkeys(graph, 0)  # 0 unvisited, 1 on the stack, 2 done.
    for root in sorted(graph):
        if state[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(child) :], child]
            elif state.get(child) == 0:
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read_from_every_module(graph):
    assert {"adamlab.cli", "adamlab.optim.alias", "adamlab.training.train"} <= set(graph)
    # Module-level, function-level and `from package import module` imports all count.
    assert "adamlab.training.train" in graph["adamlab.experiments.groups"]
    assert "adamlab.training.train" in graph["adamlab.cli"]  # Imported inside _run_train.
    assert "adamlab.cli" in graph["adamlab.__main__"]


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_are_acyclic(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _violations(graph, source: str, allowed) -> list[str]:
    return sorted(
        f"{importer} imports {target}"
        for importer, targets in graph.items()
        if in_package(importer, source)
        for target in targets
        if not allowed(target)
    )


BASE = ("adamlab", "adamlab.switches")  # The package itself and the environment switches.


def test_switches_import_nothing_from_adamlab(graph):
    assert graph["adamlab.switches"] == set()


def test_runtime_imports_only_the_switches(graph):
    assert graph["adamlab.runtime"] == {"adamlab.switches"}


def test_optim_imports_nothing_else_from_adamlab(graph):
    outside = _violations(
        graph, "adamlab.optim", lambda t: in_package(t, "adamlab.optim") or t in BASE
    )
    assert outside == []


def test_data_imports_only_data(graph):
    outside = _violations(
        graph, "adamlab.data", lambda t: in_package(t, "adamlab.data") or t in BASE
    )
    assert outside == []


def test_diagnostics_imports_only_optim(graph):
    """The training step calls into diagnostics, so diagnostics never reaches back up."""
    allowed = lambda t: in_package(t, "adamlab.diagnostics") or in_package(t, "adamlab.optim")
    assert _violations(graph, "adamlab.diagnostics", lambda t: allowed(t) or t in BASE) == []


def test_training_never_imports_experiments_or_the_cli(graph):
    upward = _violations(
        graph,
        "adamlab.training",
        lambda t: not (in_package(t, "adamlab.experiments") or in_package(t, "adamlab.cli")),
    )
    assert upward == []


def test_only_main_imports_the_cli(graph):
    importers = sorted(m for m, targets in graph.items() if "adamlab.cli" in targets)
    assert importers == ["adamlab.__main__"]
