"""The light install: ``from expunge import Client`` needs only httpx and pydantic, and pip pulls neither torch nor Ray.

The default run checks the imports in this venv; the slow tests build fresh venvs with pip
(which may reach the package registry) as a recommender service would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from expunge.pipelines.cli import NEEDS_SERVER

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "pyarrow", "numpy", "pandas", "mlflow", "fastapi")

#: Run in a fresh interpreter: what ``import expunge`` and the client load, as JSON.
_PROBE = f"""
import json, sys
import expunge
from expunge import AsyncClient, Client
client = Client("http://127.0.0.1:9", "token", retry_s=0)
client.close()
print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules], "client": Client.__module__}}))
"""


def _probe(python: str | Path, cwd: Path) -> dict[str, object]:
    done = subprocess.run([str(python), "-c", _PROBE], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_client_imports_none_of_the_engines_packages(tmp_path):
    assert _probe(sys.executable, tmp_path) == {"heavy": [], "client": "expunge.client._sync"}


def test_the_expunge_command_without_the_server_install_says_what_to_install():
    # A missing module of the server extra, as the light install has it (find_spec sees None in sys.modules).
    code = "import sys; sys.modules['torch'] = None; from expunge.pipelines.cli import main; main(['--help'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == NEEDS_SERVER
    assert done.stdout == ""


# ----- fresh venvs (slow: pip builds the package and may download httpx and pydantic) -------------


def _source_copy(tmp_path: Path) -> Path:
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".venv", ".git", ".build", "build", "*.egg-info", "*cache*", ".hypothesis")
    shutil.copytree(ROOT, source, ignore=skip)
    return source


def _fresh_venv(tmp_path: Path) -> Path:
    venv.create(tmp_path / "venv", with_pip=True)
    return tmp_path / "venv" / "bin" / "python"


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def _installed(python: Path) -> set[str]:
    done = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return {entry["name"].lower() for entry in json.loads(done.stdout)}


def _check_light(python: Path, tmp_path: Path) -> None:
    installed = _installed(python)
    assert {"torch", "ray", "pyarrow", "mlflow", "numpy", "pandas"} & installed == set()
    assert {"expunge", "httpx", "pydantic"} <= installed
    assert _probe(python, tmp_path) == {"heavy": [], "client": "expunge.client._sync"}
    command = python.parent / "expunge"
    if command.exists():  # the console script: one line, exit 2, no traceback
        done = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.strip().startswith("error: the expunge command needs the server install")


@pytest.mark.slow
def test_pip_install_without_extras_gives_the_client_without_torch_or_ray(tmp_path):
    python = _fresh_venv(tmp_path)
    _pip(python, str(_source_copy(tmp_path)))
    _check_light(python, tmp_path)


@pytest.mark.slow
def test_no_deps_install_with_httpx_and_pydantic_is_enough_for_the_client(tmp_path):
    python = _fresh_venv(tmp_path)
    _pip(python, "--no-deps", str(_source_copy(tmp_path)))
    _pip(python, "httpx", "pydantic")
    _check_light(python, tmp_path)
