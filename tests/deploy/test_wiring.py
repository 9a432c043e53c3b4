"""The rendered chart is wired together: the gateway's config names every engine's Service, the
Services select the right pods, the ServiceMonitor selects the gateway, and every pod that
touches the model store mounts the same claim at the same path."""

from __future__ import annotations

import json
import os
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, NAMESPACE, Rendered

COMPONENT = "app.kubernetes.io/component"


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str | None = None) -> dict:
    containers = pod_spec(workload)["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def arg_after(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} expected once in {args}"
    return args[args.index(flag) + 1]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def secret_key_at(chart: Rendered, workload: dict, path: str) -> tuple[str, str] | None:
    """(Secret, key) that the workload's container mounts at `path`, if any."""
    directory, key = path.rsplit("/", 1)
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    for mount in container(workload)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if not secret or mount["mountPath"] != directory:
            continue
        if key in chart.get("Secret", secret["secretName"])["stringData"]:
            return secret["secretName"], key
    return None


def gateway_config(chart: Rendered) -> dict:
    (cm,) = [c for c in chart.by_component("ConfigMap", "gateway")]
    return yaml.safe_load(cm["data"]["config.yaml"])


def gateway(chart: Rendered) -> dict:
    (dep,) = chart.by_component("Deployment", "gateway")
    return dep


def engines(chart: Rendered) -> list[dict]:
    return chart.by_component("Deployment", "engine")


def values_of(chart: Rendered) -> dict:
    """The values the chart was rendered with (defaults, then the GPU file when used)."""
    from tests.deploy.conftest import CHART

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if chart.name == "gpu":
        gpu = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
        values["variants"] = gpu["variants"]
        values["model"] = {**values["model"], **gpu["model"]}
    return values


def test_gateway_config_names_every_engine_service(chart):
    config = gateway_config(chart)
    remote = config["remote_engines"]
    services = {s["metadata"]["name"]: s for s in chart.of_kind("Service")}
    deployments = engines(chart)
    values = values_of(chart)
    base = values["model"]["name"]
    expected_names = {base} | {f"{base}:{v['recipe']}" for v in values["variants"]}
    assert set(remote) == expected_names
    assert config["variants"] == [v["recipe"] for v in values["variants"]]
    # The base is served remotely too, so no gateway starts an engine of its own.
    assert base in remote

    served_by = {}
    for public, url in remote.items():
        parsed = urlparse(url)
        assert parsed.scheme == "http" and parsed.path in ("", "/"), url
        service = services.get(parsed.hostname)
        assert service is not None, f"{public}: no Service named {parsed.hostname}"
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == parsed.port]
        # The Service selects exactly one engine Deployment, whose container serves that port.
        matching = [d for d in deployments if selects(service["spec"]["selector"], pod_labels(d))]
        assert len(matching) == 1, f"{public}: Service selects {len(matching)} engine Deployments"
        (dep,) = matching
        assert not selects(service["spec"]["selector"], pod_labels(gateway(chart)))
        vllm = container(dep, "vllm")
        assert port["targetPort"] in [p["name"] for p in vllm["ports"]]
        assert dep["metadata"]["annotations"]["leanserve.io/variant"] == public
        # The engine serves the model it is named for.
        if public == base:
            assert "--recipe" not in vllm["args"]
        else:
            assert arg_after(vllm["args"], "--recipe") == public.split(":", 1)[1]
        served_by[dep["metadata"]["name"]] = public
    assert len(served_by) == len(deployments), "an engine Deployment no gateway routes to"
    # Experiment arms are served variants.
    for experiment in config["experiments"]:
        for arm in experiment["arms"]:
            assert arm["variant"] in remote, f"{experiment['name']}: {arm['variant']} not served"
    if chart.name == "gpu":
        assert config["experiments"], "values-gpu.yaml shows an experiment"


def test_gateway_config_is_valid_settings(chart, tmp_path):
    """The rendered config.yaml loads into the gateway's own Settings (extra keys forbidden)."""
    settings_mod = pytest.importorskip("server.settings")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(gateway_config(chart)))
    settings = settings_mod.load_settings(path)
    assert settings.port == 8000 and settings.host == "0.0.0.0"


@pytest.mark.parametrize("name", ["gateway.yaml", "gateway-gpu.yaml"])
def test_compose_gateway_config_is_valid_settings(name, monkeypatch):
    # The file alone, as the container reads it: no LEANSERVE_* from this shell (make exports some).
    for key in [k for k in os.environ if k.startswith("LEANSERVE_")]:
        monkeypatch.delenv(key)
    settings_mod = pytest.importorskip("server.settings")
    settings = settings_mod.load_settings(DEPLOY / name)
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert str(settings.home) == "/data"


def test_gateway_probes_config_and_keys(chart):
    dep = gateway(chart)
    gw = container(dep)
    assert gw["livenessProbe"]["httpGet"]["path"] == "/health"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gw["args"] == ["serve", "--config", "/etc/leanserve/config.yaml"]
    mounts = {m["name"]: m for m in gw["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(dep)["volumes"]}
    assert mounts["config"]["mountPath"] == "/etc/leanserve/config.yaml"
    (cm,) = chart.by_component("ConfigMap", "gateway")
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    # The auth files the config names are keys of mounted Secrets.
    config = gateway_config(chart)
    for path in config["auth"].values():
        assert secret_key_at(chart, dep, path), f"{path}: no key of a mounted Secret"
    assert "checksum/config" in dep["spec"]["template"]["metadata"]["annotations"]
    port = gw["ports"][0]
    assert port["name"] == "http" and port["containerPort"] == config["port"]


def test_service_monitor_selects_the_gateway(rendered):
    for name in ("all-on", "gpu"):
        chart = rendered[name]
        (monitor,) = chart.of_kind("ServiceMonitor")
        (service,) = chart.by_component("Service", "gateway")
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selects(selector, service["metadata"]["labels"])
        others = [s for s in chart.of_kind("Service") if s is not service]
        assert not any(selects(selector, s["metadata"]["labels"]) for s in others)
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
        assert endpoint["path"] == "/metrics"
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        # The gateway Service selects the gateway pods.
        assert selects(service["spec"]["selector"], pod_labels(gateway(chart)))


def test_store_is_shared(chart):
    """The base Job, compress Jobs, engines and gateways mount one claim at one path, and agree
    on where the base checkpoint and the variants live in it."""
    claims = {p["metadata"]["name"] for p in chart.of_kind("PersistentVolumeClaim")}
    workloads = chart.of_kind("Deployment") + chart.of_kind("Job")
    assert len(workloads) >= 5
    mount_paths = set()
    for w in workloads:
        volumes = {v["name"]: v for v in pod_spec(w)["volumes"]}
        assert volumes["store"]["persistentVolumeClaim"]["claimName"] in claims
        for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", []):
            (mount,) = [m for m in c["volumeMounts"] if m["name"] == "store"]
            mount_paths.add(mount["mountPath"])
    assert len(claims) == 1 and len(mount_paths) == 1
    (store,) = mount_paths

    config = gateway_config(chart)
    base_dir = config["model"]
    assert config["home"] == store and base_dir.startswith(f"{store}/models/")
    for dep in engines(chart):
        args = container(dep, "vllm")["args"]
        assert arg_after(args, "--home") == store
        assert arg_after(args, "--model") == base_dir
    compress_jobs = chart.by_component("Job", "compress")
    assert len(compress_jobs) == len(config["variants"])
    assert sorted(arg_after(container(j)["args"], "--recipe") for j in compress_jobs) == sorted(
        config["variants"]
    )
    for job in compress_jobs:
        args = container(job)["args"]
        assert args[0] == "build"
        assert arg_after(args, "--base") == base_dir
        assert arg_after(args, "--store") == f"{store}/variants"
        assert "--progress-json" in args
    # The base Job writes the marker that every engine and compress Job waits for.
    (base_job,) = chart.by_component("Job", "base")
    script = container(base_job)["args"][0]
    marker = script.strip().splitlines()[-1].removeprefix("touch ").strip()
    assert marker.startswith(f"{store}/models/.")
    for w in engines(chart) + compress_jobs:
        (wait,) = pod_spec(w)["initContainers"]
        assert f"[ -f {marker} ]" in wait["args"][0]


def test_gpu_resources_follow_parallelism(rendered):
    gpu, default = rendered["gpu"], rendered["default"]
    tensor_parallel = {}
    for dep in engines(gpu):
        vllm = container(dep, "vllm")
        vllm_args = json.loads(env_of(vllm)["LEANSERVE_ENGINE__EXTRA_ARGS"])
        tp = int(arg_after(vllm_args, "--tensor-parallel-size"))
        pp = int(arg_after(vllm_args, "--pipeline-parallel-size"))
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == tp * pp
        assert pod_spec(dep)["nodeSelector"]
        tensor_parallel[dep["metadata"]["name"].rsplit("-", 1)[-1]] = tp
    assert tensor_parallel == {"base": 2, "fp8": 1, "w4a16": 1}
    for job in gpu.by_component("Job", "compress"):
        assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod_spec(job)["nodeSelector"]
    # CPU values ask for no GPU anywhere.
    assert "nvidia.com/gpu" not in json.dumps(default.docs)


def test_autoscaling_and_disruption_targets(rendered):
    chart = rendered["all-on"]
    gw = gateway(chart)
    (hpa,) = chart.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gw["metadata"]["name"]
    assert "replicas" not in gw["spec"], "the HPA owns the gateway's replica count"
    (pdb,) = chart.of_kind("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(gw))
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in chart.of_kind("ScaledObject")}
    for dep in engines(chart):
        so = scaled.pop(dep["metadata"]["name"])
        assert "replicas" not in dep["spec"], "KEDA owns the engine's replica count"
        (trigger,) = so["spec"]["triggers"]
        variant = dep["metadata"]["annotations"]["leanserve.io/variant"]
        assert trigger["type"] == "prometheus"
        assert (
            f'leanserve_engine_queue_requests{{variant="{variant}"}}'
            in (trigger["metadata"]["query"])
        )
    assert not scaled, f"ScaledObjects without an engine: {list(scaled)}"


def test_dashboard_and_rules_come_from_deploy(rendered):
    chart = rendered["all-on"]
    dashboards = [c for c in chart.of_kind("ConfigMap") if "leanserve.json" in c["data"]]
    (dashboard,) = dashboards
    source = (DEPLOY / "grafana" / "dashboards" / "leanserve.json").read_text()
    assert json.loads(dashboard["data"]["leanserve.json"]) == json.loads(source)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (rule,) = chart.of_kind("PrometheusRule")
    assert rule["spec"] == yaml.safe_load((DEPLOY / "alerts.yml").read_text())


def test_jobs_use_the_compress_image_and_engines_the_engine_image(chart):
    values = yaml.safe_load((DEPLOY.parent / "helm" / "values.yaml").read_text())
    engine_repo = values["image"]["repository"]
    compress_repo = values["compressImage"]["repository"]
    for dep in chart.of_kind("Deployment"):
        for c in pod_spec(dep)["containers"]:
            assert c["image"].startswith(f"{engine_repo}:")
    for job in chart.of_kind("Job"):
        assert container(job)["image"].startswith(f"{compress_repo}:")
        assert pod_spec(job)["restartPolicy"] == "Never"
    # Every pod runs as the images' non-root user.
    for w in chart.of_kind("Deployment") + chart.of_kind("Job"):
        assert pod_spec(w)["securityContext"]["runAsNonRoot"] is True


def test_engine_settings_reach_the_engine(chart, monkeypatch):
    """Each engine pod's LEANSERVE_ENGINE__* variables load into the gateway's own Settings
    (what `leanserve engine` reads) with the values' parallelism and vLLM arguments."""
    settings_mod = pytest.importorskip("server.settings")
    for dep in engines(chart):
        vllm = container(dep, "vllm")
        env = env_of(vllm)
        for name in list(os.environ):
            if name.startswith("LEANSERVE_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        args = vllm["args"]
        settings = settings_mod.load_settings(
            None, model=arg_after(args, "--model"), home=arg_after(args, "--home")
        )
        extra = settings.engine.extra_args
        assert extra[:4] == [
            "--tensor-parallel-size",
            extra[1],
            "--pipeline-parallel-size",
            extra[3],
        ]
        if chart.name == "gpu":
            assert settings.engine.enforce_eager is False
            assert settings.engine.gpu_memory_utilization == 0.9
            assert settings.engine.max_model_len == 16384
        else:
            assert settings.engine.enforce_eager is True
            assert settings.engine.max_model_len == 2048
