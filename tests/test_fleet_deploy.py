"""The Kubernetes manifests of a fleet: the PostgreSQL connection from its own Secret, and scaling on live calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from telephony_bridge.observe.metrics import BridgeMetrics

yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) is not installed")

KUBERNETES = Path(__file__).parent.parent / "deploy" / "kubernetes"


def manifest(name: str) -> dict[str, Any]:
    [document] = [document for document in yaml.safe_load_all((KUBERNETES / name).read_text()) if document]
    return document


def bridge_env() -> dict[str, dict[str, Any]]:
    [bridge] = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return {entry["name"]: entry for entry in bridge["env"]}


def test_database_url_comes_from_the_postgres_secret() -> None:
    secret = manifest("postgres-secret.yaml")
    reference = bridge_env()["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert secret["stringData"][reference["key"]].startswith("postgresql://")


def test_each_pod_names_itself_in_the_fleet() -> None:
    assert bridge_env()["BRIDGE_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_autoscaler_scales_the_deployment_on_the_live_calls_metric_the_bridge_exports() -> None:
    hpa = manifest("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == manifest("deployment.yaml")["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "telephony_bridge_calls_live"
    assert b"\ntelephony_bridge_calls_live 0.0\n" in BridgeMetrics().render()
