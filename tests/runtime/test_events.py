"""The event bus: bounded subscriptions, drop counts, kind checks (fault 11)."""

from __future__ import annotations

import math

import pytest
import trio

from supervisor import (
    ChildOutput,
    ChildRunning,
    Event,
    EventBus,
    HubvisorError,
    Registry,
    UnknownEventKind,
)
from supervisor._events import SUBSCRIPTION_BUFFER, event_kinds


def output(i: int) -> ChildOutput:
    return ChildOutput(at=float(i), supervisor="root", child_id="a", stream="stdout", line="x")


async def test_fault11_subscriptions_are_bounded_by_default() -> None:
    """A subscriber that never reads holds at most SUBSCRIPTION_BUFFER events; the rest are
    dropped without blocking the publisher and counted per subscription and on the bus."""
    bus = EventBus()
    lazy = bus.subscribe()
    reader = bus.subscribe(["output"], max_buffer=math.inf)
    assert SUBSCRIPTION_BUFFER == lazy.statistics().max_buffer_size
    for i in range(SUBSCRIPTION_BUFFER + 7):
        bus.publish(output(i))
    sub = bus.subscription(lazy)
    assert (SUBSCRIPTION_BUFFER, 7) == (sub.delivered, sub.dropped)
    assert 0 == bus.subscription(reader).dropped
    assert 7 == bus.dropped
    lazy.close()
    bus.publish(output(0))  # the closed subscriber is forgotten; its drops still count
    assert 7 == bus.dropped
    with pytest.raises(KeyError):
        bus.subscription(lazy)
    assert 1 == len(bus.subscriptions)
    bus.close()


async def test_fault11_registry_never_receives_output_lines() -> None:
    """The registry subscribes only to the kinds it folds: a flood of output lines
    (OutputSpec.events=True) never reaches its inbox, lifecycle events still do."""
    bus = EventBus()
    reg = Registry()
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run, bus)
        assert reg.subscription is not None
        assert "output" not in (reg.subscription.kinds or {"output"})
        for i in range(5000):
            bus.publish(output(i))
        assert 0 == reg.subscription.delivered
        assert 0 == reg._inbox.statistics().current_buffer_used
        bus.publish(ChildRunning(at=0.0, supervisor="root", child_id="a", pid=1))
        assert 1 == reg.subscription.delivered
        await reg.sync()
        reg.stop()
    bus.close()


def test_fault11_unknown_kind_is_refused() -> None:
    """subscribe(kinds=...) with a kind no event has raises UnknownEventKind naming it
    (it would otherwise never deliver); a bare string is refused too."""
    bus = EventBus()
    with pytest.raises(UnknownEventKind, match=r"\['runing'\]") as err:
        bus.subscribe(["running", "runing"])
    assert isinstance(err.value, HubvisorError) and isinstance(err.value, ValueError)
    with pytest.raises(UnknownEventKind, match="not the string"):
        bus.subscribe("running")
    send, _ = trio.open_memory_channel[Event](1)
    with pytest.raises(UnknownEventKind):
        bus.attach(send, ["nope"])
    assert [] == list(bus.subscriptions)


def test_own_event_classes_are_known_kinds() -> None:
    """A kind of an Event subclass of your own may be subscribed to."""
    import attrs

    @attrs.frozen(kw_only=True)
    class Deployed(Event):
        kind: str = attrs.field(init=False, default="test:deployed")

    assert {"starting", "output", "test:deployed"} <= event_kinds()
    bus = EventBus()
    events = bus.subscribe(["test:deployed"])
    bus.publish(Deployed(at=0.0, supervisor="s", child_id="x"))
    assert "test:deployed" == events.receive_nowait().kind
