"""Shared fixtures: a real Mosquitto, unique topics, and a guard against broken log calls."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from tests.mosquitto import MosquittoBroker


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    """One broker shared by the session; never restart it (use ``private_mosquitto``)."""
    broker = MosquittoBroker()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def private_mosquitto() -> Iterator[MosquittoBroker]:
    """A broker of this test's own, free to stop and restart."""
    broker = MosquittoBroker()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to this test, so retained messages never leak between tests."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:60]
    return f"test/{name}/{id(request)}"


class _FormatGuard(logging.Handler):
    """Fails the test when a log call's %-arguments do not format."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.getMessage()
        except Exception as exc:
            self.errors.append(f"{record.pathname}:{record.lineno}: {exc!r}")


@pytest.fixture(autouse=True)
def _log_format_guard() -> Iterator[None]:
    guard = _FormatGuard()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(guard)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(guard)
    root.setLevel(old_level)
    assert not guard.errors, f"unformattable log calls: {guard.errors}"
