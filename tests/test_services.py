"""Hub services: sidecar actors started before the tree and stopped after it."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio
import trio.testing

from supervisor import ChildSpec, ConfigError, Event, Hub, Service
from supervisor.testing import SimulatedProcessBackend


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@attrs.define
class Recorder:
    """Records every event it sees, and whether it was cancelled after the tree ended."""

    name: str = "recorder"
    seen: list[Event] = attrs.field(factory=list)
    tree_ended_before_cancel: bool | None = None

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        events = hub.bus.subscribe()
        task_status.started()
        try:
            async for event in events:
                self.seen.append(event)
        finally:
            self.tree_ended_before_cancel = hub.root.ended
            while True:  # what was published before the cancel, not yet read
                try:
                    self.seen.append(events.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break


@attrs.define
class Broken:
    name: str = "broken"

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(1)
        raise RuntimeError("service bug")


@attrs.define
class BrokenAtStart:
    name: str = "broken-at-start"

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        raise RuntimeError("cannot start")


async def test_a_service_sees_every_event_and_stops_after_the_tree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder()
    assert isinstance(rec, Service)
    hub = Hub(
        [ChildSpec(id="a", argv=["sim"])], backend=SimulatedProcessBackend({}), services=[rec]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(5)
        await hub.stop()
    kinds = [e.kind for e in rec.seen]
    assert "starting" == kinds[0]  # started before the tree: nothing missed
    assert "supervisor_stopped" == kinds[-1]
    assert rec.tree_ended_before_cancel is True


async def test_a_failing_service_is_logged_and_supervision_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub(
        [ChildSpec(id="a", argv=["sim"])],
        backend=SimulatedProcessBackend({}),
        services=[Broken(), BrokenAtStart()],
    )
    with caplog.at_level(logging.ERROR, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(10)
            assert ["running"] == [r.info.state.value for r in hub.which_children()]
            await hub.stop()
    assert ["broken-at-start", "broken"] == hub.failed_services
    assert "service 'broken' failed; supervision goes on without it" in caplog.text


def test_something_that_is_not_a_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="is not a service"):
        Hub([ChildSpec(id="a", argv=["sim"])], services=[object()])  # type: ignore[list-item]
