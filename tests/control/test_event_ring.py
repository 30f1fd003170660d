"""The event ring keeps events as they came and makes them JSON-ready only when read:
what ``events`` shows is what it showed when each was converted at once."""

from __future__ import annotations

import time

import trio

from supervisor._events import ChildHeartbeat, ChildRunning, ChildStarting
from supervisor.control.events import EventRing


class Out:
    """A stand-in for a follower's stream: collects what it is sent."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, data: object) -> None:
        self.sent.append(data)

    def backlog(self, data: object) -> None:
        self.sent.append(data)


async def test_kept_events_are_shown_as_json_and_followers_get_the_same() -> None:
    ring = EventRing(keep=3)
    follower = Out()
    now = trio.current_time()
    events = [
        ChildStarting(at=now, supervisor="hub", child_id=f"c{n}", pid=100 + n, incarnation=1)
        for n in range(2)
    ] + [ChildRunning(at=now, supervisor="hub", child_id="c9", pid=109)]
    with ring.follow(follower, None):  # type: ignore[arg-type]
        before = time.time()
        for event in events:
            ring._add(event)
        ring._add(ChildHeartbeat(at=now, supervisor="hub", child_id="c0", pid=100))
        ring._add(ChildRunning(at=now, supervisor="hub", child_id="c8", pid=108))
        after = time.time()
    shown = Out()
    with trio.move_on_after(1):
        await ring.stream(None, {}, shown)  # type: ignore[arg-type]
    # the heartbeat is noisy (not kept, not sent unless asked for); the ring keeps 3
    assert [e["child_id"] for e in shown.sent] == ["c1", "c9", "c8"]  # type: ignore[index]
    for data in shown.sent:
        assert isinstance(data, dict)
        assert before - 1 <= data["time"] <= after + 1 and data["at"] == data["time"]
        assert data["kind"] in ("starting", "running") and data["supervisor"] == "hub"
    assert [d["child_id"] for d in follower.sent] == ["c0", "c1", "c9", "c8"]  # type: ignore[index]
    # converted when read, the kept events are what the followers got at once
    assert follower.sent[1:] == shown.sent
