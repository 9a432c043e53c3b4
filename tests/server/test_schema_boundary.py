"""The gateway imports compress.schema (the card and progress-line models) and
compress.vllm_command (how a vLLM server is started; standard library only) and nothing else of
compress/: no torch, no llm-compressor, nothing that could change under the gateway's feet."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.server.gateway import REPO


def test_the_gateway_loads_only_the_schema_of_compress():
    code = (
        "import json, sys; import server.app, server.cli; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('compress', 'torch', 'transformers', 'llmcompressor'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == ["compress", "compress.schema", "compress.vllm_command"]


def test_the_vllm_command_module_needs_only_the_standard_library():
    source = (REPO / "compress" / "vllm_command.py").read_text()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported <= sys.stdlib_module_names | {"__future__"}, imported
