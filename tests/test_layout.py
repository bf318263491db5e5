"""The house: no import cycle among cnnlab's modules, and the folders point one way (imports inside
functions count too): config checks never need a trained thing, the model never records, the record
never runs training, a run never knows it is in a sweep."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cnnlab"


def module_name(path: Path) -> str:
    """src/cnnlab/run/train.py → 'run.train'; a package's __init__.py → the package ('run')."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "cnnlab"


def import_graph() -> dict[str, set[str]]:
    """module → the cnnlab modules it imports anywhere in its source (AST, nothing is imported)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cnnlab":
                base = node.module.partition(".")[2]
                # `from cnnlab.run import checkpoints` imports a module; `from cnnlab.run.fit import x`, a name
                named = {f"{base}.{a.name}".lstrip(".") for a in node.names} & set(files)
                deps |= named or {base}
            elif isinstance(node, ast.Import):
                deps |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("cnnlab.")}
        graph[name] = (deps & set(files)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert {"run.train", "cli", "sweep.callback", "record.store", "schema"} <= set(graph)  # it sees the folders
    assert "record.store" in graph["run.train"]
    assert "run.checkpoints" in graph["run.fit"]  # `from cnnlab.run import checkpoints` counts as the module
    assert cycles(graph) == []


# what each folder (or top-level module) may never import, whatever the import's place in the file
FORBIDDEN = {
    "config": {"run", "record", "sweep"},
    "model": {"run", "record", "sweep"},
    "data": {"run", "record", "sweep"},
    "record": {"run", "sweep"},
    "run": {"sweep"},
    "backend": {"sweep"},
    "threads": {"run", "record", "sweep"},
}


def reaching_up(graph: dict[str, set[str]]) -> list[str]:
    """'module -> imported module' for every import against the folders' direction."""
    return sorted(f"{name} -> {dep}" for name, deps in graph.items() for dep in deps
                  if dep.split(".")[0] in FORBIDDEN.get(name.split(".")[0], ()))


def test_the_direction_check_finds_an_import_that_reaches_up():
    assert reaching_up({"record.tracking": {"run.resume", "config.fields"}, "run.job": {"record.store"}}) == \
        ["record.tracking -> run.resume"]


def test_folders_point_one_way():
    """config/, model/, data/ never import run/, record/ or sweep/; record/ never run/ or sweep/; run/ never sweep/."""
    graph = import_graph()
    assert {"config.guard", "record.recorder", "run.job", "sweep.launcher", "backend"} <= set(graph)
    assert reaching_up(graph) == []
