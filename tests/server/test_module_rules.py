"""Rules about the code itself: one module speaks HTTP to engines, and no module is too long
to read in one sitting."""

from __future__ import annotations

import ast

from tests.server.gateway import REPO

MAX_LINES = 400
ENGINE_CLIENT = "server/backends/engine_client.py"
# Modules that may import httpx for something other than calling an engine, with the reason.
HTTPX_ALLOWED: dict[str, str] = {}


def imports_of(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_engine_client_speaks_http():
    """Every call to an engine goes through server/backends/engine_client.py (its key, its
    timeouts, its errors): no other gateway module imports an HTTP client."""
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "server").rglob("*.py"))
        if {"httpx", "requests", "aiohttp", "urllib3"} & imports_of(path)
        and str(path.relative_to(REPO)) not in {ENGINE_CLIENT, *HTTPX_ALLOWED}
    ]
    assert not offenders, f"only {ENGINE_CLIENT} may speak HTTP to engines: {offenders}"


def test_the_rule_sees_an_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import contextlib\nfrom httpx import AsyncClient\n")
    assert "httpx" in imports_of(module)


def test_no_module_is_over_400_lines():
    long = {
        str(path.relative_to(REPO)): n
        for package in ("server", "compress")
        for path in sorted((REPO / package).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"
