"""One import name: the wheel holds only ``expunge``, the folders cannot be imported under their own names,
and the public API is small, complete and cheap to import."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import expunge

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("orchestrator", "shards", "pipelines")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_folder_cannot_be_imported_under_its_own_name_even_from_the_checkout(folder):
    # The checkout's root is on sys.path here (python -c from the root, as pytest's rootdir is):
    # without the guard, orchestrator.x and expunge.orchestrator.x would be two copies of one module.
    done = _python(f"import {folder}", ROOT)
    assert done.returncode != 0
    assert f"expunge.{folder}" in done.stderr
    assert "import expunge" in done.stderr


def test_no_module_is_loaded_twice_under_two_names():
    done = _python(
        "import sys, expunge.pipelines.cli, expunge.orchestrator.coordinator, expunge.orchestrator.service.core\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FOLDERS!r}))",
        ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_import_expunge_is_cheap_and_every_public_name_resolves():
    done = _python(
        "import sys, expunge\n"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'pyarrow') if m in sys.modules]\n"
        "print(heavy)",
        Path("/"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    for name in expunge.__all__:
        assert getattr(expunge, name) is not None, name
    assert expunge.Client.__module__ == "expunge.client._sync"
    assert expunge.AsyncClient.__module__ == "expunge.client._async"
    assert expunge.RayClient.__module__ == "expunge.orchestrator.client"
    assert issubclass(expunge.UnknownSubjectError, expunge.ExpungeError)
    with pytest.raises(AttributeError):
        _ = expunge.coordinator_internals


@pytest.mark.integration
def test_the_wheel_holds_only_expunge_and_every_module(tmp_path):
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".venv", ".git", ".build", "build", "*.egg-info", "*cache*", "expunge-*")
    shutil.copytree(ROOT, source, ignore=skip)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("expunge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "expunge",
        f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info",
    }
    sources = (
        {f"expunge/{p.relative_to(ROOT).as_posix()}" for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}
        | {"expunge/__init__.py", "expunge/py.typed"}
        | {p.relative_to(ROOT).as_posix() for p in (ROOT / "expunge" / "client").glob("*.py")}
    )
    assert sources - set(names) == set()


def test_a_checkout_on_the_path_runs_its_own_folders_not_the_installed_ones(tmp_path):
    # A Ray job's uploaded --working-dir, or a second clone using this venv: its expunge/ and its
    # folders go together (the editable install's finder answered first and mixed two trees).
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".build", "build", "*cache*"))
    coordinator = copy / "orchestrator" / "coordinator.py"
    coordinator.write_text(coordinator.read_text() + '\nMARKER = "the copy"\n')
    done = subprocess.run(
        [sys.executable, "-c", "import expunge.orchestrator.coordinator as c; print(c.__file__, c.MARKER)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == str(coordinator)
