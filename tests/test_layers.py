"""The import contract: layers point one way (pipelines -> orchestrator -> shards), and so do the subpackages.

Every ``import`` in a module counts, at module level or inside a function. A rule names the
modules it applies to and the modules they must not import, by dotted prefix.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("orchestrator", "shards", "pipelines")
_O = "expunge.orchestrator"

#: (importer prefix, forbidden prefixes, why)
CONTRACT = [
    ("expunge.shards", ("expunge.orchestrator", "expunge.pipelines"), "a shard sees only itself"),
    ("expunge.orchestrator", ("expunge.pipelines",), "the orchestrator never imports a job recipe"),
    (
        f"{_O}.training",
        (f"{_O}.evidence", f"{_O}.service", f"{_O}.serving", f"{_O}.coordinator"),
        "training proves nothing and serves nothing",
    ),
    (
        f"{_O}.serving",
        (f"{_O}.training", f"{_O}.erasure", f"{_O}.evidence", f"{_O}.service", f"{_O}.registry", f"{_O}.coordinator"),
        "serving reads published versions only",
    ),
    (
        f"{_O}.registry",
        (f"{_O}.training", f"{_O}.erasure", f"{_O}.evidence", f"{_O}.service", f"{_O}.coordinator"),
        "the registry records what it is given",
    ),
    (
        f"{_O}.erasure",
        (f"{_O}.service", f"{_O}.serving", f"{_O}.coordinator"),
        "the forget path does not depend on who calls it",
    ),
    (f"{_O}.evidence", (f"{_O}.coordinator",), "evidence re-derives from the store, not through the facade"),
]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["expunge", *parts])


def _imports(path: Path, module: str) -> list[tuple[str, ...]]:
    """Per imported name, what it may be: ``from a import b`` is module ``a`` or module ``a.b``."""
    names: list[tuple[str, ...]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [(alias.name,) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                if path.name == "__init__.py" and node.level > 1:
                    package = package[: -(node.level - 1)]
                base = ".".join(package)
                source = f"{base}.{node.module}" if node.module else base
                names += [(source, f"{source}.{alias.name}") for alias in node.names]
            elif node.module:
                names += [(node.module, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def contract_violations(root: Path) -> list[str]:
    """Every import in ``root``'s three folders that breaks ``CONTRACT``, as "module imports name (why)"."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            module = _module_name(path, root)
            for importer, forbidden, why in CONTRACT:
                if not _within(module, importer):
                    continue
                for candidates in _imports(path, module):
                    if any(_within(name, f) for name in candidates for f in forbidden):
                        found.append(f"{module} imports {candidates[-1]} ({why})")
    return sorted(set(found))


def test_the_code_keeps_the_import_contract():
    assert contract_violations(ROOT) == []


@pytest.mark.parametrize(
    ("planted", "text"),
    [
        ("shards/planted.py", "from expunge.orchestrator.config import JobConfig\n"),
        ("orchestrator/training/planted.py", "def f():\n    from expunge.orchestrator.evidence import verify\n"),
        ("orchestrator/service/planted.py", "import expunge.pipelines.cli\n"),
        ("orchestrator/serving/planted.py", "from ..training import trainer\n"),
    ],
)
def test_a_planted_back_import_breaks_the_contract(tmp_path, planted, text):
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    target = tmp_path / planted
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    (violation,) = contract_violations(tmp_path)
    assert violation.startswith(_module_name(target, tmp_path) + " imports ")


def test_no_two_orchestrator_modules_share_a_name_and_none_is_long():
    modules = [p for p in (ROOT / "orchestrator").rglob("*.py") if p.name != "__init__.py"]
    names = [p.stem for p in modules]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
