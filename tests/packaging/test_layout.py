"""The package's structure: no two modules import each other (directly or round a longer circle, at
module level or inside a function), and each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Lower layers never import higher ones. A package not named here (v1, generated) is at the bottom.
LAYERS = {
    "factpatch.v1": 0,
    "factpatch.core": 0,
    "factpatch.editor": 1,
    "factpatch.plugin": 1,
    "factpatch.fixture": 1,
    "factpatch.server": 2,
    "factpatch.harness": 3,
    "factpatch.demo": 4,
    "factpatch.cli": 5,
}


def module_files() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every factpatch module this file imports, anywhere in it (a function-level import still binds)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = module_files()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
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
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> int | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return None


def test_the_checker_finds_a_circle_of_three():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_round_a_circle():
    graph = import_graph()
    assert len(graph) > 100, "the checker should see the whole package"
    found = circles(graph)
    assert found == [], "import circles: " + "; ".join(" ↔ ".join(c) for c in found)


def test_every_package_is_placed_in_a_layer():
    unplaced = sorted({m for m in import_graph() if m != "factpatch" and layer_of(m) is None})
    assert unplaced == [], f"modules in no layer (add their package to LAYERS): {unplaced}"


def test_lower_layers_never_import_higher_ones():
    upward = []
    for module, imported in import_graph().items():
        here = layer_of(module)
        for target in imported:
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{module} (layer {here}) imports {target} (layer {there})")
    assert upward == [], "\n".join(sorted(upward))


def test_the_plugin_editor_and_fixture_do_not_import_one_another_except_through_core():
    # The plugin runs inside vLLM and must not pull in the editor; the editor may read a fixture's world.
    allowed = {("factpatch.editor", "factpatch.fixture")}
    crossing = []
    side = ("factpatch.editor", "factpatch.plugin", "factpatch.fixture")
    for module, imported in import_graph().items():
        mine = next((s for s in side if module.startswith(s + ".") or module == s), None)
        for target in imported:
            theirs = next((s for s in side if target.startswith(s + ".") or target == s), None)
            if mine and theirs and mine != theirs and (mine, theirs) not in allowed:
                crossing.append(f"{module} imports {target}")
    assert crossing == [], "\n".join(sorted(crossing))
