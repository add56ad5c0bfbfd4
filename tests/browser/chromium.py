"""Shared by the browser and end-to-end tests: Debian's chromium, never `playwright install`."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil

import pytest

ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_path() -> str | None:
    return os.environ.get("LMTT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def missing(why: str):
    """Skip on a developer's machine; fail in CI (.ci/run sets LMTT_REQUIRE_BROWSER=1)."""
    if os.environ.get("LMTT_REQUIRE_BROWSER"):
        pytest.fail(why)
    pytest.skip(why)


@contextlib.contextmanager
def launched_chromium():
    """Debian's chromium under a sync Playwright (a skip, or a failure in CI, when either is missing).
    Two sync Playwrights cannot overlap: hold one per test module at most."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        missing("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
