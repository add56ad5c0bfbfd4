"""Shared by the browser and end-to-end tests: Debian's chromium, never `playwright install`."""

from __future__ import annotations

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
