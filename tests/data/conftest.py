"""Fixtures for the episode-store tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _column_cache(tmp_path_factory, monkeypatch):
    """Keep the memory-mapped column cache out of the home directory."""
    monkeypatch.setenv("ANYSKILL_CACHE", str(tmp_path_factory.mktemp("cache")))
