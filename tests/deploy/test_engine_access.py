"""Only the gateways reach the engines: the chart's NetworkPolicy lets ingress to the engine pods
come from the gateway pods alone, and every engine takes a key that only the gateways hold (the
guard where the network plugin enforces no NetworkPolicies). The ServiceMonitor sends the
metrics key the gateways' /metrics needs."""

from __future__ import annotations

from tests.deploy.conftest import Rendered, render
from tests.deploy.test_wiring import (
    engines,
    gateway,
    gateway_config,
    pod_labels,
    pod_spec,
    secret_key_at,
    selects,
)


def engine_policy(chart: Rendered) -> dict:
    (policy,) = chart.of_kind("NetworkPolicy")
    return policy


def test_only_gateway_pods_reach_engine_pods(chart):
    spec = engine_policy(chart)["spec"]
    target = spec["podSelector"]["matchLabels"]
    # It covers every engine pod and nothing else.
    assert all(selects(target, pod_labels(d)) for d in engines(chart))
    assert not selects(target, pod_labels(gateway(chart)))
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespace or address range may come in"
    source = peer["podSelector"]["matchLabels"]
    assert selects(source, pod_labels(gateway(chart)))
    assert not any(selects(source, pod_labels(d)) for d in engines(chart))
    # Only on the port the engines serve, which is the one the gateway's config calls.
    (port,) = rule["ports"]
    for dep in engines(chart):
        (vllm_port,) = [p for p in pod_spec(dep)["containers"][0]["ports"]]
        assert port["port"] == vllm_port["name"] and port["protocol"] == "TCP"


def test_the_network_policy_can_be_switched_off(helm):
    chart = render(helm, "default", "--set", "networkPolicy.enabled=false")
    assert not chart.of_kind("NetworkPolicy")


def test_every_engine_takes_the_key_the_gateway_sends(chart):
    config = gateway_config(chart)
    key_files = config["remote_engine_key_files"]
    assert set(key_files) == set(config["remote_engines"]), "an engine the gateway calls keyless"
    gw = gateway(chart)
    held = {secret_key_at(chart, gw, path) for path in key_files.values()}
    assert None not in held and len(held) == 1
    (secret_key,) = held
    for dep in engines(chart):
        (vllm,) = [c for c in pod_spec(dep)["containers"] if c["name"] == "vllm"]
        (env,) = [e for e in vllm["env"] if e["name"] == "VLLM_API_KEY"]
        ref = env["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == secret_key
    secret = chart.get("Secret", secret_key[0])
    assert len(secret["stringData"][secret_key[1]]) >= 32


def test_the_service_monitor_sends_the_metrics_key(rendered):
    for name in ("all-on", "gpu"):
        chart = rendered[name]
        (monitor,) = chart.of_kind("ServiceMonitor")
        (endpoint,) = monitor["spec"]["endpoints"]
        auth = endpoint["authorization"]
        assert auth["type"] == "Bearer"
        credentials = (auth["credentials"]["name"], auth["credentials"]["key"])
        metrics_key_file = gateway_config(chart)["auth"]["metrics_key_file"]
        assert secret_key_at(chart, gateway(chart), metrics_key_file) == credentials


def test_engine_and_metrics_keys_differ_from_each_other(chart):
    config = gateway_config(chart)
    gw = gateway(chart)
    engine = secret_key_at(chart, gw, next(iter(config["remote_engine_key_files"].values())))
    metrics = secret_key_at(chart, gw, config["auth"]["metrics_key_file"])
    secret = chart.get("Secret", engine[0])
    assert secret["stringData"][engine[1]] != secret["stringData"][metrics[1]]
