"""The package's import graph: no import cycle (function-local imports count), layers point one way
(errors/devices -> io -> data -> config -> nets/losses -> methods -> training -> inference -> evaluation
-> study -> report -> demo -> cli/__main__), and function-local imports only where a one-line ``# lazy:``
reason says why."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import cmedl

SRC = Path(cmedl.__file__).resolve().parent

#: rank of each top-level part of the package: a module may import only parts of the same or a lower rank
LAYERS = {
    "errors": 0, "devices": 0, "io": 1, "data": 2, "config": 3, "nets": 4, "losses": 4, "methods": 5,
    "training": 6, "inference": 7, "evaluation": 8, "study": 9, "report": 10, "demo": 11, "cli": 12, "__main__": 12,
}
#: third-party modules that may be imported inside a function (slow to import, needed by few paths)
LAZY_LIBRARIES = ("matplotlib", "torch.utils.tensorboard", "monai", "skimage", "rich")


@dataclass
class Import:
    module: str  # importing module
    target: str  # imported name (absolute)
    line: int
    local: bool  # inside a function
    reason: bool  # a "# lazy:" comment on its lines or just above


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[Import]:
    source = path.read_text()
    lines = source.splitlines()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never executed
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join(parts + ([base] if base else []))
                    names = [f"{base}.{a.name}" for a in child.names] + [base]
                # the reason: on the import's lines or on one of the two lines above (a block of imports)
                text = "".join(lines[max(child.lineno - 3, 0): child.end_lineno])
                found.extend(Import(module, n, child.lineno, local, "# lazy:" in text) for n in names)
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source), False)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _graph() -> tuple[dict[str, set[str]], list[Import]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    every: list[Import] = []
    for module, path in modules.items():
        for imp in _imports(module, path):
            every.append(imp)
            target = _resolve(imp.target, modules) if imp.target.startswith("cmedl") else None
            if target and target != module:
                # importing a.b.c runs the package __init__ of a.b first: that is an edge too
                edges[module].add(target)
    return edges, every


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else max(LAYERS.values())


def test_no_import_cycles() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {m.split(".")[1] for m in _modules() if "." in m}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_layers_point_one_way() -> None:
    edges, _ = _graph()
    upward = [f"{m} -> {t}" for m, targets in edges.items() for t in targets if _layer(t) > _layer(m)]
    assert upward == []


def test_function_local_imports_are_lazy_on_purpose() -> None:
    _, imports = _graph()
    bad = []
    for imp in imports:
        if not imp.local or imp.target.startswith("__future__"):
            continue
        if imp.target.startswith("cmedl"):
            ok = imp.module.startswith("cmedl.cli") and imp.reason  # keeps `cmedl --help` fast
        else:
            ok = imp.reason and imp.target.split(".")[0] in {lib.split(".")[0] for lib in LAZY_LIBRARIES}
        if not ok:
            bad.append(f"{imp.module}:{imp.line} {imp.target}")
    assert sorted(set(bad)) == []
