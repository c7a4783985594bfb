"""The Kubernetes manifests parse and carry the fields that make them work."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def load(name: str) -> dict:
    [doc] = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    return dict(doc)


def test_monitor_daemonset_serves_metrics_and_watches_rules() -> None:
    doc = load("monitor-daemonset.yaml")
    assert doc["kind"] == "DaemonSet"
    pod = doc["spec"]["template"]
    assert doc["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    args = container["args"]
    assert args[0] == "monitor"
    assert args[args.index("--prometheus") + 1] == "0.0.0.0:9400"
    assert args[args.index("--threshold") + 1] == "90%"
    assert container["ports"][0]["containerPort"] == 9400
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})


def test_serving_pod_liveness_points_at_the_middleware_health_endpoint() -> None:
    doc = load("serving-liveness.yaml")
    [container] = doc["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/vramguard/healthz"
        assert get["port"] in ("http", 8000)
    assert container["livenessProbe"]["failureThreshold"] >= 2
