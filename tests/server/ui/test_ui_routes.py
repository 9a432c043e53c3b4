"""The status page's files and its summary endpoint, without an engine: the app's only engine
is an unreachable remote URL (nothing listens there)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import load_settings
from server.ui.router import STATIC

BASE = "smollm2-135m-instruct"
KEY = "ui-key"


def make_client(tmp_path, **overrides) -> TestClient:
    settings = load_settings(
        home=tmp_path, variants=[], remote_engines={BASE: "http://127.0.0.1:9"}, **overrides
    )
    return TestClient(create_app(settings))


@pytest.fixture
def keyed(tmp_path):
    with make_client(tmp_path, auth={"api_keys": [KEY]}) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")],
)
def test_page_files_need_no_key(keyed, path, kind):
    # With keys on, the page itself still loads: it carries no data, only the code that asks.
    r = keyed.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_ui_without_slash_redirects(keyed):
    r = keyed.get("/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui/"


@pytest.mark.parametrize("name", ["router.py", "..%2Frouter.py", "index.htm", ".."])
def test_only_the_page_files_are_served(keyed, name):
    r = keyed.get(f"/ui/{name}")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"


def test_summary_needs_the_key(keyed):
    r = keyed.get("/v1/ui/summary")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = keyed.get("/v1/ui/summary", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    body = r.json()
    assert body["base"] == BASE and body["quality_floor"] == 0.9 and body["available"] is True
    assert body["default_policy"] == "quality"


def test_summary_says_when_metrics_are_off(tmp_path):
    with make_client(tmp_path, metrics_enabled=False) as client:
        body = client.get("/v1/ui/summary").json()
    assert body["available"] is False and "metrics" in body["reason"]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[a] for a in ("src", "href", "action") if attrs.get(a)]
        self._in_script = tag == "script"
        if tag == "script" and not attrs.get("src"):
            self.inline_scripts += 1
        assert not any(a.startswith("on") for a in attrs), f"inline handler on <{tag}>"


def test_the_page_loads_nothing_from_elsewhere():
    links = _Links()
    links.feed((STATIC / "index.html").read_text())
    assert sorted(links.urls) == ["app.js", "style.css"]
    assert links.inline_scripts == 0
    script = (STATIC / "app.js").read_text()
    # The only absolute URL is the SVG namespace, a name that is never fetched.
    assert set(re.findall(r"https?://[^\s\"'`]+", script)) == {"http://www.w3.org/2000/svg"}
    fetched = re.findall(r"getJSON\(\s*[\"'`]([^\"'`]*)", script)
    assert fetched and all(path.startswith("/") and not path.startswith("//") for path in fetched)
    css = (STATIC / "style.css").read_text()
    assert "url(" not in css and "@import" not in css


def test_the_script_never_writes_markup_or_keeps_the_key_for_good():
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "localStorage" not in script and "sessionStorage" in script
