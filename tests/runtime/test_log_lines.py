"""The log's fast paths write what the slow ones did: the timestamp text (its second
formatted once) equals datetime's, and an event's line goes through the logger's
handlers with its fields."""

from __future__ import annotations

import logging
import random
from datetime import datetime

import pytest

from supervisor._events import ChildStopped
from supervisor._log import _iso, _log_event, logger


def test_iso_matches_datetime_at_every_rounding_edge() -> None:
    rng = random.Random(24)
    base = 1_800_000_000.0
    times = [base + rng.uniform(-1e8, 1e8) for _ in range(2000)]
    times += [round(t, 3) + d for t in times[:500] for d in (0.0, 0.0005, 0.0009995, -1e-7)]
    times += [base + 0.9999996, base + 0.9999994, base]  # rounds up into the next second
    for t in times:
        assert datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds") == _iso(
            t
        ), t


def test_an_event_is_logged_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    event = ChildStopped(at=0.0, supervisor="hub/p", child_id="a", reason="shutdown")
    with caplog.at_level(logging.INFO, logger=logger.name):
        _log_event(event)
    (record,) = caplog.records
    assert "hub/p/a stopped (shutdown)" == record.getMessage()
    assert "stopped" == record.event_kind  # type: ignore[attr-defined]
    assert "a" == record.agent  # type: ignore[attr-defined]
    assert logging.INFO == record.levelno
