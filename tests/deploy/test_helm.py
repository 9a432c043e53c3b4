"""The chart lints, renders with the default and the GPU values, and every rendered manifest
validates against the Kubernetes OpenAPI schemas (strict: unknown fields are errors)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.deploy.conftest import CHART, VALUES, Rendered, run_helm

# The oldest Kubernetes the schemas here cover (the chart's kubeVersion allows 1.23+; its APIs,
# autoscaling/v2 and policy/v1, are GA there) and the newest.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]

# Custom resources have no schema among Kubernetes' own: validation skips them by name, and
# test_wiring.py checks the fields that matter.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus Operator CRD",
    ("keda.sh/v1alpha1", "ScaledObject"): "KEDA CRD",
}


@pytest.mark.parametrize("values", list(VALUES))
def test_helm_lint(helm, values):
    run = run_helm(helm, "lint", "--strict", str(CHART), *VALUES[values])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 chart(s) failed" in run.stdout


def test_renders_expected_resources(rendered):
    kinds = {name: {d["kind"] for d in r.docs} for name, r in rendered.items()}
    core = {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Job",
        "PodDisruptionBudget",
    }
    assert core <= kinds["default"], kinds["default"]
    optional = {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ScaledObject"}
    assert optional <= kinds["all-on"], kinds["all-on"]
    assert optional <= kinds["gpu"], kinds["gpu"]
    assert not optional & kinds["default"], "optional resources must be off by default"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_validate(chart: Rendered, kube_version):
    validated, skipped = 0, []
    for doc in chart.docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRDS:
            skipped.append(f"{doc['kind']}/{doc['metadata']['name']}: {CRDS[key]}")
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{chart.name}: {doc['kind']}/{doc['metadata']['name']} at {path}: {exc}")
        validated += 1
    assert validated >= 10
    if chart.name != "default":
        assert skipped, "the CRDs were expected in this values set"


def test_default_model_name_is_enforced(helm):
    run = run_helm(helm, "template", "x", str(CHART), "--set", "model.name=other")
    assert run.returncode != 0
    assert "model.name must be smollm2-135m-instruct" in run.stderr
