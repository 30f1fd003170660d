"""Regression tests for the runtime faults of issue 18 (2, 4, 5, 10 and smaller ones),
each named after its fault. Real processes throughout; each failed on df8c60e."""

from __future__ import annotations

import time
from typing import Any

import trio

from supervisor import Event, PoolSpec

from .helpers import drain, is_, python_child, running, wait_event

# A healthy agent: READY, then a HEARTBEAT every 0.1 s, whatever the hub does.
HEARTBEATER = (
    "import os, time\n"
    "fd = int(os.environ['HUBVISOR_NOTIFY_FD'])\n"
    "os.write(fd, b'READY')\n"
    "while True:\n"
    "    os.write(fd, b'HEARTBEAT')\n"
    "    time.sleep(0.1)\n"
)
# A hung agent: READY, then silence.
SILENT = (
    "import os, time\nos.write(int(os.environ['HUBVISOR_NOTIFY_FD']), b'READY')\ntime.sleep(1000)\n"
)


def _pool(code: str, size: int, **kw: Any) -> PoolSpec:
    template = python_child("a", code, ready="notify", **kw)
    return PoolSpec(agent_type="hb", template=template, size=size)


async def _beats_after(
    events: trio.MemoryReceiveChannel[Event], ids: set[str], after: float, seen: list[Event]
) -> None:
    """Wait until every child in ``ids`` published a heartbeat event later than ``after``."""
    waiting = set(ids)

    def done(e: Event) -> bool:
        if e.kind == "heartbeat" and e.at > after:
            waiting.discard(e.child_id)
        return not waiting

    await wait_event(events, done, seen)


# --------------------------------------------------------------------------------------
# Fault 2: a stalled hub must not kill its healthy agents


async def test_fault2_a_stalled_hub_kills_no_healthy_agent() -> None:
    """The hub's loop blocked for 2.5x heartbeat_timeout (what kill -STOP does) while
    three real agents heartbeat: none is judged hung, none restarts, and the watchdogs
    keep judging them long after the stall."""
    timeout = 1.0
    async with running(_pool(HEARTBEATER, 3, heartbeat_timeout=timeout)) as (hub, events):
        ids = {"hb-agent-1", "hb-agent-2", "hb-agent-3"}
        seen: list[Event] = []
        await _beats_after(events, ids, trio.current_time(), seen)
        time.sleep(2.5 * timeout)  # a stalled hub: the trio loop does not run at all
        resumed = trio.current_time()
        # Past every deadline that was due during the stall, and well beyond one more.
        await _beats_after(events, ids, resumed + 2 * timeout, seen)
        seen += drain(events)
        bad = [e for e in seen if e.kind in ("hung", "exited", "restarting")]
        assert bad == []
        assert {r.info.restarts for r in hub.which_children() if r.info.kind == "worker"} == {0}


async def test_fault2_a_silent_agent_is_still_judged_hung() -> None:
    """An agent that falls silent is killed as hung after heartbeat_timeout, and a hub
    stall while it is silent only postpones the verdict by the stall: the silence the
    hub ran through is at least heartbeat_timeout less the stall meter's tick."""
    timeout = 1.0
    async with running(_pool(SILENT, 1, heartbeat_timeout=timeout)) as (hub, events):
        up = await wait_event(events, is_("running", "hb-agent-1"))
        hung = await wait_event(events, is_("hung", "hb-agent-1"))
        assert hung.at - up.at >= timeout * 0.9
        exited = await wait_event(events, is_("exited", "hb-agent-1"))
        assert not exited.expected  # type: ignore[attr-defined]
        # Again, with the hub stalled for twice the timeout during its silence.
        up = await wait_event(events, is_("running", "hb-agent-1"))
        before = trio.current_time()
        time.sleep(2 * timeout)
        stall = trio.current_time() - before
        hung = await wait_event(events, is_("hung", "hb-agent-1"))
        assert hung.at - up.at - stall >= timeout / 2
