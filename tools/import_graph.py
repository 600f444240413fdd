"""The import graph between retouch's parts, read with ``ast`` (nothing is imported or run).

A *part* is a subpackage (``retouch.world``, ``retouch.methods``, …) or a top-level module
(``retouch.sampling``, …); every ``import`` counts, also one inside a function (a lazy import is a
dependency all the same). The parts sit in layers, lowest first::

    base → core → world → data → networks → methods → train → interfaces (cli, app, batch, …)

An edge may point within its layer or down, never up; and the parts' graph has no cycle. Edges inside
one part (a package and its own modules) are not counted: a registry such as ``retouch.methods``
importing its method modules, which import ``register`` from it, is one part.

    python tools/import_graph.py            # the layered graph; exit 1 on a cycle, an upward edge or an unplaced part
    python tools/import_graph.py --dot      # the parts' graph in Graphviz's language
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "retouch"

#: Lowest first. A part not named here is an error, so a new module must be placed.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("retouch", "errors", "options", "_quiet", "progress", "distributed", "imageio", "tokenizer",
              "edit_text")),
    ("core", ("sampling", "guidance", "guided_pass", "attention", "inversion", "edit_maps", "backbone", "families",
              "memory", "effects", "metrics", "terminal_prior")),
    ("world", ("world",)),
    ("data", ("data",)),
    ("networks", ("networks",)),
    ("methods", ("methods", "directions", "captioning", "recipes")),
    ("train", ("train", "bench")),
    ("interfaces", ("batch", "demo", "about", "app", "cli")),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package: Path = PACKAGE) -> set[str]:
    """The ``retouch`` modules ``path`` imports anywhere in it (``from a import b`` names ``a.b`` when that is a
    module)."""
    name = module_name(path, package)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}", package))
    return {module for module in found if module == "retouch" or module.startswith("retouch.")}


def _is_module(name: str, package: Path) -> bool:
    path = package.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def part_of(module: str) -> str:
    """``retouch.methods.pixels`` → ``methods``; ``retouch.sampling`` → ``sampling``; ``retouch`` → ``retouch``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def part_edges(package: Path = PACKAGE) -> dict[str, set[str]]:
    """part → the other parts it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted(package.rglob("*.py")):
        source = part_of(module_name(path, package))
        edges[source]  # every part is a node, also one that imports nothing
        for module in imported_modules(path, package):
            if part_of(module) != source:
                edges[source].add(part_of(module))
    return dict(edges)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer_of(part: str) -> int | None:
    for level, (_, members) in enumerate(LAYERS):
        if part in members:
            return level
    return None


def problems(edges: dict[str, set[str]]) -> list[str]:
    """Cycles, upward edges and parts no layer names; empty when the graph is as it should be."""
    found = [f"cycle: {' ↔ '.join(component)}" for component in cycles(edges)]
    found += [f"unplaced part: {part} (add it to a layer in tools/import_graph.py)"
              for part in sorted(edges) if layer_of(part) is None]
    for source in sorted(edges):
        for target in sorted(edges[source]):
            low, high = layer_of(source), layer_of(target)
            if low is not None and high is not None and high > low:
                found.append(f"upward: {source} ({LAYERS[low][0]}) → {target} ({LAYERS[high][0]})")
    return found


def describe(edges: dict[str, set[str]]) -> str:
    lines = []
    for level, (layer, members) in reversed(list(enumerate(LAYERS))):
        lines.append(f"{layer}:")
        for part in members:
            if part in edges:
                targets = sorted(edges[part], key=lambda t: (-(layer_of(t) or 0), t))
                lines.append(f"  {part} → {', '.join(targets) if targets else '(nothing)'}")
    return "\n".join(lines)


def dot(edges: dict[str, set[str]]) -> str:
    lines = ["digraph retouch {", "  rankdir=BT;"]
    for level, (layer, members) in enumerate(LAYERS):
        present = [m for m in members if m in edges]
        nodes = " ".join(f'"{m}";' for m in present)
        lines.append(f'  subgraph cluster_{layer} {{ label="{layer}"; {nodes} }}')
    lines += [f'  "{source}" -> "{target}";' for source in sorted(edges) for target in sorted(edges[source])]
    return "\n".join(lines + ["}"])


def main(argv: list[str]) -> int:
    edges = part_edges()
    if "--dot" in argv:
        print(dot(edges))
        return 0
    print(describe(edges))
    found = problems(edges)
    print("\n".join(found) if found else "no cycle, no upward edge")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
