"""Fixtures of the integration tests: the stand-in Hub (tests/support/hub_standin.py), started per test."""

from __future__ import annotations

import pytest

from tests.support.hub_standin import TOKEN, StandIn


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    server = StandIn(TOKEN).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py keeps everything else offline
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # no CAS server here: plain LFS
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    close_session()
    try:
        yield server
    finally:
        close_session()
        server.stop()
        assert not server.unknown, f"the client called routes the stand-in lacks: {server.unknown}"
