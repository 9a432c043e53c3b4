"""A real Prometheus server (Debian package `prometheus`) for end-to-end tests and benchmarks.

Its configuration is deploy/prometheus.yml with three changes for a test: the `leanserve` job
scrapes the given gateway instead of the compose service, the intervals are 1 s, and the rule
file is deploy/alerts.yml by absolute path. Everything else (jobs, paths, rule loading) is the
shipped file's, so a real server also checks that the file and the rules load.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from compress.vllm_command import free_port
from tests.deploy import tools

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def prometheus_binary() -> Path:
    """`prometheus` from PATH, else from Debian's package (tools.promtool installs it as root).
    Raises tools.ToolMissing with the reason when neither works."""
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    tools.promtool()  # apt-get install prometheus: the same package carries both
    found = shutil.which("prometheus")
    if not found:
        raise tools.ToolMissing("prometheus: the Debian package installed no `prometheus`")
    return Path(found)


def get_prometheus_or_skip() -> Path:
    """The binary; without it the test fails under LEANSERVE_REQUIRE_TOOLS=1, else skips."""
    import pytest

    try:
        return prometheus_binary()
    except tools.ToolMissing as exc:
        message = f"a real Prometheus is needed: {exc}"
        if tools.require_tools():
            pytest.fail(message)
        pytest.skip(message)


def _is_finite(value: str) -> bool:
    return not math.isnan(float(value)) and not math.isinf(float(value))


def has_data(result: list[dict]) -> bool:
    """True when a query result (instant vector or range matrix) holds a finite sample."""
    for series in result:
        if "value" in series and _is_finite(series["value"][1]):
            return True
        if any(_is_finite(v) for _, v in series.get("values", [])):
            return True
    return False


@dataclass
class Prometheus:
    proc: subprocess.Popen
    url: str
    workdir: Path

    def api(self, path: str, **params) -> dict | list:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query (the way rules are evaluated), at `at` (unix time) or now."""
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1.0) -> list[dict]:
        """Range query (the way Grafana draws a time-series panel)."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step_s)
        return data["result"]

    def value(self, expr: str) -> float:
        """The single value of a scalar-like instant query (e.g. sum(...)); 0 when empty."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1]) if result else 0.0

    def label_values(self, label: str, match: str) -> list[str]:
        return self.api(f"label/{label}/values", **{"match[]": match})

    def target(self, job: str) -> dict | None:
        """The job's one target; None until service discovery has found it."""
        targets = self.api("targets", state="active")["activeTargets"]
        found = [t for t in targets if t["labels"]["job"] == job]
        assert len(found) <= 1, f"{job}: {len(found)} targets"
        return found[0] if found else None

    def wait_scrape_after(self, t: float, job: str = "leanserve", timeout_s: float = 30) -> None:
        """Wait until a scrape of `job` that started after unix time `t` has been stored."""
        deadline, target = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            target = self.target(job) or {}
            last = target.get("lastScrape") or ""
            if target.get("health") == "up" and _unix(last) > t:
                # lastScrape is when the scrape began; its samples land a moment later.
                time.sleep(max(0.2, 2 * float(target.get("lastScrapeDuration") or 0)))
                return
            time.sleep(0.2)
        raise TimeoutError(f"no scrape of {job} after {t} within {timeout_s} s: {target}")

    def reload(self, config: dict) -> None:
        """Replace the configuration and reload it (needs lifecycle=True at start)."""
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        response = httpx.post(f"{self.url}/-/reload", timeout=30)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = (self.workdir / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _unix(rfc3339: str) -> float:
    """Prometheus's timestamps (RFC 3339, nanoseconds) as unix seconds; 0 when unset."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    if not m or rfc3339.startswith("0001-"):
        return 0.0
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    fraction = (m.group(2) or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{m.group(1)}.{fraction}{zone}").timestamp()


def config_for(gateway_url: str, port: int, interval: str = "1s") -> dict:
    """deploy/prometheus.yml, pointed at `gateway_url`, with `interval` scrapes and rules."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    address = urlsplit(gateway_url).netloc
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["leanserve"]["static_configs"] = [{"targets": [address]}]
    if "prometheus" in jobs:
        jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    return config


def start_prometheus(
    binary: Path,
    workdir: Path,
    gateway_url: str,
    interval: str = "1s",
    timeout_s: float = 60,
    lifecycle: bool = False,
) -> Prometheus:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(config_for(gateway_url, port, interval), sort_keys=False))
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            *(["--web.enable-lifecycle"] if lifecycle else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", workdir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({proc.returncode}):\n{prom.log_tail()}")
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                return prom
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    prom.stop()
    raise TimeoutError(f"prometheus not ready in {timeout_s} s:\n{prom.log_tail()}")
