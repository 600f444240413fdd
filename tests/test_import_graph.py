"""The import graph of retouch's parts (tools/import_graph.py): no cycle, no upward edge, every part placed."""

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "import_graph.py"


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_retouch_imports_run_one_way_without_a_cycle(graph):
    edges = graph.part_edges()
    assert {"world", "data", "networks", "methods", "train", "cli", "app"} <= set(edges)
    assert graph.problems(edges) == []


def test_the_check_sees_a_cycle_an_upward_lazy_import_and_an_unplaced_part(graph, tmp_path):
    package = tmp_path / "retouch"
    for name, text in {
        "__init__.py": "",
        "sampling.py": "from retouch import errors\n",
        "errors.py": "import retouch.sampling\n",  # a cycle through a plain import
        "world/__init__.py": "def f():\n    from retouch.train import loop\n",  # upward, inside a function
        "train/__init__.py": "",
        "train/loop.py": "from retouch.world import f\n",
        "extra.py": "",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    edges = graph.part_edges(package)
    assert edges["world"] == {"train"} and edges["train"] == {"world"}
    assert graph.cycles(edges) == [["errors", "sampling"], ["train", "world"]]
    found = graph.problems(edges)
    assert "upward: errors (base) → sampling (core)" in found and "upward: world (world) → train (train)" in found
    assert any(line.startswith("unplaced part: extra") for line in found)
