"""Debian's chromium driven by Playwright for Python, for the status page's tests.

Playwright's own browser download is never used (`playwright install` is not run): the browser
is the `chromium` package, which tests/deploy/tools.py installs. Without it (or without
Playwright) the tests skip, or fail with LEANSERVE_REQUIRE_TOOLS=1.
"""

from __future__ import annotations

import pytest

from tests.deploy import tools

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(reason: str):
    if tools.require_tools():
        pytest.fail(reason)
    pytest.skip(reason)


def launch(playwright):
    """A headless chromium, or a skip (a failure with LEANSERVE_REQUIRE_TOOLS=1) saying why."""
    try:
        path = tools.chromium()
    except tools.ToolMissing as exc:
        _missing(str(exc))
    return playwright.chromium.launch(executable_path=str(path), args=ARGS)


def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        _missing("playwright is not installed: pip install playwright (the dev extra has it)")
    return start()
