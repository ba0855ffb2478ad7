"""Fixtures of the integration tests: a Realtime simulator and the real bridge on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from fleet_servers import PostgresServer
from support import API_KEY, bridge_for
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator


@pytest.fixture
async def realtime() -> AsyncIterator[RealtimeSimulator]:
    simulator = RealtimeSimulator(require_key=API_KEY)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def bridge(realtime: RealtimeSimulator) -> AsyncIterator[str]:
    async with bridge_for(realtime) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server on loopback for the whole session (the store and fleet tests); skipped if not installed."""
    server = PostgresServer()
    yield server
    server.close()
