"""Hub services: sidecar actors started before the tree and stopped after it."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio
import trio.testing

from strategies import Intensity
from supervisor import ChildSpec, ConfigError, Event, Hub, Service, ServiceFailed
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


async def test_a_service_that_keeps_failing_is_restarted_then_left_out(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A non-essential service that raises is restarted with backoff; past the restart
    intensity it is logged and left out, and supervision goes on without it."""
    broken, at_start = Broken(), BrokenAtStart()
    hub = Hub(
        [ChildSpec(id="a", argv=["sim"])],
        backend=SimulatedProcessBackend({}),
        services=[broken, at_start],
    )
    with caplog.at_level(logging.ERROR, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(60)
            assert ["running"] == [r.info.state.value for r in hub.which_children()]
            await hub.stop()
    assert ["broken-at-start", "broken"] == hub.failed_services
    assert "service 'broken' failed (RuntimeError: service bug); restarting it in" in caplog.text
    assert (
        "service 'broken' failed (RuntimeError: service bug) more than its restart intensity "
        "of 5 restarts in 30s; supervision goes on without it"
    ) in caplog.text


@attrs.define
class FailsOnce:
    """Raises on its first run, then runs until cancelled."""

    name: str = "fails-once"
    runs: int = 0
    up: bool = False

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        self.runs += 1
        task_status.started()
        if self.runs == 1:
            raise RuntimeError("first run fails")
        self.up = True
        await trio.sleep_forever()


async def test_a_service_that_raises_once_is_restarted_and_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    svc = FailsOnce()
    hub = Hub(
        [ChildSpec(id="a", argv=["sim"])], backend=SimulatedProcessBackend({}), services=[svc]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(1)
        assert (2, True, []) == (svc.runs, svc.up, hub.failed_services)
        await hub.stop()


@attrs.define
class EssentialBroken:
    name: str = "vital"
    essential: bool = True
    runs: int = 0

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        self.runs += 1
        task_status.started()
        raise RuntimeError("cannot work")


async def test_an_essential_service_that_keeps_failing_stops_the_hub(
    autojump_clock: trio.testing.MockClock,
) -> None:
    svc = EssentialBroken()
    hub = Hub(
        [ChildSpec(id="a", argv=["sim"])],
        backend=SimulatedProcessBackend({}),
        services=[svc],
        service_intensity=Intensity(2, 10),
    )
    with pytest.raises(ServiceFailed, match=r"service 'vital' failed more than 2 restarts"):
        await hub.serve()
    assert 3 == svc.runs
    assert hub.root.ended


@attrs.define
class GivesUp:
    name: str = "claim"

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(2)
        async with trio.open_nursery():  # wrapped in a group: still found
            raise ServiceFailed("another hub took our id")


async def test_a_service_raising_service_failed_stops_the_hub_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(
        [ChildSpec(id="a", argv=["sim"])], backend=SimulatedProcessBackend({}), services=[GivesUp()]
    )
    with pytest.raises(ServiceFailed, match="another hub took our id"):
        await hub.serve()
    assert 2 <= trio.current_time() < 3


def test_something_that_is_not_a_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="is not a service"):
        Hub([ChildSpec(id="a", argv=["sim"])], services=[object()])  # type: ignore[list-item]
