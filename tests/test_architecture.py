"""The tree's shape: no import circle, imports flow one way, and docs/architecture.md's map is the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("common", "server", "client", "simulations")
#: common's layers, lowest first: a module may import its own layer and the ones below, never above
LAYERS = (("common.config", "common.errors", "common.io"), ("common.data",), ("common.model",), ("common.privacy",),
          ("common.federation",), ("common.evaluation",))


def _modules() -> dict[str, Path]:
    out = {}
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or inside a function (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found.update(n for n in names if n.split(".")[0] in TOP)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        # `from common.data import loader` names a module; `from common.data.loader import x` names its module
        graph[name] = {d for d in _imports(path) if d in mods and d != name}
    return graph


def _layer(module: str) -> int | None:
    for i, group in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in group):
            return i
    return None


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_imports_flow_one_way():
    wrong = []
    for m, deps in _graph().items():
        for d in deps:
            top_m, top_d = m.split(".")[0], d.split(".")[0]
            if top_m == "common" and top_d != "common":
                wrong.append(f"{m} -> {d} (common imports neither server, client nor simulations)")
            elif {top_m, top_d} == {"server", "client"}:
                wrong.append(f"{m} -> {d} (server and client never import each other)")
            elif top_m == "common" and _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m):
                wrong.append(f"{m} -> {d} (a lower layer of common imports a higher one)")
    assert wrong == []


def test_every_package_says_what_it_holds():
    for name, path in _modules().items():
        if path.name == "__init__.py" and name.count(".") >= 1:
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc, f"{path.relative_to(ROOT)} has no docstring saying what the package holds"


def _map_entries() -> set[str]:
    """Module files named in docs/architecture.md's map: lines `dir/  file.py (what) file.py (what) ...`."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Map", 1)[1].split("```", 2)[1]
    entries, current = set(), None
    for line in block.splitlines():
        head = re.match(r"^([a-z_/]+/)\s", line + " ")
        if head and not line.startswith(" "):
            current = head.group(1)
        for f in re.findall(r"\b([a-z_0-9]+\.py)\b", line):
            entries.add(current + f)
    return entries


def test_the_map_in_architecture_md_is_the_tree():
    tree = {str(p.relative_to(ROOT)) for p in _modules().values() if p.name != "__init__.py"}
    mapped = _map_entries()
    assert sorted(tree - mapped) == [], "modules missing from docs/architecture.md's map"
    assert sorted(mapped - tree) == [], "the map names modules that do not exist"
