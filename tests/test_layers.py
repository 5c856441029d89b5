"""The import contract: layers point one way (pipelines -> orchestrator -> shards), and so do the subpackages.

Every ``import`` in a module counts, at module level or inside a function, and so do
``from expunge import NAME`` (resolved to the module that defines NAME) and
``importlib.import_module``/``__import__`` of a literal name. A rule names the modules it applies
to and the modules they must not import, by dotted prefix. Not caught: an attribute of a module
imported whole (``import expunge; expunge.Coordinator``) and names computed at run time.
"""

import ast
from pathlib import Path

import pytest

import expunge

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("orchestrator", "shards", "pipelines")
_O = "expunge.orchestrator"

#: The shared vocabulary at the top of orchestrator/: every part may use it; it uses no part,
#: except the pure placement rule (``training.placement``, the ``Cell`` of the catalog).
VOCABULARY = tuple(
    f"{_O}.{name}"
    for name in (
        "catalog", "cluster", "config", "config_reference", "digests", "errors", "pool", "processes",
        "receipts", "request_ids", "screening", "session", "store_purge",
    )
)  # fmt: skip
_PARTS = tuple(
    f"{_O}.{part}" for part in ("api", "training", "erasure", "evidence", "ingest", "registry", "service", "serving")
)

#: Every module of the service but its Ray seam (``service.actor``, which hosts the HTTP API);
#: an importer prefix that starts with "!" exempts those modules.
_SERVICE_BELOW_THE_SEAM = (f"{_O}.service", f"!{_O}.service.actor")

#: (importer prefixes, forbidden prefixes, allowed exceptions, why)
CONTRACT = [
    (("expunge.shards",), ("expunge.orchestrator", "expunge.pipelines"), (), "a shard sees only itself"),
    (("expunge.orchestrator",), ("expunge.pipelines",), (), "the orchestrator never imports a job recipe"),
    (
        (f"{_O}.training",),
        (f"{_O}.evidence", f"{_O}.erasure", f"{_O}.ingest", f"{_O}.service", f"{_O}.serving", f"{_O}.coordinator"),
        (),
        "training proves nothing, erases nothing and serves nothing",
    ),
    (
        (f"{_O}.serving",),
        (*[p for p in _PARTS if not p.endswith("serving")], f"{_O}.coordinator"),
        (),
        "serving reads published versions only",
    ),
    (
        (f"{_O}.registry",),
        (*[p for p in _PARTS if not p.endswith(("registry", "serving"))], f"{_O}.coordinator"),
        (),
        "the registry records what it is given",
    ),
    (
        (f"{_O}.erasure",),
        (f"{_O}.service", f"{_O}.serving", f"{_O}.coordinator"),
        (),
        "the forget path does not depend on who calls it",
    ),
    ((f"{_O}.evidence",), (f"{_O}.coordinator",), (), "evidence re-derives from the store, not through the facade"),
    (
        (f"{_O}.ingest",),
        (f"{_O}.erasure", f"{_O}.evidence", f"{_O}.service", f"{_O}.serving", f"{_O}.api", f"{_O}.coordinator"),
        (),
        "ingest adds rows; it does not erase, prove or serve",
    ),
    (VOCABULARY, (*_PARTS, f"{_O}.coordinator"), (f"{_O}.training.placement",), "the vocabulary uses no part"),
    (
        _SERVICE_BELOW_THE_SEAM,
        (f"{_O}.api",),
        (),
        "the service does not know its HTTP front door (only the Ray seam, service.actor, hosts it)",
    ),
    (
        (f"{_O}.api",),
        (f"{_O}.training", f"{_O}.erasure", f"{_O}.ingest", f"{_O}.registry", f"{_O}.serving", f"{_O}.coordinator"),
        (),
        "the HTTP API talks to the service (and evidence), never around it",
    ),
    (
        ("expunge.client",),
        ("expunge.orchestrator", "expunge.shards", "expunge.pipelines"),
        (f"{_O}.errors", "expunge.shards.errors"),
        "the light client imports no engine",
    ),
]

#: What ``from expunge import NAME`` really imports (``expunge.__getattr__`` loads it lazily).
_PUBLIC_HOMES = {name: "expunge.orchestrator.errors" for name in expunge.__all__} | expunge._HOMES


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
            elif node.module == "expunge":
                names += [("expunge", _PUBLIC_HOMES.get(alias.name, f"expunge.{alias.name}")) for alias in node.names]
            elif node.module:
                names += [(node.module, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            # importlib.import_module("x.y") and __import__("x.y") with a literal name
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in {"import_module", "__import__"} and isinstance(node.args[0].value, str):
                names.append((node.args[0].value,))
    return names


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def contract_violations(root: Path) -> list[str]:
    """Every import in ``root``'s three folders that breaks ``CONTRACT``, as "module imports name (why)"."""
    found = []
    for folder in (*FOLDERS, "expunge/client"):
        for path in sorted((root / folder).rglob("*.py")):
            module = _module_name(path, root).replace("expunge.expunge.", "expunge.")
            for importers, forbidden, allowed, why in CONTRACT:
                exempt = [i[1:] for i in importers if i.startswith("!")]
                if not any(_within(module, i) for i in importers if not i.startswith("!")) or any(
                    _within(module, e) for e in exempt
                ):
                    continue
                for candidates in _imports(path, module):
                    # ``from a import b`` is allowed when what it may be includes an allowed module.
                    if not any(_within(name, a) for name in candidates for a in allowed) and any(
                        _within(name, f) for name in candidates for f in forbidden
                    ):
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
        ("orchestrator/training/planted.py", "from expunge.orchestrator.erasure.eraser import Eraser\n"),
        ("shards/planted.py", "from expunge import Coordinator\n"),
        ("shards/planted.py", "import importlib\nimportlib.import_module('expunge.orchestrator.config')\n"),
        ("orchestrator/serving/planted.py", "__import__('expunge.orchestrator.training.trainer')\n"),
        ("orchestrator/catalog.py", "from expunge.orchestrator.coordinator import Coordinator\n"),
        ("orchestrator/session.py", "from expunge.orchestrator.training.trainer import Trainer\n"),
        ("orchestrator/service/planted.py", "from expunge.orchestrator.api.server import HttpServer\n"),
        ("orchestrator/api/planted.py", "from expunge.orchestrator.coordinator import Coordinator\n"),
        ("expunge/client/planted.py", "import expunge.orchestrator.receipts\n"),
    ],
)
def test_a_planted_back_import_breaks_the_contract(tmp_path, planted, text):
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    target = tmp_path / planted
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    (violation,) = contract_violations(tmp_path)
    assert violation.startswith(_module_name(target, tmp_path).replace("expunge.expunge.", "expunge.") + " imports ")


def test_no_two_orchestrator_modules_share_a_name_and_none_is_long():
    modules = [p for p in (ROOT / "orchestrator").rglob("*.py") if p.name != "__init__.py"]
    names = [p.stem for p in modules]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
