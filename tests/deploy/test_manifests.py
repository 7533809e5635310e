"""The Kubernetes manifests (deploy/): every overlay renders with ``kubectl
kustomize``, every object validates against the Kubernetes schemas of the versions
docs/deploy-k8s.md names (kubernetes-validate, strict: unknown fields fail), and the
settings that must agree with the code do: probes, the grace period against the
drain, the autoscaling metric, the router's header, affinity, secrets.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.config import Settings
from agent.metrics import OPEN_CALLS
from agent.workers import STOP_MARGIN_S
from pipeline.engines.session_routing import DEFAULT_SESSION_HEADER

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(path.parent.name for path in (ROOT / "deploy" / "overlays").glob(
    "*/kustomization.yaml"))
KUBERNETES_VERSIONS = ("1.31.0", "1.34.0", "1.37.0")
"""The versions docs/deploy-k8s.md names; keep the two lists together."""

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not installed: it renders the kustomize overlays (no cluster needed)",
)

Manifest = dict[str, Any]


@functools.cache
def rendered(overlay: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def only(objects: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def agent_container(objects: tuple[Manifest, ...]) -> Manifest:
    pod = only(objects, "Deployment", "voiceforge")["spec"]["template"]["spec"]
    container: Manifest = next(c for c in pod["containers"] if c["name"] == "agent")
    return container


def env_of(container: Manifest) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in
            container.get("env", [])}


def test_the_overlays_are_there() -> None:
    assert OVERLAYS == ["cpu", "gpu"]


def test_the_validator_rejects_what_is_wrong() -> None:
    """The check below can fail: an unknown field and a wrong type are errors."""
    deployment = dict(only(rendered("cpu"), "Deployment", "voiceforge"))
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay: str, version: str) -> None:
    objects = rendered(overlay)
    assert objects
    for manifest in objects:
        # Every kind used is a built-in one: no custom resource to skip.
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_the_grace_period_match_the_drain(overlay: str) -> None:
    objects = rendered(overlay)
    pod = only(objects, "Deployment", "voiceforge")["spec"]["template"]["spec"]
    agent = agent_container(objects)
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = agent["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = float(env_of(agent).get("VOICEFORGE_DRAIN_TIMEOUT_S",
                                      Settings().drain_timeout_s))
    needed = float(pre_stop[1]) + drain_s + STOP_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed
    # No rollout step removes capacity before its replacement is ready.
    strategy = only(objects, "Deployment", "voiceforge")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruptions_autoscaling_and_affinity(overlay: str) -> None:
    objects = rendered(overlay)
    labels = only(objects, "Deployment", "voiceforge")["spec"]["template"]["metadata"]["labels"]
    pdb = only(objects, "PodDisruptionBudget", "voiceforge")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = only(objects, "HorizontalPodAutoscaler", "voiceforge")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "voiceforge"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == OPEN_CALLS
    assert hpa["spec"]["minReplicas"] >= 2  # one pod draining never leaves none
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    with_affinity = {name for name, s in services.items()
                     if s["spec"].get("sessionAffinity", "None") != "None"}
    assert with_affinity == {"voiceforge-webrtc"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keys_come_from_the_secret_only(overlay: str) -> None:
    objects = rendered(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"]  # never in the repository
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for name, value in env_of(container).items():
                if re.search(r"KEY|TOKEN|SECRET", name) and not name.endswith("_FILE"):
                    assert isinstance(value, dict) and "secretKeyRef" in value, name
    agent = agent_container(objects)
    assert env_of(agent)["VOICEFORGE_API_KEY_FILE"].startswith("/var/run/secrets/voiceforge/")


def test_the_gpu_agent_reaches_vllm_through_the_router_keyed_on_its_header() -> None:
    objects = rendered("gpu")
    env = env_of(agent_container(objects))
    assert env["VOICEFORGE_PROFILE"] == "gpu"
    router_service = only(objects, "Service", "vllm-router")
    port = router_service["spec"]["ports"][0]["port"]
    assert env["VOICEFORGE_LLM_URL"] == f"http://vllm-router:{port}/v1"
    assert env["VOICEFORGE_LLM_SESSION_HEADER"] == DEFAULT_SESSION_HEADER
    router = only(objects, "Deployment", "vllm-router")["spec"]["template"]["spec"]
    args = router["containers"][0]["args"]
    assert "--routing-logic=session" in args
    assert f"--session-key={DEFAULT_SESSION_HEADER}" in args
    selector = next(a for a in args if a.startswith("--k8s-label-selector="))
    key, value = selector.split("=", 1)[1].split("=")
    vllm_labels = only(objects, "Deployment", "vllm")["spec"]["template"]["metadata"]["labels"]
    assert vllm_labels[key] == value
    assert only(objects, "HorizontalPodAutoscaler", "vllm")
    # What the schema cannot say: the router may list the pods of its namespace.
    binding = only(objects, "RoleBinding", "vllm-router")
    namespace = router_service["metadata"]["namespace"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": router["serviceAccountName"], "namespace": namespace}
    ]
    role = only(objects, "Role", binding["roleRef"]["name"])
    assert {"pods"} <= set(role["rules"][0]["resources"])


def test_the_cpu_agent_runs_no_llm_server() -> None:
    objects = rendered("cpu")
    assert env_of(agent_container(objects))["VOICEFORGE_PROFILE"] == "embedded"
    assert not [o for o in objects if o["metadata"]["name"].startswith("vllm")]
