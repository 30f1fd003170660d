"""Hubs behind Redis Sentinel: one master, one replica, 3 Sentinels (tests/redis_sentinel.py),
real ``redis-server`` processes."""

from __future__ import annotations

import pytest

from ...redis_sentinel import MASTER, SentinelTopology, sentinel_env, sentinels

__all__ = ["sentinel_env", "sentinels"]

pytestmark = pytest.mark.slow


def test_the_fixture_has_a_master_a_linked_replica_and_3_sentinels(
    sentinel_env: SentinelTopology,
) -> None:
    master, replica = sentinel_env.master(), sentinel_env.replica()
    assert master.port != replica.port
    with master.client() as c:
        c.set("k", "v")
        assert c.wait(1, 5000) == 1
    with replica.client() as c:
        assert c.get("k") == "v"
    for s in sentinel_env.sentinels:
        with s.client() as c:
            assert len(c.sentinel_slaves(MASTER)) == 1
