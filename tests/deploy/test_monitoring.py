"""deploy/: Prometheus config and alert rules pass promtool (config, rules and their unit tests),
every PromQL expression of the dashboard and the rules names only metrics of the contract, the
dashboard has the panels ops asked for, the compose file is wired, and the YAML lints clean.

Whether each expression returns data from a live gateway is the end-to-end test's job (a real
Prometheus scraping a real gateway); this file checks the files alone, in a second."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.conftest import CHART, DEPLOY, get_tool

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "leanserve.json"

# The metric contract (the gateway's /metrics): name -> labels. Histograms are listed by their
# _bucket series; their _sum and _count are allowed too.
METRICS = {
    "leanserve_requests_total": {"variant", "route", "status"},
    "leanserve_request_duration_seconds_bucket": {"variant", "route"},
    "leanserve_time_to_first_token_seconds_bucket": {"variant"},
    "leanserve_time_per_output_token_seconds_bucket": {"variant"},
    "leanserve_prompt_tokens_total": {"variant"},
    "leanserve_generation_tokens_total": {"variant"},
    "leanserve_requests_in_flight": {"variant"},
    "leanserve_engine_up": {"variant"},
    "leanserve_engine_restarts_total": {"variant"},
    "leanserve_routing_decisions_total": {"policy", "variant", "reason"},
    "leanserve_fallbacks_total": {"variant", "reason"},
    "leanserve_experiment_assignments_total": {"experiment", "arm"},
    "leanserve_experiment_outcomes_total": {"experiment", "arm", "status"},
    "leanserve_variant_info": {"variant", "recipe", "method"},
    "leanserve_variant_quality": {"variant", "metric"},
    "leanserve_variant_size_bytes": {"variant"},
    "leanserve_build_progress_ratio": {"variant"},
    "leanserve_build_failures_total": {"variant"},
    "leanserve_build_failed": {"variant"},
    "leanserve_engine_queue_requests": {"variant"},
    "leanserve_engine_running_requests": {"variant"},
    "leanserve_engine_kv_cache_usage_ratio": {"variant"},
    "leanserve_engine_memory_bytes": {"variant"},
    "leanserve_engine_cpu_seconds_total": {"variant"},
    "leanserve_engine_placement_info": {
        "variant",
        "device",
        "cores",
        "numa_node",
        "gpus",
        "tp",
        "memory_fraction",
        "shares_with",
        "nice",
    },
    # GPU series: absent on hosts without a GPU.
    "leanserve_gpu_memory_used_bytes": {"gpu"},
    "leanserve_gpu_memory_total_bytes": {"gpu"},
    "leanserve_gpu_power_watts": {"gpu"},
    "leanserve_gpu_energy_joules_total": {"gpu"},
    "leanserve_gpu_utilization_ratio": {"gpu"},
    "leanserve_gpu_temperature_celsius": {"gpu"},
    "leanserve_energy_joules_total": {"variant"},
}
ALLOWED = set(METRICS) | {
    m.removesuffix("_bucket") + suffix
    for m in METRICS
    if m.endswith("_bucket")
    for suffix in ("_sum", "_count")
}
# Labels every scraped series also carries.
TARGET_LABELS = {"instance", "job", "le"}

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def strip_promql(expr: str) -> str:
    """The expression without strings, Grafana variables, ranges and grouping clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "1", expr)  # $variant, ${datasource}, $__rate_interval
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not called as functions or aggregations,
    outside label matchers, that are not keywords or numbers."""
    stripped = re.sub(r"\{[^}]*\}", "", strip_promql(expr))
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
        if stripped[m.end() :].lstrip().startswith("(") or m.group().lower() in PROMQL_WORDS:
            continue
        names.add(m.group())
    return names


def label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", e):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for group in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e
    ):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    return labels


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard, template variables included."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(metric, label): the metric is an expression, the label a label.
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert m, f"variable {var['name']}: unexpected query {query}"
            exprs.append((f"variable {var['name']}", m.group(1)))
    return exprs


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_metric_name_parser():
    expr = (
        'sum by (variant) (rate(leanserve_energy_joules_total{variant=~"$variant"}[5m])) '
        "/ on (variant) group_left sum by (variant) (rate(leanserve_generation_tokens_total"
        "[$__rate_interval])) > 1e9 and histogram_quantile(0.95, "
        "rate(leanserve_time_to_first_token_seconds_bucket[1m]))"
    )
    assert metric_names(expr) == {
        "leanserve_energy_joules_total",
        "leanserve_generation_tokens_total",
        "leanserve_time_to_first_token_seconds_bucket",
    }
    assert label_names(expr) == {"variant"}


def test_dashboard_names_only_contract_metrics():
    exprs = dashboard_exprs()
    assert len(exprs) >= 25
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= ALLOWED, f"{title}: not in the metric contract: {names - ALLOWED}"
        allowed_labels = set().union(*(METRICS.get(n, {"variant", "route"}) for n in names))
        labels = label_names(expr) - TARGET_LABELS
        assert labels <= allowed_labels, f"{title}: unknown labels {labels - allowed_labels}"


def test_alert_rules_name_only_contract_metrics():
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names and names <= ALLOWED, f"{rule['alert']}: {names - ALLOWED}"


def test_dashboard_has_the_panels_ops_asked_for():
    exprs = "\n".join(e for _, e in dashboard_exprs())
    squashed = re.sub(r"\s+", "", exprs)
    wanted = {
        "requests/s per variant": r"sumby\(variant\)\(rate\(leanserve_requests_total",
        "tokens/s per variant": r"sumby\(variant\)\(rate\(leanserve_generation_tokens_total",
        "p50 TTFT": r"histogram_quantile\(0.5,.*leanserve_time_to_first_token_seconds_bucket",
        "p95 TTFT": r"histogram_quantile\(0.95,.*leanserve_time_to_first_token_seconds_bucket",
        "p50 TPOT": r"histogram_quantile\(0.5,.*leanserve_time_per_output_token_seconds_bucket",
        "p95 TPOT": r"histogram_quantile\(0.95,.*leanserve_time_per_output_token_seconds_bucket",
        "routing split": r"leanserve_routing_decisions_total",
        "A/B arms": r"sumby\(experiment,arm\)\(rate\(leanserve_experiment_assignments_total",
        "GPU memory": r"leanserve_gpu_memory_used_bytes",
        "power": r"leanserve_gpu_power_watts",
        "joules per token": r"rate\(leanserve_energy_joules_total[^\n]*\)\)/sumby\(variant\)"
        r"\(rate\(leanserve_generation_tokens_total",
        "build progress": r"leanserve_build_progress_ratio",
    }
    missing = [name for name, pattern in wanted.items() if not re.search(pattern, squashed)]
    assert not missing, f"dashboard lacks: {missing}"


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "leanserve"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] != "row":
            # Every query goes through the datasource variable: any Prometheus works.
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["refId"] for t in panel["targets"])


def test_alerts_have_for_severity_and_annotations():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    metrics_of = {name: metric_names(rule["expr"]) for name, rule in rules.items()}
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: needs `for:`"
        assert rule["labels"]["severity"] in {"page", "warn"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
    # The five the issue asks for, recognized by what they watch.
    wanted = {
        "error rate": {"leanserve_requests_total"},
        "p95 latency over SLO": {"leanserve_time_to_first_token_seconds_bucket"},
        "GPU memory over 90 %": {
            "leanserve_gpu_memory_used_bytes",
            "leanserve_gpu_memory_total_bytes",
        },
        "an engine down": {"leanserve_engine_up"},
        "a variant build failed": {"leanserve_build_failed"},
    }
    for what, metrics in wanted.items():
        assert any(metrics <= m for m in metrics_of.values()), f"no alert on {what}"


def test_promtool_check_config(promtool):
    run = subprocess.run(
        [str(promtool), "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_check_rules(promtool):
    run = subprocess.run(
        [str(promtool), "check", "rules", str(DEPLOY / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_alert_unit_tests(promtool):
    """deploy/alerts.test.yml: each alert fires on bad series (after its `for:`), not on good."""
    run = subprocess.run(
        [str(promtool), "test", "rules", str(DEPLOY / "alerts.test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_is_wired():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["gateway"]["profiles"] == ["cpu"]
    assert services["gateway-gpu"]["profiles"] == ["gpu"]
    assert "gateway" in services["gateway-gpu"]["networks"]["default"]["aliases"]
    (device,) = services["gateway-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert services["gateway"]["build"]["args"]["TARGET"] == "cpu"
    assert services["gateway-gpu"]["build"]["args"]["TARGET"] == "gpu"
    assert "COMPOSE_PROFILES=cpu" in (DEPLOY / ".env").read_text().splitlines()
    # Every bind mount's source exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    # Prometheus scrapes the gateway by its service name and port, and loads the rules.
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "leanserve"]
    assert job["static_configs"][0]["targets"] == ["gateway:8000"]
    assert prometheus["rule_files"] == ["alerts.yml"]
    assert "./alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]
    # Grafana's datasource points at the compose Prometheus.
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 100}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
  braces: {max-spaces-inside: 1}
  brackets: {max-spaces-inside: 1}
"""


def test_yamllint():
    yamllint = get_tool(lambda: tools.venv_tool("yamllint", "yamllint"))
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(CHART.glob("*.yaml"))
    assert len(files) >= 8
    run = subprocess.run(
        [str(yamllint), "--strict", "-d", YAMLLINT_CONFIG, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", ["alerts.yml", "grafana/dashboards/leanserve.json"])
def test_chart_files_are_links_to_deploy(path):
    """One source: helm/files/ links to deploy/, so the chart cannot drift from compose."""
    link = {
        "alerts.yml": "alerts.yml",
        "grafana/dashboards/leanserve.json": "leanserve-dashboard.json",
    }
    target = CHART / "files" / link[path]
    assert target.is_symlink() and target.resolve() == (DEPLOY / path).resolve()


def test_dashboard_promql_parses(promtool, tmp_path):
    """Every dashboard query is valid PromQL: promtool parses them as recording rules, with
    Grafana's variables replaced by what Grafana sends ($__rate_interval -> 1m, $variant -> .*).
    """
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$variant", ".*"),
        }
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
