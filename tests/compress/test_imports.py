"""compress/'s import graph: recipes are data, steps import their context, nothing imports back.

The graph counts every import in a module, those inside functions and TYPE_CHECKING blocks
included, so a circle hidden behind a lazy import shows up here and not one day at run time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from .conftest import REPO

PACKAGE = REPO / "compress"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))


def compress_imports(module: str) -> set[str]:
    """The compress modules that `module` imports, anywhere in its source."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("compress.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "compress":
                found |= {a.name for a in node.names}
            elif node.module.startswith("compress."):
                found.add(node.module.split(".")[1])
    return found & set(MODULES)


GRAPH = {m: compress_imports(m) for m in MODULES}


def test_recipes_are_data():
    # Step models only: the modules that run steps (and torch) stay out of recipes.py.
    assert GRAPH["recipes"] <= {"checkpoint", "errors"}


def test_only_the_cli_imports_build():
    assert [m for m, deps in GRAPH.items() if "build" in deps] == ["cli"]


def test_steps_import_their_context_not_the_build():
    for step in ("quantize", "prune", "distill"):
        assert "context" in GRAPH[step] and "build" not in GRAPH[step], step
    assert GRAPH["context"] <= {"checkpoint", "progress"}


def test_the_schema_imports_nothing_of_compress():
    # The server imports compress.schema: it must not pull in the rest (or torch).
    assert GRAPH["schema"] == set()
    tree = ast.parse((PACKAGE / "schema.py").read_text())
    roots = {
        (n.module if isinstance(n, ast.ImportFrom) else n.names[0].name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    assert roots <= {"__future__", "typing", "pydantic"}


def test_no_import_circles():
    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        for dep in GRAPH[module]:
            visit(dep, (*path, module))

    for module in MODULES:
        visit(module, ())


@pytest.mark.parametrize("module", ["recipes", "context", "quantize", "prune", "distill", "build"])
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    # Importing a module of a circle first is what fails; each gets its own interpreter.
    code = (
        f"import json, sys; import compress.{module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('compress', 'torch')))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout))
    if module == "recipes":  # data: no torch, no step module
        assert not {m for m in loaded if m == "torch" or m.startswith("torch.")}
        assert not loaded & {f"compress.{m}" for m in ("quantize", "prune", "distill", "build")}
