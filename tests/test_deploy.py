"""The deployment files: Kubernetes manifests that agree with the bridge's defaults, a Dockerfile that runs it safely."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from telephony_bridge.config import BridgeConfig, parse_config

yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) is not installed")

REPO = Path(__file__).parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"


def documents(name: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all((KUBERNETES / name).read_text()) if document]


def manifests() -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "prometheus-scrape.yaml"
            for document in documents(path.name)}


def container() -> dict[str, Any]:
    [bridge] = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return bridge


def test_every_manifest_parses_and_has_a_kind_and_a_name() -> None:
    found = manifests()
    assert set(found) == {
        "ConfigMap", "Secret", "Deployment", "PodDisruptionBudget", "Service", "Ingress", "HorizontalPodAutoscaler",
    }
    assert all(document["metadata"]["name"].startswith("telephony-bridge") for document in found.values())


def test_the_probes_are_healthz_for_liveness_and_readyz_for_readiness_on_the_served_port() -> None:
    bridge = container()
    assert bridge["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bridge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [port] = bridge["ports"]
    assert port["containerPort"] == int(bridge["args"][bridge["args"].index("--port") + 1])
    assert bridge["args"][bridge["args"].index("--host") + 1] == "0.0.0.0"


def test_the_grace_period_outlasts_the_drain_of_the_shipped_configuration_and_of_the_default() -> None:
    grace = manifests()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    shipped = parse_config(manifests()["ConfigMap"]["data"]["bridge.toml"], "configmap.yaml")
    assert grace > shipped.limits.drain_seconds + 5 and grace > BridgeConfig().limits.drain_seconds + 5


def test_the_configuration_is_mounted_read_only_where_bridge_config_points() -> None:
    bridge = container()
    [mount] = [mount for mount in bridge["volumeMounts"] if mount["name"] == "config"]
    assert mount["readOnly"] is True
    config_path = next(entry["value"] for entry in bridge["env"] if entry["name"] == "BRIDGE_CONFIG")
    assert config_path == f"{mount['mountPath']}/bridge.toml"
    assert bridge["envFrom"][0]["secretRef"]["name"] == manifests()["Secret"]["metadata"]["name"]


def test_the_pdb_and_service_select_the_deployments_pods() -> None:
    found = manifests()
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["Service"]["spec"]["selector"].items() <= labels.items()


def test_the_ingress_keeps_websockets_open_for_a_long_call_and_routes_only_twilio() -> None:
    ingress = manifests()["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    [rule] = ingress["spec"]["rules"]
    assert [path["path"] for path in rule["http"]["paths"]] == ["/twilio"]


def test_the_scrape_config_reads_metrics() -> None:
    [job] = documents("prometheus-scrape.yaml")[0]["scrape_configs"]
    assert job["metrics_path"] == "/metrics"


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_runs_as_a_non_root_user_with_a_healthcheck_and_drains_on_sigterm() -> None:
    instructions = dockerfile()
    stages = [arguments for name, arguments in instructions if name == "FROM"]
    assert stages[-1] == "python:3.11-slim", "the image that runs is the slim one; only the wheel is built in a full one"
    users = [arguments for name, arguments in instructions if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    [healthcheck] = [arguments for name, arguments in instructions if name == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert any(name == "RUN" and "pip wheel" in arguments for name, arguments in instructions)
    assert any(name == "RUN" and "pip install" in arguments and ".whl" in arguments for name, arguments in instructions)
    assert any(name == "VOLUME" and "/etc/telephony-bridge" in arguments for name, arguments in instructions)


def test_the_systemd_unit_reloads_with_sighup_and_outlasts_the_drain() -> None:
    unit = (REPO / "deploy" / "systemd" / "telephony-bridge.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)[1])  # type: ignore[index]
    assert stop > BridgeConfig().limits.drain_seconds


def docker_engine() -> str | None:
    """Why the image cannot be built here, or `None` when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else "no Docker engine reachable (docker info failed)"


def test_the_image_builds_and_answers_its_healthcheck_as_a_non_root_user() -> None:
    reason = docker_engine()
    if reason is not None:
        pytest.skip(f"image build not run: {reason}; it needs an engine and the python:3.11-slim base image")
    built = subprocess.run(["docker", "build", "-q", str(REPO)], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr
    image = built.stdout.strip()
    user = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", image, "-u"],
                          capture_output=True, text=True, timeout=60)
    assert user.stdout.strip() not in ("", "0")
    version = subprocess.run(["docker", "run", "--rm", image, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("telephony-bridge ")
