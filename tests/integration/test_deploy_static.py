"""Static checks of deploy/: YAML, Kubernetes schemas, checkov, and our own hardening rules.

No Docker engine or cluster is needed. kubernetes-validate (bundled JSON schemas, offline) and
checkov run from their own virtual environment, created on first use from
deploy/requirements-lint.txt, because checkov's pins (packaging, networkx) clash with the
project's environment. CDE_DEPLOY_VENV overrides its location (default .venv-deploy).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
LINT_REQUIREMENTS = DEPLOY / "requirements-lint.txt"
DEPLOY_VENV = Path(os.environ.get("CDE_DEPLOY_VENV", REPO / ".venv-deploy"))
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # oldest and newest we target (gRPC probes: 1.27+)
NAMESPACE = "cde-serve"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod"}
MONITORING_NAMESPACE = "monitoring"

# CDE_* names the manifests may use before the gateway's settings have them (none now).
AWAITED_SETTINGS: set[str] = set()
SETTINGS_MODULES = ("gateway/settings.py", "triton/settings.py")


# --- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object and the file it came from."""

    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.path.name})"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_manifests() -> list[Manifest]:
    return [
        Manifest(path, doc)
        for path in k8s_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def workloads() -> list[Manifest]:
    return [m for m in load_manifests() if m.kind in WORKLOAD_KINDS]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload.body["spec"]
    return spec if workload.kind == "Pod" else spec["template"]["spec"]


def pod_labels(workload: Manifest) -> dict[str, str]:
    if workload.kind == "Pod":
        return dict(workload.body["metadata"].get("labels", {}))
    return dict(workload.body["spec"]["template"]["metadata"].get("labels", {}))


def containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, container) for init and app containers of a pod spec."""
    for key in ("initContainers", "containers"):
        for container in spec.get(key, []):
            yield key, container


def find(kind: str, name: str) -> Manifest:
    matches = [m for m in load_manifests() if m.kind == kind and m.name == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """matchLabels semantics (matchExpressions are not used in deploy/)."""
    assert "matchExpressions" not in selector, "extend selects() for matchExpressions"
    match = selector.get("matchLabels", selector)
    return all(labels.get(k) == v for k, v in match.items())


# --- the lint tools' virtual environment -----------------------------------------------------


@pytest.fixture(scope="session")
def lint_bin() -> Path:
    """bin/ of the venv holding checkov and kubernetes-validate (created or updated here)."""
    wanted = hashlib.sha256(LINT_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = DEPLOY_VENV / ".requirements-sha256"
    if not (stamp.is_file() and stamp.read_text().strip() == wanted):
        if not (DEPLOY_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(DEPLOY_VENV)], check=True)
        subprocess.run(
            [str(DEPLOY_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", "-r", str(LINT_REQUIREMENTS)],
            check=True,
            timeout=600,
        )  # fmt: skip
        stamp.write_text(wanted + "\n")
    return DEPLOY_VENV / "bin"


def run_tool(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", PYTHONWARNINGS="ignore")
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- syntax and schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in documents)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in k8s_files()]
    assert kustomization["namespace"] == NAMESPACE
    for manifest in load_manifests():
        if manifest.kind != "Namespace":
            assert manifest.body["metadata"].get("namespace") == NAMESPACE, str(manifest)
    images = {i["name"]: i["newTag"] for i in kustomization["images"]}
    for workload in workloads():
        for _, container in containers(pod_spec(workload)):
            name, _, tag = container["image"].rpartition(":")
            if name in images:
                assert tag == images[name], f"{workload}: tag differs from kustomization"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_kubernetes_schema(lint_bin: Path, version: str) -> None:
    files = [str(p) for p in k8s_files()]
    result = run_tool(
        [str(lint_bin / "kubernetes-validate"), "--strict", "--quiet", "-k", version, *files]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_reports_no_failed_check(lint_bin: Path) -> None:
    result = run_tool(
        [str(lint_bin / "checkov"), "-d", "deploy", "--compact", "--quiet", "--skip-download"]
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Failed checks: 0" in report, report  # it did scan (kubernetes, dockerfile)
    assert not re.search(r"Failed checks: [1-9]", report), report


def test_checkov_skips_carry_reasons() -> None:
    for manifest in load_manifests():
        for key, value in manifest.body["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = str(value).partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), f"{manifest}: {value}"
                assert len(reason.strip()) > 20, f"{manifest}: skip of {check} lacks a reason"
    for dockerfile in DEPLOY.glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if "checkov:skip=" in line:
                assert re.search(r"checkov:skip=CKV2?_DOCKER_\d+:.{20,}", line), line


# --- hardening rules (our own, independent of checkov's catalogue) ---------------------------


@pytest.mark.parametrize("workload", workloads(), ids=str)
def test_workload_is_hardened(workload: Manifest) -> None:
    spec = pod_spec(workload)
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key), f"{workload}: {key}"
    assert spec.get("automountServiceAccountToken") is False, f"{workload}: token automount"
    assert spec.get("serviceAccountName") == "cde-serve", workload
    pod_security = spec.get("securityContext", {})
    assert pod_security.get("runAsNonRoot") is True, workload
    assert pod_security.get("runAsUser", 0) >= 10000, f"{workload}: low UID"
    assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload
    for volume in spec.get("volumes", []):
        assert "hostPath" not in volume, f"{workload}: hostPath volume {volume['name']}"

    for key, container in containers(spec):
        where = f"{workload} container {container['name']}"
        security = container.get("securityContext", {})
        assert security.get("privileged") is not True, f"{where}: privileged"
        assert security.get("allowPrivilegeEscalation") is False, where
        assert security.get("readOnlyRootFilesystem") is True, where
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
        capabilities = security.get("capabilities", {})
        assert capabilities.get("drop") == ["ALL"], f"{where}: capabilities not dropped"
        assert not capabilities.get("add"), f"{where}: adds capabilities"
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(bound, {}), f"{where}: no {bound}.{resource}"
        if key == "containers":
            assert "livenessProbe" in container, f"{where}: no livenessProbe"
            assert "readinessProbe" in container, f"{where}: no readinessProbe"
        image = container["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", image), image
        assert not image.endswith(":latest"), f"{where}: floating tag"


def test_gateway_probes_grpc_health_and_mounts_tls() -> None:
    deployment = find("Deployment", "cde-gateway")
    spec = pod_spec(deployment)
    (gateway,) = spec["containers"]
    env = env_of(gateway)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["grpc"] == int(env["CDE_PORT"]) == 50051
    assert ports["health"] == int(env["CDE_HEALTH_PORT"])
    assert ports["metrics"] == int(env["CDE_METRICS_PORT"]) == 9464
    assert env["CDE_HOST"] == "0.0.0.0"  # the settings default (127.0.0.1) is unreachable
    for probe in ("startupProbe", "readinessProbe"):
        assert gateway[probe]["grpc"]["port"] == ports["health"], probe
    # Liveness must not fail while Triton/Redis are down (health NOT_SERVING): TCP only.
    assert gateway["livenessProbe"]["tcpSocket"]["port"] in ("grpc", ports["grpc"])

    volumes = {v["name"]: v for v in spec["volumes"]}
    tls_mounts = [
        m for m in gateway["volumeMounts"]
        if volumes[m["name"]].get("secret", {}).get("secretName") == "cde-gateway-tls"
    ]  # fmt: skip
    assert len(tls_mounts) == 1 and tls_mounts[0].get("readOnly") is True
    mount = tls_mounts[0]["mountPath"]
    assert env["CDE_TLS_CERT"] == f"{mount}/tls.crt"
    assert env["CDE_TLS_KEY"] == f"{mount}/tls.key"
    assert env["CDE_STORE"].startswith("redis://cde-redis:6379/")
    assert env["CDE_TRITON_URL"] == "cde-triton:8001"


def test_triton_requests_a_gpu_and_probes_http_health() -> None:
    spec = pod_spec(find("Deployment", "cde-triton"))
    (triton,) = spec["containers"]
    resources = triton["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] >= 1
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_scraped_pods_expose_their_metrics_port() -> None:
    scraped = set()
    for workload in workloads():
        annotations = workload.body["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            scraped.add(workload.name)
            ports = {
                p["containerPort"]
                for _, c in containers(pod_spec(workload))
                for p in c.get("ports", [])
            }
            assert int(annotations["prometheus.io/port"]) in ports, str(workload)
            assert annotations["prometheus.io/path"] == "/metrics"
    assert scraped >= {"cde-gateway", "cde-triton"}


def test_selectors_match_workloads() -> None:
    labels = {w.name: pod_labels(w) for w in workloads()}
    for manifest in load_manifests():
        spec = manifest.body.get("spec", {})
        selector = None
        if manifest.kind in ("Service", "PodDisruptionBudget"):
            selector = spec["selector"]
        elif manifest.kind in WORKLOAD_KINDS and manifest.kind != "Pod":
            assert selects(spec["selector"], pod_labels(manifest)), str(manifest)
        if selector is not None:
            assert any(selects(selector, lbl) for lbl in labels.values()), str(manifest)
        if manifest.kind == "HorizontalPodAutoscaler":
            target = spec["scaleTargetRef"]
            assert target["name"] in labels and target["kind"] == "Deployment", str(manifest)
            assert "replicas" not in find("Deployment", target["name"]).body["spec"]
            assert manifest.body["apiVersion"] == "autoscaling/v2"


def test_network_policies_deny_by_default_and_fence_backends() -> None:
    policies = [m for m in load_manifests() if m.kind == "NetworkPolicy"]
    default_deny = [
        p for p in policies
        if p.body["spec"]["podSelector"] == {} and not p.body["spec"].get("ingress")
        and "Ingress" in p.body["spec"]["policyTypes"]
    ]  # fmt: skip
    assert default_deny, "no default-deny ingress policy"
    gateway_labels = pod_labels(find("Deployment", "cde-gateway"))
    for workload in workloads():
        own = [p for p in policies if selects(p.body["spec"]["podSelector"], pod_labels(workload))]
        specific = [p for p in own if p.body["spec"]["podSelector"] != {}]
        assert specific, f"{workload}: no NetworkPolicy of its own"
        if workload.name == "cde-gateway":
            continue
        for policy in specific:  # backends: only gateways, or the monitoring namespace
            for rule in policy.body["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy}: a rule open to every source"
                for peer in rule["from"]:
                    if "podSelector" in peer:
                        assert selects(peer["podSelector"], gateway_labels), str(policy)
                    else:
                        names = peer["namespaceSelector"]["matchLabels"]
                        assert names == {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}


# --- docker-compose and Dockerfiles ----------------------------------------------------------


def test_compose_runs_the_stack_with_health_checks_and_a_gpu() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"gateway", "triton", "redis"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
    triton = services["triton"]
    assert triton["shm_size"], "python backend needs a large /dev/shm"
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    redis_command = services["redis"]["command"]
    assert "--appendonly" in redis_command and "redis-data:/data" in services["redis"]["volumes"]
    assert "redis-data" in compose["volumes"]
    gateway = services["gateway"]
    assert gateway["environment"]["CDE_TRITON_URL"] == "triton:8001"
    assert gateway["environment"]["CDE_STORE"].startswith("redis://redis:6379/")
    assert all(d["condition"] == "service_healthy" for d in gateway["depends_on"].values())
    for name in ("gateway", "triton"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(p[0].upper(), p[1] if len(p) > 1 else "") for p in pairs]


@pytest.mark.parametrize("name", ["gateway", "triton"])
def test_dockerfile_is_pinned_non_root_and_health_checked(name: str) -> None:
    dockerfile = DEPLOY / f"{name}.Dockerfile"
    instructions = dockerfile_instructions(dockerfile)
    for instruction, args in instructions:
        if instruction == "FROM":
            image = args.split()[0]
            assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), image
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must end as non-root"
    assert any(i == "HEALTHCHECK" for i, _ in instructions)
    # Everything COPY takes from the build context exists and passes its .dockerignore.
    ignore = (DEPLOY / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    for instruction, args in instructions:
        if instruction == "COPY" and "--from=" not in args:
            *sources, _ = [a for a in args.split() if not a.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: missing"
                assert f"!{source.rstrip('/')}" in ignore, f"{source} excluded by .dockerignore"


def test_images_follow_the_pyproject_pins() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_pin = re.search(r'"(torch==[^"]+)"', pyproject)
    pytriton_pin = re.search(r'"nvidia-pytriton==([^"]+)"', pyproject)
    assert torch_pin and pytriton_pin
    triton_text = (DEPLOY / "triton.Dockerfile").read_text()
    assert f'ARG TORCH_REQUIREMENT="{torch_pin.group(1)}"' in triton_text
    gateway_text = (DEPLOY / "gateway.Dockerfile").read_text()
    assert "ARG PROJECT_EXTRAS=gateway" in gateway_text and "TORCH_" not in gateway_text
    # nvidia-pytriton 0.7.0 bundles Triton 2.51 = NGC 24.10: its 3.11 stub replaces NGC's.
    ngc_release = {"0.7.0": "24.10"}[pytriton_pin.group(1)]
    triton_dockerfile = (DEPLOY / "triton.Dockerfile").read_text()
    assert f"FROM nvcr.io/nvidia/tritonserver:{ngc_release}-py3" in triton_dockerfile


def test_pytriton_wheel_has_the_files_the_triton_image_uses() -> None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        pytest.fail("nvidia-pytriton is not installed (pip install -e '.[server]')")
    package = Path(spec.origin).parent
    stub = package / "tritonserver" / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    assert stub.is_file(), stub
    assert (package.parent / "nvidia_pytriton.libs").is_dir()
    assert (
        "python_backend_stubs/3.11/triton_python_backend_stub"
        in (DEPLOY / "triton.Dockerfile").read_text()
    )


# --- names shared with the code --------------------------------------------------------------


def has_cde_prefix(cls: ast.ClassDef) -> bool:
    """Whether the class body sets env_prefix="CDE_" (in its model_config)."""
    return any(
        isinstance(node, ast.keyword) and node.arg == "env_prefix"
        and isinstance(node.value, ast.Constant) and node.value.value == "CDE_"
        for node in ast.walk(cls)
    )  # fmt: skip


def settings_env_names() -> set[str]:
    """CDE_<FIELD> for every field of the CDE_-prefixed settings classes (parsed, not imported)."""
    names = set()
    for module in SETTINGS_MODULES:
        path = REPO / "server" / "cde_server" / module
        assert path.is_file(), f"settings module {path} is missing: update SETTINGS_MODULES"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and has_cde_prefix(node):
                for item in node.body:
                    if (
                        isinstance(item, ast.AnnAssign)
                        and isinstance(item.target, ast.Name)
                        and item.target.id != "model_config"
                    ):
                        names.add(f"CDE_{item.target.id.upper()}")
    return names


def deploy_env_names() -> dict[str, set[str]]:
    """CDE_* names set anywhere in deploy/, with the files that set them."""
    found: dict[str, set[str]] = {}
    for path in [*yaml_files(), *DEPLOY.glob("*.Dockerfile")]:
        for name in re.findall(r"\b(CDE_[A-Z0-9_]+)\b", path.read_text()):
            found.setdefault(name, set()).add(path.name)
    return found


def test_env_names_exist_in_settings() -> None:
    known = settings_env_names() | AWAITED_SETTINGS | {"CDE_MODEL_DIR"}  # compose-only variable
    assert "CDE_TRITON_URL" in known
    unknown = {n: sorted(f) for n, f in deploy_env_names().items() if n not in known}
    assert not unknown, f"CDE_* names no settings class defines: {unknown}"


# --- the health-check script shipped in the gateway image ------------------------------------


def test_grpc_health_check_script() -> None:
    spec = importlib.util.spec_from_file_location(
        "grpc_health_check", DEPLOY / "grpc_health_check.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    saved = {k: os.environ.pop(k, None) for k in ("CDE_HEALTH_PORT", "CDE_PORT")}
    try:
        os.environ["CDE_PORT"] = str(port)
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert script.check("") == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert script.check("") == 0
        os.environ["CDE_HEALTH_PORT"] = str(port)
        os.environ["CDE_PORT"] = "1"  # the health port wins
        assert script.check("") == 0
        server.stop(None)
        assert script.check("") == 1  # nothing listening
    finally:
        server.stop(None)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
