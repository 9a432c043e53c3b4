"""A real Prometheus scrapes a real gateway (real vLLM engine) every second.

1. The counters agree with the client, exactly: after a mixed load (chat and completions,
   streaming with and without include_usage, non-streaming), Prometheus's requests, generated
   tokens, routing decisions and experiment assignments grew by exactly what the client received.
2. Every PromQL expression of the Grafana dashboard and of the alert rules returns data through
   Prometheus's HTTP API: panels as Grafana sends them (/api/v1/query_range over the test's
   window with Grafana's variables filled in, /api/v1/query for instant table targets), the
   template variable through /api/v1/label/<label>/values, each alert's condition through
   /api/v1/query as a rule is evaluated (its threshold stripped: see split_condition). "Data"
   means a finite sample, not just a series of NaN. Before that the test makes the rarer
   situations happen: an A/A experiment (configured), variant builds that fail (a recipe that
   does not exist, requested while Prometheus watches), an engine killed with a request in
   flight (a fallback, a 503 and a restart). What cannot return data here is listed with its
   reason (printed, recorded as the `skipped_queries` property and raised as a warning): GPU
   and energy series on a machine without NVML (and without RAPL), which must be absent, not
   zero, and the test checks that they are; and card series, which only a compressed variant
   has, when none is served.

promtool's checks of deploy/prometheus.yml and deploy/alerts.yml are in tests/deploy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import warnings
from dataclasses import dataclass

import httpx
import pytest

from server.metrics.gpu import Nvml
from server.metrics.rapl import read_rapl
from tests.deploy.test_monitoring import DASHBOARD, alert_rules, metric_names
from tests.server.gateway import Gateway, start_gateway, wait_engine_running
from tests.server.mixed_load import mixed_load
from tests.server.promserver import Prometheus, get_prometheus_or_skip, has_data, start_prometheus

BASE = "smollm2-135m-instruct"
ADMIN = "metrics-e2e-admin"
EXPERIMENT = {
    "name": "metrics-aa",
    "arms": [{"name": "a", "variant": BASE}, {"name": "b", "variant": BASE}],
}
FAILING_RECIPE = "no-such-recipe"  # compress rejects it in under a second: a failed build

# Grafana's variables, as the dashboard is opened: "All" variants (the variable's allValue),
# and $__rate_interval = max($__interval + scrape interval, 4 x scrape interval), which is 4 s
# for the 1 s scrapes here.
GRAFANA_VARIABLES = {"variant": ".*", "__rate_interval": "4s"}

# Series that exist only with hardware this machine may lack.
GPU_METRIC = re.compile(r"^leanserve_gpu_")
ENERGY_METRIC = "leanserve_energy_joules_total"
# Card series (recipe, size, quality) come from compressed variants' cards; the base has none.
CARD_METRICS = {
    "leanserve_variant_info",
    "leanserve_variant_size_bytes",
    "leanserve_variant_quality",
}
CARD_REASON = (
    "card series exist only for a compressed variant, and serving one needs a second vLLM "
    "engine, more than this test may start on a shared 2-core machine; the base exports none"
)


# -- expressions ---------------------------------------------------------------------------------
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
SET_OPERATORS = re.compile(r"(and|or|unless)\b")


def split_condition(expr: str) -> tuple[str, str, str] | None:
    """(left, operator, right) when `expr`'s root is a filtering comparison, else None.

    An alert fires on the series its expression returns. `X > 0.05` is PromQL's filter: it
    returns the series of X whose value passes, so on a healthy system it returns nothing even
    though X is computed fine. What an alert watches is X, the left operand, so that is what must
    return data here. To find it without a PromQL parser we use PromQL's precedence: comparisons
    bind looser than all arithmetic and tighter only than `and`/`unless`/`or`, and associate to
    the left. So when no set operator stands outside parentheses, the last comparison outside
    parentheses, braces, brackets and strings is the root of the expression, and everything
    before it is its left operand. A comparison with `bool` returns 0/1 for every series and is
    not a filter: it needs no stripping.
    """
    depth, i, found = 0, 0, None
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":  # a string: skip to its unescaped end
            end = i + 1
            while end < len(expr) and expr[end] != c:
                end += 2 if expr[end] == "\\" else 1
            i = end + 1
            continue
        if c == "#":  # a comment runs to the end of the line
            i = expr.find("\n", i) if "\n" in expr[i:] else len(expr)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            if (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_")) and (
                SET_OPERATORS.match(expr, i)
            ):
                return None
            op = next((o for o in COMPARISONS if expr.startswith(o, i)), None)
            if op is not None:
                found = (i, op)
                i += len(op)
                continue
        i += 1
    if found is None:
        return None
    at, op = found
    right = expr[at + len(op) :].strip()
    if right.startswith("bool"):
        return None
    return expr[:at].strip(), op, right


def grafana_expr(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would."""

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


@dataclass
class Query:
    where: str  # "panel <title> [<refId>]" or "alert <name>"
    expr: str  # what is sent to Prometheus
    kind: str  # "range" (a Grafana time series) or "instant" (a rule, a table of values)


def dashboard_queries() -> list[Query]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} [{target['refId']}]"
            # As Grafana sends it: a range query over the time picked, unless the target
            # asks for an instant one (tables of current values).
            kind = "instant" if target.get("instant") and not target.get("range") else "range"
            queries.append(Query(where, grafana_expr(target["expr"]), kind))
    return queries


def alert_queries() -> list[Query]:
    queries = []
    for rule in alert_rules():
        expr = rule["expr"].strip()
        split = split_condition(expr)
        if split is None:
            queries.append(Query(f"alert {rule['alert']}", expr, "instant"))
            continue
        left, op, right = split
        queries.append(Query(f"alert {rule['alert']} (left of {op} {right})", left, "instant"))
        if not re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", right):  # a vector on the right, too
            queries.append(Query(f"alert {rule['alert']} (right of {op})", right, "instant"))
    return queries


def hardware_absent() -> dict[str, str]:
    """Metric name pattern -> why its series cannot exist on this machine."""
    absent = {}
    if Nvml.open() is None:
        absent["gpu"] = "no NVIDIA GPU (NVML absent): GPU series must be absent, not zero"
        if not read_rapl():
            absent["energy"] = (
                "no NVIDIA GPU and no readable RAPL: no energy to attribute, so "
                f"{ENERGY_METRIC} must be absent, not zero"
            )
    return absent


def absence_reason(expr: str, absent: dict[str, str]) -> str | None:
    names = metric_names(expr)
    if "gpu" in absent and any(GPU_METRIC.match(n) for n in names):
        return absent["gpu"]
    if "energy" in absent and ENERGY_METRIC in names:
        return absent["energy"]
    return None


# -- the stack -----------------------------------------------------------------------------------
@dataclass
class Stack:
    gateway: Gateway
    prometheus: Prometheus
    started: float  # unix time of Prometheus's first scrape of the gateway


@pytest.fixture(scope="module")
def stack(home, tmp_path_factory):
    binary = get_prometheus_or_skip()
    tmp = tmp_path_factory.mktemp("prometheus_e2e")
    gw = start_gateway(
        home,
        tmp / "gateway.log",
        extra_env={
            "LEANSERVE_VARIANTS": "[]",
            "LEANSERVE_EXPERIMENTS": json.dumps([EXPERIMENT]),
            "LEANSERVE_EXPERIMENT_STORE": f"sqlite:///{tmp / 'experiments.db'}",
            "LEANSERVE_AUTH__ADMIN_KEY": ADMIN,
            # The engine and machine series are collected in the background: as often as
            # Prometheus scrapes here.
            "LEANSERVE_METRICS_REFRESH_S": "1",
        },
    )
    try:
        gw.wait_ready(timeout_s=900)
        prom = start_prometheus(binary, tmp / "prometheus", gw.url)
        try:
            started = time.time()
            prom.wait_scrape_after(started)
            yield Stack(gw, prom, started)
        finally:
            prom.stop()
    finally:
        gw.stop()


def _scraped_now(stack: Stack) -> None:
    """Wait for a scrape that began after everything so far had finished."""
    stack.prometheus.wait_scrape_after(time.time() + 0.2)


# -- 1. counters agree with the client -----------------------------------------------------------
@pytest.mark.slow
def test_counters_equal_what_the_client_received(stack):
    prom = stack.prometheus
    queries = {
        "requests": "sum by (route, status) (leanserve_requests_total)",
        "tokens": "sum(leanserve_generation_tokens_total)",
        "routed": "sum(leanserve_routing_decisions_total)",
        "arms": "sum by (experiment, arm) (leanserve_experiment_assignments_total)",
    }

    def read() -> dict:
        by_route = {
            (s["metric"]["route"], s["metric"]["status"]): float(s["value"][1])
            for s in prom.query(queries["requests"])
        }
        arms = {
            (s["metric"]["experiment"], s["metric"]["arm"]): float(s["value"][1])
            for s in prom.query(queries["arms"])
        }
        return {
            "requests": by_route,
            "tokens": prom.value(queries["tokens"]),
            "routed": prom.value(queries["routed"]),
            "arms": arms,
        }

    _scraped_now(stack)
    before = read()
    tally = mixed_load(stack.gateway.url, BASE, requests=36, concurrency=4)
    _scraped_now(stack)
    after = read()

    assert not tally.problems, tally.problems
    assert tally.requests == {
        ("chat", "200"): 18,
        ("completions", "200"): 18,
    }, tally.requests

    def grew(key) -> dict:
        keys = set(before[key]) | set(after[key])
        diff = {k: after[key].get(k, 0) - before[key].get(k, 0) for k in keys}
        return {k: v for k, v in diff.items() if v}

    assert grew("requests") == dict(tally.requests)
    assert after["tokens"] - before["tokens"] == tally.generated_tokens
    assert after["routed"] - before["routed"] == tally.total
    assert grew("arms") == dict(tally.arms)
    assert sum(tally.arms.values()) == tally.total  # every request to the base is in the A/A


# -- 2. every dashboard and alert expression returns data ----------------------------------------
def _fail_builds(gw: Gateway, prom: Prometheus) -> None:
    """Ask twice for a variant whose recipe does not exist; compress fails it within a second.

    Twice, with a scrape between: the failure counter's series is born when the variant is
    requested, and a build that fails within the same scrape interval is first scraped at 1.
    increase() takes a series' first sample as its start, so only the second failure is an
    increase that the alert (increase(...[1h]) > 0) can see."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for _ in range(2):
        created = httpx.post(
            f"{gw.url}/v1/variants", json={"recipe": FAILING_RECIPE}, headers=admin, timeout=10
        )
        assert created.status_code == 202, created.text
        deadline = time.monotonic() + 60
        while (
            httpx.get(f"{gw.url}/v1/variants/{FAILING_RECIPE}", timeout=10).json()["state"]
            != "failed"
        ):
            assert time.monotonic() < deadline, f"{FAILING_RECIPE} did not fail within 60 s"
            time.sleep(0.5)
        prom.wait_scrape_after(time.time())


def _kill_engine_under_a_request(gw: Gateway) -> int:
    """SIGKILL the engine while a non-streaming request runs on it: that request fails before
    its first byte (a fallback, then a 503), and the gateway restarts the engine."""
    outcome: dict = {}
    t0 = time.monotonic()

    def long_request() -> None:
        body = {"model": BASE, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True}
        outcome["status"] = httpx.post(
            f"{gw.url}/v1/completions", json=body, timeout=120
        ).status_code
        outcome["answered_after_s"] = round(time.monotonic() - t0, 2)

    before = gw.engine(BASE)
    thread = threading.Thread(target=long_request)
    thread.start()
    # Kill once the engine itself is generating the request, not after a guessed delay: a
    # request that has already finished cannot fail.
    wait_engine_running(before["url"], lambda n: n >= 1, 30)
    outcome["killed_after_s"] = round(time.monotonic() - t0, 2)
    os.kill(before["pid"], signal.SIGKILL)
    thread.join(60)
    assert outcome.get("status") == 503, outcome
    gw.wait_ready(timeout_s=900)
    after = gw.engine(BASE)
    assert after["restarts"] >= before["restarts"] + 1, (before, after)
    return after["restarts"]


@pytest.mark.slow
def test_every_dashboard_and_alert_expression_returns_data(stack, record_property):
    gw, prom = stack.gateway, stack.prometheus
    _fail_builds(gw, prom)
    restarts = _kill_engine_under_a_request(gw)
    tally = mixed_load(gw.url, BASE, requests=24, concurrency=4)
    assert not tally.problems, tally.problems
    _scraped_now(stack)
    start, end = stack.started, time.time()

    absent = hardware_absent()
    queries = dashboard_queries() + alert_queries()
    assert len(queries) >= 30
    failed, skipped = [], []
    for q in queries:
        if q.kind == "range":
            result = prom.query_range(q.expr, start, end, step_s=1)
        else:
            result = prom.query(q.expr, at=end)
        reason = absence_reason(q.expr, absent)
        if reason is not None:
            # Absent, not zero: without the hardware the query must find no series at all.
            if result:
                failed.append(f"{q.where}: expected no series ({reason}), got {result[:2]}")
            skipped.append(f"{q.where}: {reason}")
        elif not has_data(result):
            if metric_names(q.expr) & CARD_METRICS:
                skipped.append(f"{q.where}: {CARD_REASON}")
            else:
                failed.append(f"{q.where}: no data for {q.expr}")

    # The dashboard's variable lists the variants.
    variants = prom.label_values("variant", "leanserve_requests_in_flight")
    assert BASE in variants, variants

    print("\nskipped PromQL queries:\n  " + "\n  ".join(skipped or ["none"]))
    record_property("skipped_queries", skipped)
    if skipped:
        warnings.warn(UserWarning("PromQL queries skipped:\n" + "\n".join(skipped)), stacklevel=1)
    assert not failed, "\n".join(failed)
    skip_reasons = {s.split(": ", 1)[1] for s in skipped}
    assert skip_reasons <= {*absent.values(), CARD_REASON}, skip_reasons

    # What the test made happen is what the series say.
    failures = prom.query(f'leanserve_build_failures_total{{variant="{BASE}:{FAILING_RECIPE}"}}')
    assert [float(s["value"][1]) for s in failures] == [2.0]
    assert prom.value(f'max(leanserve_engine_restarts_total{{variant="{BASE}"}})') == restarts
    assert prom.value(f'sum(leanserve_fallbacks_total{{variant="{BASE}"}})') >= 1
    assert prom.value(f'sum(leanserve_requests_total{{variant="{BASE}",status="503"}})') >= 1
    # The build-failed alert's whole expression (threshold included) holds, and Prometheus
    # evaluates every rule without error; that alert is pending or firing.
    (rule,) = [r for r in alert_rules() if r["alert"] == "LeanserveVariantBuildFailed"]
    assert prom.query(rule["expr"], at=end), rule["expr"]
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(alert_rules())
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alerts = {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["alerts"]}
        if "LeanserveVariantBuildFailed" in alerts:
            break
        time.sleep(1)
    assert alerts.get("LeanserveVariantBuildFailed") in ("pending", "firing"), alerts


# -- the expression helpers alone (fast) ---------------------------------------------------------
def test_split_condition():
    assert split_condition("a / b > 0.05") == ("a / b", ">", "0.05")
    assert split_condition('sum by (v) (rate(x{s=~"5..",k!="a>b"}[5m])) >= 2') == (
        'sum by (v) (rate(x{s=~"5..",k!="a>b"}[5m]))',
        ">=",
        "2",
    )
    assert split_condition("up == 0") == ("up", "==", "0")
    assert split_condition("up == bool 0") is None
    assert split_condition("rate(x[5m])") is None
    assert split_condition("a > 1 and b < 2") is None  # the root is `and`, not a comparison
    assert split_condition("(a > 1) + b") is None  # the comparison is inside parentheses
    assert split_condition("max_over_time(x[1h]) > 0 # note: > 5") == (
        "max_over_time(x[1h])",
        ">",
        "0 # note: > 5",
    )
    assert split_condition("sort_desc(x) < 1") == ("sort_desc(x)", "<", "1")


def test_alert_conditions_are_found():
    """Every shipped alert has a threshold comparison at its root, and its left side is what
    the end-to-end test evaluates."""
    for rule in alert_rules():
        split = split_condition(rule["expr"].strip())
        assert split is not None, rule["alert"]
        assert metric_names(split[0]), rule["alert"]


def test_grafana_variables_are_replaced():
    for q in dashboard_queries():
        assert "$" not in q.expr, q
