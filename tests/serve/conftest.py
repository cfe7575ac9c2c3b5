"""Fixtures: the counting policy and a server for it on an ephemeral port."""

from __future__ import annotations

import pytest
from serve_helpers import CountingPolicy

from anyskill.serve.server import ServerConfig, ServerThread


@pytest.fixture
def policy() -> CountingPolicy:
    return CountingPolicy()


@pytest.fixture
def server(policy):
    # error_delay_ms=0: tests send many bad requests in a row on purpose
    cfg = ServerConfig(port=0, max_request_bytes=64 << 10, error_delay_ms=0)
    with ServerThread(policy, cfg) as srv:
        yield srv
