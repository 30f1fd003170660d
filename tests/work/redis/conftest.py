"""Fixtures of the Redis work tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ...redis_server import RedisServer, redis_server, redis_server_factory

__all__ = ["client", "redis_server", "redis_server_factory"]


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    """A client of the test's server for reading the record (closed after the test)."""
    c = redis_server.client()
    yield c
    c.close()
