"""The work service with real agent processes: dispatch, fencing, reclaim, dead letters.

The agents here are tiny scripts that speak the protocol on the raw socket (what any
language can do); tests/agents/test_agents.py covers agents.BaseAgent.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from strategies import Intensity
from supervisor import ChildSpec, Hub, ItemStatus, SupervisorSpec, WorkItem

from .. import raw_agent
from ..helpers import PY, TIMEOUT, is_, running, until, wait_event

# The agents: tests/raw_agent.py (one program, steered by the payloads).
AGENT = raw_agent.PROGRAM


def agent(cid: str, agent_type: str = "w", **kw: Any) -> ChildSpec:
    kw.setdefault("shutdown", 2.0)
    kw.setdefault("heartbeat_timeout", 1.0)
    return ChildSpec(id=cid, argv=[PY, "-c", AGENT], agent_type=agent_type, **kw)


async def finished(hub: Hub, item: WorkItem, events: Any) -> WorkItem:
    """Wait until ``item`` is completed, failed or dead; return it."""
    final = {ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.DEAD}
    with trio.fail_after(TIMEOUT):
        while hub.work.get(item.id).status not in final:
            await wait_event(events, lambda e: e.kind.startswith("work_"))
    return hub.work.get(item.id)


async def test_an_item_goes_to_an_idle_agent_and_completes() -> None:
    async with running([agent("a1")]) as (hub, events):
        item = hub.work.submit("w", {"n": 21})
        done = await finished(hub, item, events)
        assert (42, "a1") == (done.result["double"], done.result["by"])
        assert (1, 1, None) == (done.attempt, done.deliveries, done.agent)
        assert hub.work.assignment("a1") is None


async def test_an_agent_killed_mid_item_is_reclaimed_at_once_and_done_elsewhere() -> None:
    """The holder exits: the item goes back the moment the hub sees the exit and is
    completed with attempt 2 (by the restarted agent or the other one)."""
    async with running([agent("a1"), agent("a2")]) as (hub, events):
        await wait_event(events, is_("running", "a2"))
        item = hub.work.submit("w", {"n": 1, "crash": True})
        reclaimed = await wait_event(events, is_("work_reclaimed"))
        assert "exit" == reclaimed.reason  # type: ignore[attr-defined]
        done = await finished(hub, item, events)
        assert ItemStatus.COMPLETED == done.status
        assert 2 == done.attempt
        assert ["reclaimed:exit", "completed"] == [h.outcome for h in done.history]


async def test_a_hung_agents_item_is_reclaimed_within_the_heartbeat_timeout() -> None:
    async with running([agent("a1"), agent("a2")]) as (hub, events):
        await wait_event(events, is_("running", "a2"))
        item = hub.work.submit("w", {"n": 5, "hang": True})
        hung = await wait_event(events, is_("work_reclaimed"))
        assert "hang" == hung.reason  # type: ignore[attr-defined]
        done = await finished(hub, item, events)
        assert {"double": 10} == {"double": done.result["double"]}
        assert 2 == done.attempt


async def test_a_stale_result_is_refused_and_the_real_one_counts() -> None:
    async with running([agent("a1")]) as (hub, events):
        item = hub.work.submit("w", {"n": 2, "stale": True})
        done = await finished(hub, item, events)
        assert (4, "a1") == (done.result["double"], done.result["by"])
        assert 1 == hub.work.refused


async def test_an_item_that_always_crashes_its_agent_is_dead_lettered() -> None:
    script = AGENT.replace('if p.get("crash") and attempt == 1:', 'if p.get("crash"):')
    child = ChildSpec(id="a1", argv=[PY, "-c", script], agent_type="w", shutdown=2.0)
    spec = SupervisorSpec(name="hub", children=[child], intensity=Intensity(10, 10))
    async with running(spec) as (hub, events):
        item = hub.work.submit("w", {"crash": True}, max_deliveries=2)
        done = await finished(hub, item, events)
        assert ItemStatus.DEAD == done.status
        assert ["reclaimed:exit", "reclaimed:exit"] == [h.outcome for h in done.history]
        again = hub.work.retry(item.id)
        assert (ItemStatus.QUEUED, 0) == (again.status, again.deliveries)
        assert ItemStatus.DEAD == (await finished(hub, again, events)).status


async def test_fail_without_retry_is_final_and_agents_submit_work() -> None:
    async with running([agent("a1"), agent("q1", agent_type="q")]) as (hub, events):
        bad = hub.work.submit("w", {"fail": "bad input"})
        done = await finished(hub, bad, events)
        assert (ItemStatus.FAILED, "bad input") == (done.status, done.error)
        parent = hub.work.submit("w", {"n": 4, "submit": "q"})
        await finished(hub, parent, events)
        (child,) = [i for i in hub.work.items() if i.agent_type == "q"]
        assert "agent:a1" == child.source
        result = (await finished(hub, child, events)).result
        assert (8, "q1") == (result["double"], result["by"])


async def test_stopping_the_hub_hands_held_items_back_without_spending_them() -> None:
    async with running([agent("a1")]) as (hub, events):
        item = hub.work.submit("w", {"n": 1, "hang": True})
        await wait_event(events, is_("work_assigned"))
        await until(lambda: getattr(hub.registry.get("a1"), "assignment", None) == item.id)
    held = hub.work.get(item.id)
    assert ItemStatus.QUEUED == held.status
    assert 0 == held.deliveries


async def test_a_protocol_version_mismatch_is_a_clear_failed_start() -> None:
    script = AGENT.replace('send("HELLO=2" if v2 else "HELLO=1")', 'send("HELLO=7")')
    assert script != AGENT
    spec = ChildSpec(id="a1", argv=[PY, "-c", script], agent_type="w", shutdown=1.0)
    async with running([spec]) as (hub, events):
        exited = await wait_event(events, is_("exited", "a1"))
        assert not exited.expected  # type: ignore[attr-defined]
        await wait_event(events, is_("starting", "a1"))  # restarted: the exit was handled
        (row,) = hub.which_children()
        assert "speaks agent protocol 7, this hub speaks 1, 2" in (row.info.last_exit or "")


def test_submit_refuses_bad_payloads() -> None:
    hub = Hub([agent("a1")])
    from supervisor import ControlError

    with pytest.raises(ControlError, match="must be JSON"):
        hub.work.submit("w", {1, 2})
    with pytest.raises(ControlError, match="over"):
        hub.work.submit("w", "x" * 40_000)
    with pytest.raises(ControlError, match="max_deliveries"):
        hub.work.submit("w", {}, max_deliveries=0)


async def test_a_result_sent_just_before_exiting_counts() -> None:
    """Records the agent sent before it exited are read before its exit is handled."""
    spec = SupervisorSpec(name="hub", children=[agent("a1")], intensity=Intensity(10, 10))
    async with running(spec) as (hub, events):
        for n in range(5):
            await wait_event(events, is_("running", "a1"))  # (re)started, idle again
            item = hub.work.submit("w", {"n": n, "exit_after": True})
            done = await finished(hub, item, events)
            assert (ItemStatus.COMPLETED, 1) == (done.status, done.attempt)


async def test_an_agent_sigkilled_mid_item_is_restarted_and_its_item_completes_on_attempt_2() -> (
    None
):
    async with running([agent("a1")]) as (hub, events):
        item = hub.work.submit("w", {"n": 7, "hang": True})  # holds it until killed
        await wait_event(events, is_("work_assigned", "a1"))
        (row,) = hub.which_children()
        assert row.info.pid is not None
        os.kill(row.info.pid, signal.SIGKILL)
        reclaimed = await wait_event(events, is_("work_reclaimed", "a1"))
        assert "exit" == reclaimed.reason  # type: ignore[attr-defined]
        done = await finished(hub, item, events)
        assert (ItemStatus.COMPLETED, 2, {"double": 14, "by": "a1"}) == (
            done.status,
            done.attempt,
            done.result,
        )
        assert ("reclaimed:exit", "exit") == (done.history[0].outcome, done.history[0].reason)


# Records an agent sends before it behaves: anything at all, at any rate.
NOISY = r"""
import json, os, socket, subprocess, sys, threading, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
for record in json.loads(os.environ["NOISE"]):
    s.send(bytes.fromhex(record))
"""


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    noise=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b"",
                    b"HELLO=1",
                    b"HELLO=99",
                    b"READY",
                    b'RESULT={"item":"w-1","attempt":1,"result":1}',
                    b'RESULT={"item":"w-999","attempt":7,"result":1}',
                    b'FAIL={"item":"w-1","attempt":2,"error":"x"}',
                    b'HANDBACK={"item":"nope","attempt":1}',
                    b'SUBMIT={"type":"w","payload":{"n":1}}',
                    b'SUBMIT={"type":"BAD TYPE","payload":1}',
                    b"PROGRESS={}",
                    b"STATUS=stopping",
                ]
            ),
        ),
        max_size=30,
    )
)
def test_any_records_from_an_agent_leave_the_hub_and_the_queue_consistent(
    noise: list[bytes],
) -> None:
    """Whatever an agent sends (garbage, stale or forged answers, another protocol
    version, submits), the hub keeps running, no item is held by two agents or
    completed by a stale answer, and a well-behaved agent still completes real work."""
    script = NOISY + AGENT.split("\n", 2)[2]  # the noise, then the normal agent
    env = {"NOISE": json.dumps([r.hex() for r in noise])}

    async def main() -> None:
        noisy = ChildSpec(
            id="noisy", argv=[PY, "-c", script], agent_type="w", env=env, shutdown=1.0
        )
        spec = SupervisorSpec(
            name="hub", children=[noisy, agent("good")], intensity=Intensity(50, 1)
        )
        async with running(spec) as (hub, events):
            items = [hub.work.submit("w", {"n": n}) for n in range(3)]
            for item in items:
                done = await finished(hub, item, events)
                assert ItemStatus.COMPLETED == done.status
                assert done.result["double"] == 2 * item.payload["n"]
                assert len(done.history) >= 1 and done.history[-1].outcome == "completed"
            held = [i for i in hub.work.items() if i.status == ItemStatus.ASSIGNED]
            assert len({i.agent for i in held}) == len(held)  # one item per agent at most

    trio.run(main)


async def test_items_queued_while_an_agent_exits_after_each_result_are_never_charged() -> None:
    """An agent that exits right after each RESULT and is restarted at once: an item
    queued meanwhile goes to the new incarnation only once that one is idle, never on the
    strength of the old one's idle mark (it went to the new process before its HELLO,
    then the old one's exit reclaimed it from under the new one, whose real result was
    refused as stale). An item sent to the old process in its last moment comes back
    (unreachable or exit) and is done again: no answer is ever refused."""
    spec = SupervisorSpec(name="hub", children=[agent("a1")], intensity=Intensity(30, 10))
    async with running(spec) as (hub, events):
        items = [hub.work.submit("w", {"n": n, "exit_after": True}) for n in range(8)]
        for item in items:
            done = await finished(hub, item, events)
            assert ItemStatus.COMPLETED == done.status
            assert 2 * item.payload["n"] == done.result["double"]
        assert 0 == hub.work.refused


async def test_a_checkpoint_too_big_to_send_is_not_kept() -> None:
    """A checkpoint that would make the next ASSIGN overflow a record is refused, so the
    next attempt is delivered (it would be dropped by the agent, the item stuck)."""
    spec = SupervisorSpec(name="hub", children=[agent("a1")], intensity=Intensity(20, 10))
    async with running(spec) as (hub, events):
        item = hub.work.submit("w", {"n": 3, "bigckpt": True, "pad": "p" * 20000})
        done = await finished(hub, item, events)
        assert (ItemStatus.COMPLETED, 2, None) == (done.status, done.attempt, done.checkpoint)


FLOOD = r"""
import json, os, socket, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
s.send(b"HELLO=1"); s.send(b"READY")
for _ in range(400):  # stale answers, each refused with an ACK it never reads
    s.send(b'RESULT={"item":"w-999","attempt":9,"result":0}')
time.sleep(1000)
"""


async def test_an_agent_that_never_reads_cannot_stall_the_others() -> None:
    flood = ChildSpec(id="bad", argv=[PY, "-c", FLOOD], agent_type="x", shutdown=1.0)
    async with running([flood, agent("a1")]) as (hub, events):
        await until(lambda: hub.work.refused >= 400)
        item = hub.work.submit("w", {"n": 5})
        with trio.fail_after(5):  # before: ~1 s per refused answer once its queue was full
            done = await finished(hub, item, events)
        assert (10, "a1") == (done.result["double"], done.result["by"])
        assert hub.work.acks_dropped > 0


async def test_an_item_handed_back_goes_to_another_agent_not_back() -> None:
    """An agent that hands an item back rests a moment (it stays eligible: issue 18): the
    item goes to another idle agent first instead of straight back to it (a hot loop of
    ASSIGN and HANDBACK before), with no attempt spent."""
    async with running([agent("a1")]) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        assigned: list[str] = []
        item = hub.work.submit("w", {"n": 2, "handback_if": "a1"})
        with trio.fail_after(TIMEOUT):
            while True:
                e = await wait_event(events, lambda e: e.kind.startswith("work_"))
                if e.kind == "work_assigned":
                    assigned.append(e.child_id)
                if e.kind == "work_reclaimed":
                    break
        await hub.start_child("hub", agent("a2"))
        with trio.fail_after(TIMEOUT):
            while hub.work.get(item.id).status != ItemStatus.COMPLETED:
                e = await wait_event(events, lambda e: e.kind.startswith("work_"))
                if e.kind == "work_assigned":
                    assigned.append(e.child_id)
        done = hub.work.get(item.id)
        assert ("a2", 1) == (done.result["by"], done.deliveries)
        assert "a2" == assigned[-1] and {"a1"} == set(assigned[:-1])  # a1 once per pause
