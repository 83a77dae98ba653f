"""One `allot up` for the browser tests, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hubup import CHROMIUM, CHROMIUM_ARGS, HubUp, start_hub

ARTEFACTS = Path(os.environ.get("ALLOTMENT_ARTEFACTS", "test-artefacts"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.browser)
            if os.geteuid() != 0 or not Path(CHROMIUM).exists():
                item.add_marker(
                    pytest.mark.skip(
                        reason="needs root and Debian's chromium (scripts/test installs it)"
                    )
                )


@pytest.fixture(scope="package")
def hub_up() -> Iterator[HubUp]:
    # Not under pytest's own temporary directory (0700): sessions, running as their users,
    # must reach the environment in the hub's data directory; not under /tmp, which each
    # session has a private one of.
    root = Path(tempfile.mkdtemp(prefix="allotment-e2e-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    hub = start_hub(root / "data", Path(__file__).with_name("policy.yaml"))
    try:
        yield hub
    finally:
        hub.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Module scope: while Playwright's sync API is open, an event loop runs in this thread,
    # and the asyncio tests that follow could not start theirs.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def artefacts() -> Path:
    ARTEFACTS.mkdir(exist_ok=True)
    return ARTEFACTS
