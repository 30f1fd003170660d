"""The services' port into the hub (``hub.agents``), with real agent processes: the
agents' work messages reach subscribers, a message or a stop meant for one incarnation
never reaches another, and environment additions reach every child started after."""

from __future__ import annotations

import os

import trio

from supervisor import ChildExited, ChildSpec, Hub
from supervisor._notify import NotifyMessage
from supervisor._port import AgentMessage, AgentPort

from .. import raw_agent
from ..helpers import PY, TIMEOUT, running, until, wait_event


def agent(cid: str = "a1") -> ChildSpec:
    return ChildSpec(id=cid, argv=raw_agent.argv(), agent_type="w", heartbeat_timeout=5.0)


async def test_subscribers_receive_the_agents_work_messages_not_the_runtimes() -> None:
    """A subscriber gets the agent's HELLO (with its pid), and none of the runtime's own
    messages (READY, HEARTBEAT); after unsubscribing it gets nothing more."""
    got: list[AgentMessage] = []
    async with running([agent()]) as (hub, events):
        assert isinstance(hub.agents, AgentPort)
        hub.agents.subscribe_messages(got.append)
        hub.agents.subscribe_messages(got.append)  # once, however often subscribed
        await hub.restart_child("a1")  # a fresh incarnation: its HELLO comes after
        await until(lambda: any(m.kind == "hello" for m in got))
        pid = hub.agents.live("a1")
        assert pid is not None
        hello = next(m for m in got if m.kind == "hello")
        assert ("a1", "w", pid, "1") == (hello.agent_id, hello.agent_type, hello.pid, hello.value)
        assert {"hello"} == {m.kind for m in got}
        assert 1 == sum(m.kind == "hello" for m in got)
        hub.agents.unsubscribe_messages(got.append)
        got.clear()
        await hub.restart_child("a1")
        await wait_event(events, lambda e: e.kind == "running" and e.child_id == "a1")
        with trio.move_on_after(0.3):
            await until(lambda: bool(got))
        assert [] == got


async def test_messages_and_stops_name_one_incarnation() -> None:
    """``pid=`` pins the incarnation: a send or condemn for an old pid is refused, one
    for the live pid goes through; the condemned child's exit carries the reason."""
    async with running([agent()]) as (hub, events):
        await wait_event(events, lambda e: e.kind == "running" and e.child_id == "a1")
        pid = hub.agents.live("a1")
        assert pid is not None
        live = hub.agents.get("a1")
        assert live is not None and (pid, "w") == (live.pid, live.spec.agent_type)
        assert [live] == hub.agents.running()
        assert not hub.agents.stopping("a1", pid)
        assert hub.agents.live("nobody") is None
        ping = NotifyMessage("ping")
        assert hub.agents.send_nowait("a1", ping, pid=pid + 1) is False
        assert hub.agents.send_nowait("a1", ping, pid=pid) is not False
        assert await hub.agents.send("a1", ping, pid=pid) is True
        assert await hub.agents.send("a1", ping, pid=pid + 1) is False
        assert not hub.agents.condemn("a1", "over budget", pid=pid + 1)
        assert hub.agents.condemn("a1", "over budget", pid=pid)
        assert not hub.agents.condemn("a1", "again", pid=pid)  # already stopping
        exited = await wait_event(events, lambda e: e.kind == "exited" and e.child_id == "a1")
        assert isinstance(exited, ChildExited) and pid == exited.pid
        await until(lambda: "over budget" in (hub.which_children()[0].info.last_exit or ""))


async def test_a_service_adds_to_every_childs_environment() -> None:
    """``add_env`` in a service's run, before it is started, reaches every child;
    ``replace=False`` keeps what is already set."""

    class Mark:
        name = "mark"

        async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
            hub.agents.add_env({"PORT_MARK": "yes", "PORT_KEEP": "new"})
            hub.agents.add_env({"PORT_MARK": "no"}, replace=False)
            task_status.started()

    code = "import os; print(os.environ['PORT_MARK'], os.environ['PORT_KEEP'], flush=True)"
    child = ChildSpec(id="c1", argv=[PY, "-c", code], restart="transient")
    hub = Hub([child], env={"PORT_KEEP": "old"}, services=[Mark()])
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        with trio.fail_after(TIMEOUT):
            await wait_event(events, lambda e: e.kind == "exited" and e.child_id == "c1")
        await until(lambda: bool(hub.logs("c1")))
        assert ["yes new"] == hub.logs("c1")
        assert "PORT_MARK" not in os.environ
        await hub.stop()
