"""Helpers for tests that run real processes."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from supervisor import ChildSpec, Event, Hub

PY = sys.executable
TIMEOUT = 30.0  # generous: machines are noisy; tests wait for events, not for time


def sleeper(cid: str, **kw: Any) -> ChildSpec:
    """A child that runs until stopped."""
    kw.setdefault("shutdown", 2.0)
    kw.setdefault("start_period", 0.2)
    kw.setdefault("argv", ["sleep", "1000"])
    return ChildSpec(id=cid, **kw)


def python_child(cid: str, code: str, **kw: Any) -> ChildSpec:
    """A child running ``python -c code``."""
    kw.setdefault("shutdown", 2.0)
    kw.setdefault("start_period", 0.2)
    return ChildSpec(id=cid, argv=[PY, "-c", code], **kw)


async def wait_event(
    events: trio.MemoryReceiveChannel[Event],
    pred: Callable[[Event], bool],
    seen: list[Event] | None = None,
    timeout: float = TIMEOUT,
) -> Event:
    """Receive events until one satisfies ``pred``; keep all received in ``seen``."""
    with trio.fail_after(timeout):
        async for event in events:
            if seen is not None:
                seen.append(event)
            if pred(event):
                return event
    raise AssertionError("event stream ended")  # pragma: no cover


async def wait_all(
    events: trio.MemoryReceiveChannel[Event],
    *preds: Callable[[Event], bool],
    seen: list[Event] | None = None,
    timeout: float = TIMEOUT,
) -> list[Event]:
    """Receive events until each predicate matched one (in any order); return the matches."""
    matches: list[Event | None] = [None] * len(preds)

    def done(e: Event) -> bool:
        for i, pred in enumerate(preds):
            if matches[i] is None and pred(e):
                matches[i] = e
        return all(m is not None for m in matches)

    await wait_event(events, done, seen, timeout)
    return [m for m in matches if m is not None]


def drain(events: trio.MemoryReceiveChannel[Event]) -> list[Event]:
    """Take the events already delivered, without waiting."""
    taken = []
    while True:
        try:
            taken.append(events.receive_nowait())
        except trio.WouldBlock:
            return taken


def is_(kind: str, child_id: str | None = None, **fields: Any) -> Callable[[Event], bool]:
    """A predicate: an event of ``kind`` about ``child_id`` with these field values."""

    def pred(e: Event) -> bool:
        return (
            e.kind == kind
            and (child_id is None or e.child_id == child_id)
            and all(getattr(e, k, None) == v for k, v in fields.items())
        )

    return pred


@asynccontextmanager
async def running(
    spec: Any, **kw: Any
) -> AsyncIterator[tuple[Hub, trio.MemoryReceiveChannel[Event]]]:
    """Serve a hub for the body of the block, then stop it."""
    hub = Hub(spec, **kw)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        try:
            yield hub, events
        finally:
            await hub.stop()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Pids of live processes in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` on the trio clock until it holds (for OS state with no event)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


__all__ = [
    "PY",
    "alive",
    "group_members",
    "is_",
    "python_child",
    "running",
    "sleeper",
    "until",
    "wait_event",
]
