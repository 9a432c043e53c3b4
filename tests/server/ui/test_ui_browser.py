"""The status page in a real browser (Debian's chromium through Playwright), against a real
gateway with the real default model, API keys on, and one variant built on the fly.

The gateway gets a home of its own whose `models` is the shared store's (the base is converted
once), so its variant store starts empty and w8a8 is really built while the page is open.
Set LEANSERVE_UI_SCREENSHOT=docs/ui.png to write the screenshot there (else into tmp_path).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.server.gateway import REPO, start_gateway
from tests.server.test_variants_e2e import SMALL_BUILD
from tests.server.ui.browser import launch, sync_playwright

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
KEY = "ui-test-key-7f3a"
ADMIN = "ui-test-admin"
EXPERIMENT = "aa-latency"
HOSTILE_ARM = '<img src=x onerror="window.__pwned=1">'
BUILD_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def gw(home, tmp_path_factory):
    own = tmp_path_factory.mktemp("ui-home")
    (home / "models").mkdir(parents=True, exist_ok=True)
    (own / "models").symlink_to(home / "models", target_is_directory=True)
    env = {
        "LEANSERVE_VARIANTS": json.dumps(["w8a8"]),
        "LEANSERVE_BUILD_ARGS": json.dumps(SMALL_BUILD),
        "LEANSERVE_BUILD_SPEED": "false",  # CI time: cost is the size ratio
        "LEANSERVE_AUTH__API_KEYS": json.dumps([KEY]),
        "LEANSERVE_AUTH__ADMIN_KEY": ADMIN,
    }
    gateway = start_gateway(own, own / "gateway.log", extra_env=env)
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


class Watched:
    """A browser context whose every request is recorded; any to another origin is refused."""

    def __init__(self, browser, origin: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.requests: list[tuple[str, str | None]] = []  # (url, authorization)
        self.elsewhere: list[str] = []

        def route(r):
            url = r.request.url
            self.requests.append((url, r.request.all_headers().get("authorization")))
            if url.startswith(origin + "/"):
                r.continue_()
            else:
                self.elsewhere.append(url)
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()

    def close(self) -> None:
        self.context.close()


def _enter_key(page, key: str) -> None:
    page.locator("#key-input").fill(key)
    page.locator("#key-form button[type=submit]").click()


def _admin(gw, method: str, path: str, body: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.request(method, f"{gw.url}{path}", json=body, headers=headers, timeout=30)


def _chat(gw, model: str, user: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {KEY}", "X-User-Id": user}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def _wait(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_page_shows_variants_build_experiment_and_frontier(browser, gw, tmp_path):
    arms = [{"name": "control", "variant": BASE}, {"name": "candidate", "variant": BASE}]
    guardrails = [{"metric": "error_rate", "margin": 0.5}]
    body = {"name": EXPERIMENT, "arms": arms, "guardrails": guardrails}
    created = _admin(gw, "POST", "/v1/experiments", body)
    assert created.status_code == 201, created.text
    for i in range(30):  # A/A traffic, so the arms have samples and comparisons
        assert _chat(gw, BASE, f"user-{i}").status_code == 200

    watched = Watched(browser, gw.url)
    page = watched.page
    page.goto(f"{gw.url}/ui/")
    _enter_key(page, KEY)
    base_row = page.locator('#variants tr[data-variant="base"]')
    base_row.wait_for(timeout=30_000)
    assert BASE in base_row.inner_text()

    # The variant while it builds: its state and a percentage between 0 and 100, as the page
    # refreshes itself (no reload from here on).
    row = page.locator('#variants tr[data-variant="w8a8"]')
    seen: set[str] = set()

    def building_percent():
        text = row.inner_text() if row.count() else ""
        found = (
            re.search(r"(\d+(?:\.\d)?) %", row.locator("td.build").inner_text()) if text else None
        )
        if "building" in text and found and 0 < float(found.group(1)) < 100:
            seen.add(found.group(1))
            return True
        return False

    _wait(building_percent, BUILD_TIMEOUT_S, "the w8a8 row to show a build percentage")
    page.screenshot(path=str(tmp_path / "building.png"), full_page=True)
    assert page.locator("#frontier svg circle").count() >= 1  # the base, at least

    # The experiment: its arms with their sample sizes, and the decision the report gives.
    card = page.locator(f'#experiments [data-experiment="{EXPERIMENT}"]')
    card.wait_for(timeout=30_000)
    report = httpx.get(
        f"{gw.url}/v1/experiments/{EXPERIMENT}/report",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    ).json()
    for arm in ("control", "candidate"):
        arm_row = card.locator(f'tr[data-arm="{arm}"]')
        assert arm_row.locator("td.n").inner_text() == str(report["arms"][arm]["n"])
    assert sum(report["arms"][a]["n"] for a in ("control", "candidate")) == 30
    # Guardrails: what is configured, and each arm's state (none breached here).
    assert "guardrails: error_rate (margin 0.5)" in card.inner_text()
    assert report["arms"]["candidate"]["guardrail"] == {"stopped": False}
    assert card.locator('tr[data-arm="candidate"] td.guardrail').inner_text() == "ok"
    latency = report["arms"]["candidate"]["vs_control"]["latency_s"]
    effect = card.locator('tr[data-arm="candidate"][data-metric="latency_s"]')
    decision = effect.locator("td.decision").inner_text()
    if "decision" in latency:  # the always-valid figures, when the report has them
        assert decision.strip() == latency["decision"]
        low, high = latency["confidence_sequence"] or [None, None]
        if low is not None:
            assert effect.locator("td.cs").inner_text().startswith("[")
    else:
        assert decision.strip() == "–"

    # Once built, the variant's card puts a second point on the frontier plot.
    _wait(
        lambda: re.search(r"\b0\.\d{3}\b", row.locator("td").nth(4).inner_text()),
        BUILD_TIMEOUT_S,
        "the w8a8 card's top-1 agreement",
    )
    _wait(lambda: page.locator("#frontier svg circle").count() >= 2, 30, "two frontier points")
    labels = page.locator("#frontier svg text.label").all_text_contents()
    assert "base" in labels and "w8a8" in labels
    assert seen, "no build percentage was seen"

    # Serving: the variant's engine comes up; traffic to both shows in the rates.
    _wait(
        lambda: "ready" in row.locator("td").nth(1).inner_text(),
        600,
        "w8a8 to be served",
        interval_s=1,
    )
    for i in range(6):
        assert _chat(gw, f"{BASE}:w8a8", f"pin-{i}").status_code == 200
    _wait(
        lambda: (
            page.locator('#traffic tr[data-variant="smollm2-135m-instruct:w8a8"] td')
            .nth(1)
            .inner_text()
            not in ("–", "0.00")
        ),
        30,
        "a request rate for w8a8",
    )
    engines = page.locator("#engines tbody tr").all_inner_texts()
    assert len(engines) == 2 and all("ready" in e for e in engines)
    time.sleep(6)  # one more refresh, with a sample in the sparklines
    shot = Path(os.environ.get("LEANSERVE_UI_SCREENSHOT") or tmp_path / "ui.png")
    if not shot.is_absolute():
        shot = REPO / shot
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size < 300_000
    assert watched.elsewhere == [], watched.elsewhere
    watched.close()


def test_page_asks_for_the_key_and_keeps_it_in_the_tab(browser, gw):
    watched = Watched(browser, gw.url)
    page = watched.page
    page.goto(f"{gw.url}/ui/")
    form = page.locator("#key-form")
    form.wait_for(state="visible", timeout=30_000)
    assert page.locator("#content").is_hidden()
    assert page.locator("#variants tbody tr").count() == 0

    _enter_key(page, "not-the-key")
    page.locator("#key-error").filter(has_text="refused").wait_for(timeout=30_000)
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

    _enter_key(page, KEY)
    page.locator('#variants tr[data-variant="base"]').wait_for(timeout=30_000)
    assert form.is_hidden()
    assert page.evaluate("sessionStorage.getItem('leanserve.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0
    page.reload()  # the tab keeps the key: no prompt again
    page.locator('#variants tr[data-variant="base"]').wait_for(timeout=30_000)
    assert form.is_hidden()

    assert KEY not in page.url
    assert all(KEY not in url for url, _ in watched.requests)
    api = [(url, auth) for url, auth in watched.requests if "/v1/" in url]
    assert api and any(auth == f"Bearer {KEY}" for _, auth in api)
    # The page's own files went out without the key.
    files = [auth for url, auth in watched.requests if "/ui/" in url and "/v1/" not in url]
    assert files and all(auth is None for auth in files)
    assert watched.elsewhere == [], watched.elsewhere
    watched.close()


def test_names_are_shown_as_text_not_markup(browser, gw):
    # Arm names are free text from the admin API: the page must show them, never run them.
    arms = [{"name": HOSTILE_ARM, "variant": BASE}, {"name": "b", "variant": BASE}]
    created = _admin(gw, "POST", "/v1/experiments", {"name": "names", "arms": arms})
    assert created.status_code == 201, created.text
    watched = Watched(browser, gw.url)
    page = watched.page
    page.goto(f"{gw.url}/ui/")
    _enter_key(page, KEY)
    card = page.locator('#experiments [data-experiment="names"]')
    card.wait_for(timeout=30_000)
    assert HOSTILE_ARM in card.inner_text()
    assert page.locator("#experiments img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert all("/x" not in url for url, _ in watched.requests)
    watched.close()
