"""Fixtures shared by the experiment tests."""

from __future__ import annotations

import pytest

from tests.server.experiments.helpers import replica


@pytest.fixture
async def replicas(tmp_path):
    """Two gateway replicas' Experiments on one SQLite store, started and stopped."""
    a, b = replica(tmp_path / "shared.db"), replica(tmp_path / "shared.db")
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()
