"""Fixtures for the proxy-gaming tests: one small seeded world and proxies learned on it."""

from __future__ import annotations

import pytest

from mlsafety.monitoring.proxy_gaming import World, make_world


@pytest.fixture(scope="module")
def world() -> World:
    """512 outputs, 8 features: small enough for exact sweeps in milliseconds."""
    return make_world(num_outputs=512, num_features=8, seed=3)
