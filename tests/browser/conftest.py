"""Headless Chromium (Debian's `chromium` package) driven by Playwright, for the console.

Skipped, with the reason, where Playwright or the chromium binary is missing: `.ci/run`
installs chromium; Playwright's own browser download is never used.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.conftest import pipeline, stub  # noqa: F401 - the live stack's parts

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright package (uv sync installs the dev group)")
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "browser tests need Debian's chromium: apt-get install -y chromium "
            "(.ci/run installs it when it runs as root)"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()
