"""Issue 18, the work service's faults: each test hits one bound or liveness rule with
real agent processes (or the hub's own parser), and failed on df8c60e."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
from typing import Any

import pytest
import trio

from strategies import FixedBackoff, Intensity
from supervisor import (
    Autoscale,
    ChildSpec,
    ControlError,
    Hub,
    ItemStatus,
    PoolSpec,
    ServiceFailed,
    SupervisorSpec,
    WorkService,
)
from supervisor._notify import InvalidNotifyMessage, parse_notify

from .. import raw_agent
from ..helpers import PY, TIMEOUT, alive, is_, running, until, wait_event

pytestmark = pytest.mark.slow


def agent(cid: str, agent_type: str = "w", **kw: Any) -> ChildSpec:
    kw.setdefault("shutdown", 2.0)
    kw.setdefault("heartbeat_timeout", 2.0)
    return ChildSpec(id=cid, argv=[PY, "-c", raw_agent.PROGRAM], agent_type=agent_type, **kw)


def base_agent(cid: str, body: str, agent_type: str = "w", **kw: Any) -> ChildSpec:
    """A BaseAgent whose ``do_work`` is ``body`` (indented, may use ``a``: the assignment,
    and the module-level ``state`` dict)."""
    code = (
        "from agents.base import BaseAgent, HandBack\n"
        "state = {}\n"
        "class A(BaseAgent):\n"
        f"    agent_type = {agent_type!r}\n"
        "    async def do_work(self, a):\n"
        + "".join(f"        {line}\n" for line in body.strip().splitlines())
        + "A.main()\n"
    )
    kw.setdefault("shutdown", 2.0)
    kw.setdefault("heartbeat_timeout", 5.0)
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), **kw.pop("env", {})}
    return ChildSpec(id=cid, argv=[PY, "-c", code], agent_type=agent_type, env=env, **kw)


async def done(hub: Hub, item_id: str, timeout: float = TIMEOUT) -> Any:
    final = {ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.DEAD}
    await until(lambda: hub.work.get(item_id).status in final, timeout)
    return hub.work.get(item_id)


# --------------------------------------------------------------------------------------
# Fault 1: one agent's text made safe at the boundary; services supervised


def test_a_lone_surrogate_in_an_agent_record_is_replaced_at_the_boundary() -> None:
    """A JSON escape of a lone surrogate (what json.dumps makes of a surrogateescape'd
    file name) comes out of the parser as U+FFFD, in the data and in the text."""
    record = (
        b'FAIL={"item":"w-1","attempt":1,"error":"lint failed in caf\\udce9.py","x":["\\udcff"]}'
    )
    msg = parse_notify(record)
    assert msg.value is not None
    data = msg.value.data  # type: ignore[attr-defined]
    assert "lint failed in caf\ufffd.py" == data["error"]
    assert ["\ufffd"] == data["x"]
    for text in (msg.value, json.dumps(data, ensure_ascii=False)):
        text.encode("utf-8")  # nothing downstream can choke on it
    pair = parse_notify(b'RESULT={"item":"w-1","attempt":1,"result":"\\ud83d\\ude00"}')
    assert "\U0001f600" == pair.value.data["result"]  # type: ignore[union-attr]


async def test_an_agent_failing_with_a_surrogate_escaped_file_name_is_stored_safely() -> None:
    """A BaseAgent raising RuntimeError(f"lint failed in {name}") for a Latin-1 file name:
    the item fails with the error kept (U+FFFD for the byte), printable and encodable."""
    body = """
name = b"caf\\xe9.py".decode("utf-8", "surrogateescape")
raise RuntimeError(f"lint failed in {name}")
"""
    async with running([base_agent("a1", body)]) as (hub, events):
        item = hub.work.submit("w", {"n": 1}, max_deliveries=1)
        got = await done(hub, item.id)
        assert ItemStatus.DEAD == got.status
        assert "lint failed in caf\ufffd.py" in json.dumps(got.to_json(), ensure_ascii=False)
        json.dumps(got.to_json(), ensure_ascii=False).encode("utf-8")


def test_submit_refuses_a_payload_with_a_lone_surrogate_naming_the_fix() -> None:
    hub = Hub([agent("a1")])
    with pytest.raises(ControlError, match="lone surrogate.*os.fsencode"):
        hub.work.submit("w", {"file": b"caf\xe9".decode("utf-8", "surrogateescape")})
    assert "w-" in hub.work.submit("w", {"emoji": "\U0001f600"}).id


class BrokenWork(WorkService):
    """A work service whose run always fails (its queue's store is unusable, say)."""

    runs = 0

    async def run(self, hub: Any, *, task_status: trio.TaskStatus[None]) -> None:
        self.runs += 1
        raise RuntimeError("store unusable")


async def test_a_work_service_that_keeps_failing_stops_the_hub_and_every_child() -> None:
    """Before: logged once, and the hub ran on accepting work it never dispatched. Now:
    restarted with backoff, then the hub stops its tree and serve() raises."""
    work = BrokenWork()
    hub = Hub(
        [agent("a1"), agent("a2")],
        work=work,
        service_backoff=FixedBackoff(0.05),
        service_intensity=Intensity(3, 30),
    )
    pids: list[int] = []
    failures: list[ServiceFailed] = []

    async def serve() -> None:
        try:
            await hub.serve()
        except ServiceFailed as exc:
            failures.append(exc)

    # "starting" (spawned), not "running": on a loaded machine an agent may not have said
    # READY within the 0.15 s the service takes to use up its intensity.
    with hub.bus.subscribe(kinds=["starting"]) as events:
        await serve()
        while True:
            try:
                pids.append(events.receive_nowait().pid)  # type: ignore[attr-defined]
            except trio.WouldBlock:
                break
    (failure,) = failures
    assert "service 'work' failed more than 3 restarts in 30s" in str(failure)
    assert 2 == len(pids)
    assert 4 == work.runs
    assert hub.root.ended
    assert not [p for p in pids if alive(p)]


class FailsOnceWork(WorkService):
    """Fails in its first run on the first event it reads (a non-agent child starting):
    what the runtime sends meanwhile must wait for the restarted run, not be lost."""

    failed = False

    def _on_event(self, event: Any) -> None:
        if not self.failed and event.child_id == "s1":
            self.failed = True
            raise RuntimeError("one bad moment")
        super()._on_event(event)


async def test_a_work_service_that_fails_once_is_restarted_and_loses_nothing() -> None:
    work = FailsOnceWork()
    s1 = ChildSpec(id="s1", argv=["sleep", "1000"], shutdown=1.0)
    async with running([s1, agent("a1")], work=work) as (hub, events):
        item = hub.work.submit("w", {"n": 4})
        got = await done(hub, item.id)
        assert work.failed
        assert (ItemStatus.COMPLETED, 8) == (got.status, got.result["double"])
        assert [] == hub.failed_services


# --------------------------------------------------------------------------------------
# Fault 3: a hand-back keeps the agent eligible


async def test_a_hand_back_in_a_pool_of_one_leaves_the_agent_eligible() -> None:
    """Before: the agent was marked gone and both items stayed queued for ever."""
    body = """
if not state:
    state["handed"] = True
    raise HandBack()
return {"ok": a.payload}
"""
    pool = PoolSpec(agent_type="w", template=base_agent("t", body), size=1)
    async with running([pool], work=WorkService(handback_pause=0.2)) as (hub, events):
        first = hub.work.submit("w", 1)
        second = hub.work.submit("w", 2)
        for item, n in ((first, 1), (second, 2)):
            got = await done(hub, item.id)
            assert (ItemStatus.COMPLETED, {"ok": n}) == (got.status, got.result)
        one = hub.work.get(first.id)
        assert ["handed_back", "completed"] == [h.outcome for h in one.history]
        assert 1 == one.deliveries  # the hand-back spent nothing


async def test_an_agent_that_always_hands_back_is_paused_not_hot_looped() -> None:
    """An agent that hands every item back gets it again only after the pause; another
    idle agent gets it first."""
    async with running([agent("a1")], work=WorkService(handback_pause=0.5)) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        item = hub.work.submit("w", {"n": 2, "handback_if": "a1"})
        assigned: list[float] = []
        with trio.fail_after(TIMEOUT):
            while len(assigned) < 3:
                e = await wait_event(events, is_("work_assigned", "a1"))
                assigned.append(e.at)
        gaps = [b - a for a, b in itertools.pairwise(assigned)]
        assert all(g >= 0.5 for g in gaps), gaps
        await hub.start_child("hub", agent("a2"))
        got = await done(hub, item.id)
        assert ("a2", 1) == (got.result["by"], got.deliveries)


# --------------------------------------------------------------------------------------
# Fault 6: type check, queue cap, progress coalesced

SUBMITTER = r"""
import json, os, socket, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
s.send(b"HELLO=1"); s.send(b"READY")
pad = "p" * 30000
for n in range(int(os.environ["N"])):
    s.send(("SUBMIT=" + json.dumps({"type": os.environ["T"], "payload": {"n": n, "pad": pad}})).encode())
s.send(b"STATUS=done")
time.sleep(1000)
"""


def submitter(n: int, agent_type: str) -> ChildSpec:
    env = {"N": str(n), "T": agent_type}
    return ChildSpec(id="sub", argv=[PY, "-c", SUBMITTER], agent_type="s", env=env, shutdown=1)


async def test_an_agent_submitting_for_a_type_no_pool_serves_is_refused_with_few_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: 30,439 items of 30 KB queued for ever (943 MB in 10 s)."""
    with caplog.at_level(logging.WARNING, logger="hubvisor"):
        async with running([submitter(300, "nobody"), agent("a1")]) as (hub, events):
            await wait_event(events, is_("status", "sub", status="done"))
            await until(lambda: hub.work.refused >= 300)
            assert [] == hub.work.items()
    lines = [r.message for r in caplog.records if "refused SUBMIT" in r.message]
    assert 1 <= len(lines) <= 2, lines
    assert "no agents of type 'nobody'" in lines[0]


async def test_the_queue_of_a_type_is_capped_on_every_path() -> None:
    work = WorkService(max_queued=5)
    idle_pool = PoolSpec(agent_type="q", template=agent("t", "q"), size=0)  # none run yet
    async with running([submitter(20, "q"), idle_pool], work=work) as (hub, events):
        await wait_event(events, is_("status", "sub", status="done"))
        await until(lambda: hub.work.refused >= 15)
        assert 5 == len(hub.work.items("queued"))
        with pytest.raises(ControlError, match=r"queue of 'q' is full.*max_queued=5"):
            hub.work.submit("q", 1)
        with pytest.raises(ControlError, match="no agents of type 'zz'"):
            hub.work.submit("zz", 1)


PROGRESSER = r"""
import json, os, socket, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
s.send(b"HELLO=1"); s.send(b"READY")
a = json.loads(s.recv(65536).decode().partition("=")[2])
pad = "p" * int(os.environ.get("PAD", "15000"))
for n in range(int(os.environ.get("N", "2000"))):
    s.send(("PROGRESS=" + json.dumps({"item": a["item"], "attempt": a["attempt"], "progress": n, "checkpoint": {"pad": pad}})).encode())
s.send(("RESULT=" + json.dumps({"item": a["item"], "attempt": a["attempt"], "result": "ok"})).encode())
time.sleep(1000)
"""


async def test_progress_of_one_item_is_coalesced_to_its_latest() -> None:
    """A flood of 15 KB PROGRESS records while the service is busy elsewhere: what waits
    for it is one record per agent; the item keeps the latest and nothing else grows."""
    spec = ChildSpec(id="p", argv=[PY, "-c", PROGRESSER], agent_type="w", shutdown=1)
    async with running([spec]) as (hub, events):
        item = hub.work.submit("w", {})
        await wait_event(events, is_("work_assigned", "p"))
        got = await done(hub, item.id)
        assert "ok" == got.result
        assert len(got.history) == 1
        assert hub.work._progress == {}
        assert hub.work._inbox.statistics().current_buffer_used < 100


async def test_a_flood_of_oversized_checkpoints_logs_a_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"PAD": "20000", "N": "500"}  # each over MAX_CHECKPOINT: warned, not kept
    spec = ChildSpec(id="p", argv=[PY, "-c", PROGRESSER], agent_type="w", env=env, shutdown=1)
    with caplog.at_level(logging.WARNING, logger="hubvisor"):
        async with running([spec]) as (hub, events):
            item = hub.work.submit("w", {})
            got = await done(hub, item.id)
            assert ("ok", None) == (got.result, got.checkpoint)
    lines = [r.message for r in caplog.records if "not kept" in r.message]
    assert 1 <= len(lines) <= 2, len(lines)


def test_progress_records_queued_for_the_service_keep_only_the_latest() -> None:
    """The sink replaces an unread PROGRESS of the same agent; other records queue."""
    from supervisor._child import AgentMessage

    work = WorkService()
    for n in range(1000):
        work._sink(AgentMessage("a", "w", "hub", 7, 1, "progress", json.dumps({"n": n})))
    work._sink(AgentMessage("a", "w", "hub", 7, 1, "result", "{}"))
    assert 2 == work._inbox.statistics().current_buffer_used
    assert 999 == work.progress_coalesced
    first = work._inbox.receive_nowait()
    assert isinstance(first, AgentMessage)
    latest = work._progress.pop((first.agent_id, first.pid))
    assert '{"n": 999}' == latest.value


def test_a_coalesced_progress_without_a_checkpoint_keeps_the_earlier_checkpoint() -> None:
    """PROGRESS with a checkpoint, then one without, both unread: the one the service
    reads carries the checkpoint (read one by one, the item would have kept it); a
    checkpoint of another attempt is not carried over."""
    from supervisor._child import AgentMessage

    def progress(attempt: int, n: int, checkpoint: object = None) -> AgentMessage:
        body: dict[str, object] = {"item": "w-1", "attempt": attempt, "progress": n}
        if checkpoint is not None:
            body["checkpoint"] = checkpoint
        return AgentMessage("a", "w", "hub", 7, 1, "progress", json.dumps(body))

    work = WorkService()
    work._sink(progress(1, 1, {"done": 10}))
    work._sink(progress(1, 2))
    work._sink(progress(1, 3))
    latest = json.loads(work._progress[("a", 7)].value or "")
    assert {"item": "w-1", "attempt": 1, "progress": 3, "checkpoint": {"done": 10}} == latest
    work._sink(progress(1, 4, {"done": 20}))  # a newer checkpoint wins
    assert {"done": 20} == json.loads(work._progress[("a", 7)].value or "")["checkpoint"]
    work._sink(progress(2, 5))  # another attempt: nothing carried over
    assert "checkpoint" not in json.loads(work._progress[("a", 7)].value or "")


# --------------------------------------------------------------------------------------
# Fault 12: refusals summarised

STALE = r"""
import os, socket, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
s.send(b"HELLO=1"); s.send(b"READY")
for _ in range(int(os.environ["N"])):
    try:
        s.send(b'RESULT={"item":"w-999","attempt":9,"result":0}')
    except BlockingIOError:
        pass
s.send(b"STATUS=done")
time.sleep(1000)
"""


async def test_a_flood_of_stale_results_logs_a_line_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: one log line and one bus event per refusal (99,194 lines in 5 s)."""
    spec = ChildSpec(id="bad", argv=[PY, "-c", STALE], agent_type="x", env={"N": "5000"})
    with caplog.at_level(logging.WARNING, logger="hubvisor"):
        async with running([spec]) as (hub, events):
            refused = hub.bus.subscribe(kinds=["work_refused"])
            await wait_event(events, is_("status", "bad", status="done"))
            await until(lambda: hub.work.refused >= 5000)
            seen = []
            while True:
                try:
                    seen.append(refused.receive_nowait())
                except trio.WouldBlock:
                    break
    lines = [r.message for r in caplog.records if "refused RESULT" in r.message]
    assert 1 <= len(lines) <= 2, len(lines)
    assert len(seen) <= 2
    if len(lines) == 2:  # the interval passed during the flood: the count says how many
        assert "times since the last report" in lines[1]


# --------------------------------------------------------------------------------------
# Fault 13: NaN and Infinity


def test_nan_and_infinity_are_refused_on_the_api_and_in_agent_records() -> None:
    hub = Hub([agent("a1")])
    for bad in (math.nan, math.inf, -math.inf, {"x": [math.nan]}):
        with pytest.raises(ControlError, match="NaN or Infinity, which JSON does not allow"):
            hub.work.submit("w", bad)
    for record in (
        b'RESULT={"item":"w-1","attempt":1,"result":NaN}',
        b'PROGRESS={"item":"w-1","attempt":1,"progress":Infinity}',
        b'SUBMIT={"type":"w","payload":{"x":-Infinity}}',
        b'RESULT={"item":"w-1","attempt":1,"result":1e999}',
    ):
        with pytest.raises(InvalidNotifyMessage, match="not JSON"):
            parse_notify(record)


# --------------------------------------------------------------------------------------
# Smaller: a memory-mode stop names the lost items; history names the hub


async def test_a_memory_mode_stop_logs_the_items_it_loses_by_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="hubvisor"):
        async with running([agent("a1")], hub_id="hub-a") as (hub, events):
            held = hub.work.submit("w", {"n": 1, "hold": True})
            await wait_event(events, is_("work_assigned", "a1"))
            queued = [hub.work.submit("w", {"n": n}) for n in range(30)]
    (line,) = [r.message for r in caplog.records if "lost with the hub" in r.message]
    assert line.startswith("hub stopping with 31 work items not done")
    assert held.id in line and queued[18].id in line and "and 11 more" in line
    assert "hub-a" == hub.work.get(held.id).history[-1].hub


async def test_a_kill_of_the_holder_names_the_hub_in_the_items_history() -> None:
    spec = SupervisorSpec(name="h", children=[agent("a1")], intensity=Intensity(5, 5))
    async with running(spec, hub_id="hub-b") as (hub, events):
        item = hub.work.submit("w", {"n": 3, "hold": True})
        await wait_event(events, is_("work_assigned", "a1"))
        (row,) = hub.which_children()
        assert row.info.pid is not None
        os.kill(row.info.pid, signal.SIGKILL)
        await wait_event(events, is_("work_reclaimed", "a1"))
        record = hub.work.get(item.id).history[0]
        assert ("reclaimed:exit", "hub-b") == (record.outcome, record.hub)
        assert "hub-b" == hub.work.get(item.id).to_json()["history"][0]["hub"]


# --------------------------------------------------------------------------------------
# Fault 9: autoscale retires idle members only


async def test_autoscale_retires_the_idle_member_not_the_busy_one() -> None:
    """Before: the shrink stopped agent-2 mid-item (a resize stops the highest numbers)
    and kept idle agent-1."""
    template = agent("t")
    policy = Autoscale(min=1, max=3, scale_down_after=0.5, cooldown=0.2)
    pool = PoolSpec(agent_type="w", template=template, size=1, autoscale=policy)
    hub = Hub([pool])
    hub.autoscaler.tick = 0.05
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        try:
            await until(lambda: hub.work.idle_among("w", ["w-agent-1"]) == 1)
            short = hub.work.submit("w", {"n": 1, "sleep": 0.5})
            await wait_event(events, is_("work_assigned", "w-agent-1"))
            long = hub.work.submit("w", {"n": 2, "hold": True})
            await wait_event(events, is_("work_assigned", "w-agent-2"))
            assert ItemStatus.COMPLETED == (await done(hub, short.id)).status
            shrink = await wait_event(events, lambda e: getattr(e, "action", "") == "shrink")
            assert 1 == shrink.target  # type: ignore[attr-defined]
            pool_sup = hub.supervisor("w")
            await until(lambda: [c.id for c in pool_sup.which_children()] == ["w-agent-2"])
            held = hub.work.get(long.id)
            assert (ItemStatus.ASSIGNED, "w-agent-2", []) == (held.status, held.agent, held.history)
            # The next growth reuses the free number.
            hub.work.submit("w", {"n": 3})
            await wait_event(events, is_("work_assigned", "w-agent-1"))
        finally:
            await hub.stop()
