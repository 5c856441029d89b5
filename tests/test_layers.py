"""Layers point one way: nothing in shards/ imports orchestrator/ or pipelines/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "shards").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_shards_never_import_upward(path):
    upward = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        upward += [n for n in names if n.split(".")[0] in {"orchestrator", "pipelines"}]
    assert not upward, f"{path.relative_to(ROOT)} imports {upward}"
