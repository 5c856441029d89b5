"""The deployment files in infra/ agree with the code: Ray version, entrypoints, env vars, configs.

No Docker and no Kubernetes here: every file is parsed, never applied.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from expunge.orchestrator.config import JobConfig, load_job_config
from expunge.pipelines.cli import JOBS

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MANIFESTS = sorted([*INFRA.glob("kuberay/*.yaml"), INFRA / "aws" / "cluster.yaml", INFRA / "compose" / "compose.yaml"])
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DEPLOY_FILES = [*MANIFESTS, DOCKERFILE]
READMES = sorted(INFRA.glob("**/README.md"))


_PYTHON_M = re.compile(r"\bpython3?\s+-m\s+((?:expunge\.)?pipelines(?:\.\w+)+)")
_EXPUNGE_JOB = re.compile(r"(?<![\w/.-])expunge[ \t]+([a-z][a-z_-]*)[ \t]+--")
_ENV_NAME = re.compile(r"\bEXPUNGE_[A-Z_]+\b")
_CONFIG = re.compile(r"--config[ =](\S+?\.yaml)\b")
_RAY_BASE = re.compile(r"rayproject/ray:([0-9][\w.]*?)-py")
_EXPUNGE_IMAGE = re.compile(r"\bexpunge:[\w.]+-ray([0-9][\w.]*)\b")


def _pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"constraints.txt pins no {name}")


RAY_VERSION = _pinned("ray")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kuberay_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(INFRA.glob("kuberay/*.yaml")) for doc in _documents(path)]


def _pod_templates(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        yield spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield group["template"]["spec"]
    elif doc["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            yield spec["submitterPodTemplate"]["spec"]
        if "rayClusterSpec" in spec:
            yield from _pod_templates({"kind": "RayCluster", "spec": spec["rayClusterSpec"]})


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def _mounted_configs() -> dict[str, str]:
    """Every file a KubeRay pod sees from a ConfigMap: mount path / key -> text."""
    config_maps = {
        doc["metadata"]["name"]: doc.get("data", {}) for _, doc in _kuberay_docs() if doc["kind"] == "ConfigMap"
    }
    files: dict[str, str] = {}
    for _, doc in _kuberay_docs():
        for pod in _pod_templates(doc):
            volumes = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    if mount["name"] in volumes:
                        for key, text in config_maps.get(volumes[mount["name"]], {}).items():
                            files[f"{mount['mountPath'].rstrip('/')}/{key}"] = text
    return files


def _load_text(text: str) -> JobConfig:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.yaml"
        path.write_text(text)
        return load_job_config(path)


def _resolve_config(reference: str) -> JobConfig:
    """A `--config` path: a shipped config (under infra/configs/, also inside the image) or a mounted ConfigMap."""
    if "infra/configs/" in reference:
        path = ROOT / "infra" / "configs" / reference.split("infra/configs/", 1)[1]
        assert path.is_file(), f"--config {reference}: no such shipped config {path.relative_to(ROOT)}"
        return load_job_config(path)
    mounted = _mounted_configs()
    assert reference in mounted, f"--config {reference}: neither infra/configs/ nor a mounted ConfigMap holds it"
    return _load_text(mounted[reference])


# --- every deployment file against the code -----------------------------------------------------


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_document_parses(path):
    if path.suffix == ".yaml":
        assert _documents(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_ray_images_match_the_pinned_ray_version(path):
    text = path.read_text()
    versions = _RAY_BASE.findall(text) + _EXPUNGE_IMAGE.findall(text)
    assert versions, f"{path.name} names no Ray image (rayproject/ray:<v>-py... or expunge:...-ray<v>)"
    assert set(versions) == {RAY_VERSION}, (
        f"{path.name}: Ray images {versions}, constraints.txt pins ray=={RAY_VERSION}"
    )
    if path.suffix == ".yaml":
        images = re.findall(r"^\s*(?:-\s*)?image:\s*(\S+)", text, flags=re.MULTILINE)
        ray_images = [i for i in images if "minio" not in i]
        assert all(_EXPUNGE_IMAGE.search(i) for i in ray_images), f"{path.name}: {ray_images} lack the -ray<v> tag"


def test_kuberay_ray_version_matches_constraints():
    clusters = [doc for _, doc in _kuberay_docs() if doc["kind"] == "RayCluster"]
    assert clusters
    for cluster in clusters:
        assert cluster["apiVersion"] == "ray.io/v1"
        assert cluster["spec"]["rayVersion"] == RAY_VERSION


@pytest.mark.parametrize("path", [*DEPLOY_FILES, *READMES], ids=lambda p: str(p.relative_to(INFRA)))
def test_python_m_entrypoints_name_existing_modules(path):
    for module in _PYTHON_M.findall(path.read_text()):
        assert importlib.util.find_spec(module) is not None, f"{path.name}: python -m {module}: no such module"


@pytest.mark.parametrize("path", [*DEPLOY_FILES, *READMES], ids=lambda p: str(p.relative_to(INFRA)))
def test_expunge_subcommands_exist(path):
    for job in _EXPUNGE_JOB.findall(path.read_text()):
        assert job in JOBS, f"{path.name}: `expunge {job}` is not a job of expunge.pipelines.cli.JOBS"


def test_the_files_run_train_forget_and_serve():
    """The patterns above match something: the deployment files start every job they promise."""
    text = "\n".join(p.read_text() for p in DEPLOY_FILES)
    assert {"expunge.pipelines.train", "expunge.pipelines.forget"} <= set(_PYTHON_M.findall(text))
    assert "serve" in _EXPUNGE_JOB.findall(text)


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_expunge_env_vars_are_read_by_the_code(path):
    source = "\n".join(
        p.read_text() for package in ("orchestrator", "shards", "pipelines") for p in (ROOT / package).rglob("*.py")
    )
    for name in set(_ENV_NAME.findall(path.read_text())):
        assert name in source, f"{path.name} sets {name}, which no code under orchestrator/ shards/ pipelines/ reads"


@pytest.mark.parametrize("path", [*DEPLOY_FILES, *READMES], ids=lambda p: str(p.relative_to(INFRA)))
def test_every_config_referenced_exists_and_loads(path):
    for reference in _CONFIG.findall(path.read_text()):
        if path.name == "README.md" and "infra/configs/" not in reference:
            continue  # READMEs also show placeholders (FILE.yaml)
        assert isinstance(_resolve_config(reference), JobConfig)


# --- KubeRay ------------------------------------------------------------------------------------


def test_every_kuberay_container_has_token_auth():
    containers = [c for _, doc in _kuberay_docs() for pod in _pod_templates(doc) for c in pod["containers"]]
    assert len(containers) >= 3
    for container in containers:
        env = _env(container)
        assert env.get("RAY_AUTH_MODE") == "token", container["name"]
        assert "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}), f"{container['name']}: RAY_AUTH_TOKEN not from a Secret"


def test_kuberay_ray_nodes_have_the_subject_key_shm_and_head_ports():
    cluster = next(doc for _, doc in _kuberay_docs() if doc["kind"] == "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert {6379, 8265, 10001} <= {p["containerPort"] for p in head["containers"][0]["ports"]}
    for pod in _pod_templates(cluster):
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm, "a Ray pod without a memory-backed volume"
        for container in pod["containers"]:
            env = _env(container)
            assert "secretKeyRef" in env.get("EXPUNGE_SUBJECT_KEY", {}), container["name"]
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts.get(shm[0]["name"]) == "/dev/shm"


def test_kuberay_job_config_names_the_tracking_server_the_pods_use():
    cluster = next(doc for _, doc in _kuberay_docs() if doc["kind"] == "RayCluster")
    configs = [_load_text(text) for path, text in _mounted_configs().items() if path.endswith(".yaml")]
    assert configs
    for pod in _pod_templates(cluster):
        for container in pod["containers"]:
            uri = _env(container)["MLFLOW_TRACKING_URI"]
            assert all(config.tracking.uri == uri for config in configs)


# --- compose and its staging config -------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return _documents(INFRA / "compose" / "compose.yaml")[0]


def test_staging_config_points_at_the_compose_stack():
    services = _compose()["services"]
    staging = load_job_config(INFRA / "configs" / "staging.yaml")
    head_env = services["ray-head"]["environment"]
    mlflow_args = dict(a.removeprefix("--").split("=", 1) for a in services["mlflow"]["command"] if "=" in a)
    bucket = staging.storage.uri.removeprefix("s3://").split("/", 1)[0]
    assert f"stack/{bucket}" in services["create-buckets"]["command"][0], "the store's bucket is never created"
    assert (
        mlflow_args["artifacts-destination"].removeprefix("s3://").split("/")[0]
        in services["create-buckets"]["command"][0]
    )
    assert staging.tracking.uri == head_env["MLFLOW_TRACKING_URI"]
    assert staging.tracking.uri.split("//", 1)[1].split(":")[0] in services
    assert staging.tracking.backend_store_uri == mlflow_args["backend-store-uri"]
    assert head_env["MLFLOW_ARTIFACTS_DESTINATION"] == mlflow_args["artifacts-destination"]
    assert head_env["AWS_ENDPOINT_URL_S3"].split("//", 1)[1].split(":")[0] in services


def test_compose_ray_head_reads_the_variables_the_code_reads():
    services = _compose()["services"]
    head = services["ray-head"]
    for name in (
        "EXPUNGE_SUBJECT_KEY",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_URI",
        "RAY_AUTH_TOKEN",
    ):
        assert name in head["environment"], name
    assert head["environment"]["RAY_AUTH_MODE"] == "token"
    assert head["build"]["dockerfile"] == "infra/docker/Dockerfile"
    assert (INFRA / "compose" / head["build"]["context"] / head["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert head.get("shm_size"), "Ray's object store needs a sized /dev/shm"
    for name in ("EXPUNGE_SUBJECT_KEY", "RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        value = head["environment"][name]
        assert value.startswith("${"), f"{name} is written in compose.yaml"
        assert ":?" in value, f"{name} has a default: compose must refuse to start without it"


# --- Dockerfile and the cluster launcher ---------------------------------------------------------


def test_dockerfile_installs_as_the_readme_does_and_runs_as_non_root():
    # One entry per instruction: continuation lines (trailing backslash) joined, comments dropped.
    text = "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    lines = [" ".join(line.split()) for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip()]
    assert lines[0] == f"FROM rayproject/ray:{RAY_VERSION}-py311-cpu"
    installs = " ".join(line for line in lines if "pip install" in line)
    assert f"torch=={_pinned('torch')}" in installs
    assert "download.pytorch.org/whl/cpu" in installs
    assert "-c constraints.txt" in installs
    assert '".[server]"' in installs, "the image needs the engine: the base install is only the HTTP client"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    for line in lines:
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)\w*=", line), f"secret in the image: {line}"
    copied = [line.split()[-2] for line in lines if line.startswith("COPY ")]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # `pip install .` needs every folder pyproject.toml maps into the package (package-dir).
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in package_dirs.values():
        assert f"{folder}/" in copied, f"the image does not COPY {folder}/, which pyproject.toml installs"


def test_cluster_launcher_is_complete_and_authenticated():
    cluster = _documents(INFRA / "aws" / "cluster.yaml")[0]
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "file_mounts",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in cluster, key
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert cluster["provider"]["type"] == "aws"
    options = " ".join(cluster["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", options)
    assert token_path
    assert token_path.group(1) in cluster["file_mounts"]
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "EXPUNGE_SUBJECT_KEY" in " ".join(cluster[commands])
