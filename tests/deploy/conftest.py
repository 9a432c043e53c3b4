"""Fixtures for the deploy tests: the tools (fetched once) and the chart rendered three ways."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.deploy import tools

REPO = tools.REPO
CHART = REPO / "helm"
DEPLOY = REPO / "deploy"
NAMESPACE = "leanserve"
RELEASE = "ls"

# Values sets the chart is rendered with: the defaults, the GPU cluster's, and the defaults with
# every optional resource on (ServiceMonitor, PrometheusRule, gateway HPA, KEDA), so that each
# template is rendered and checked at least once.
VALUES = {
    "default": [],
    "gpu": ["-f", str(CHART / "values-gpu.yaml")],
    "all-on": [
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,"
        "gateway.autoscaling.enabled=true,engine.autoscaling.enabled=true",
    ],
}


def get_tool(getter):
    try:
        return getter()
    except tools.ToolMissing as exc:
        if tools.require_tools():
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def helm() -> Path:
    return get_tool(tools.helm)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return get_tool(tools.promtool)


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    # helm warns on stderr about helm/files/ being symlinks into deploy/ (one source); harmless.
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


@dataclass
class Rendered:
    name: str
    docs: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def by_component(self, kind: str, component: str) -> list[dict]:
        return [
            d
            for d in self.of_kind(kind)
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]


def render(helm: Path, values: str, *more: str) -> Rendered:
    """The chart rendered with a values set of VALUES (and `more` helm arguments)."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *VALUES[values], *more]
    run = run_helm(helm, *args)
    assert run.returncode == 0, f"helm template ({values}) failed:\n{run.stderr}"
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    return Rendered(values, docs)


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, Rendered]:
    return {name: render(helm, name) for name in VALUES}


@pytest.fixture(params=list(VALUES))
def chart(request, rendered: dict[str, Rendered]) -> Rendered:
    """The chart rendered with each values set in turn."""
    return rendered[request.param]
