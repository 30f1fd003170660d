"""The registry actor: the event fold, queries, reclaiming, hang detection (MockClock)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from strategies import FixedBackoff, Intensity
from supervisor import (
    BRUTAL_KILL,
    REGISTRY_KINDS,
    RESERVED_STATUSES,
    AgentStatus,
    ChildExited,
    ChildHeartbeat,
    ChildHung,
    ChildRunning,
    ChildSpec,
    ChildStarting,
    ChildState,
    ChildStatus,
    Event,
    ExitStatus,
    Hub,
    InvalidChildSpec,
    PoolSpec,
    Registry,
    SupervisorSpec,
)
from supervisor.testing import SimBehaviour, SimulatedNotify, SimulatedProcessBackend


def child(cid: str, **kw: Any) -> ChildSpec:
    return ChildSpec(id=cid, argv=["sim"], **kw)


def live_in_tree(hub: Hub) -> dict[str, int]:
    """Agent id to pid of every worker the tree says is starting or running."""
    return {
        row.info.id: row.info.pid
        for row in hub.which_children()
        if row.info.kind == "worker"
        and row.info.state in (ChildState.STARTING, ChildState.RUNNING)
        and row.info.pid is not None
    }


def live_in_registry(reg: Registry) -> dict[str, int]:
    return {a.id: a.pid for a in reg.agents()}


class TestLifecycle:
    async def test_pool_is_registered_with_pids_types_and_status(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Every pool member appears with its pid and type, starting and then idle."""
        backend = SimulatedProcessBackend()
        pool = PoolSpec(agent_type="worker", template=child("w", start_period=1.0), size=3)
        hub = Hub([pool, child("solo", agent_type="qc")], backend=backend, hub_id="h1")
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.registry.sync()
            assert {"starting": 4, "total": 4} == hub.registry.counts()
            await trio.sleep(1.5)
            await hub.registry.sync()
            assert {"idle": 4, "total": 4} == hub.registry.counts()
            assert live_in_tree(hub) == live_in_registry(hub.registry)
            workers = hub.registry.by_type("worker")
            assert ["worker-agent-1", "worker-agent-2", "worker-agent-3"] == [a.id for a in workers]
            assert {"h1"} == {a.hub_id for a in workers}
            assert ["solo"] == [a.id for a in hub.registry.available("qc")]
            assert {"worker": 3, "qc": 1} == hub.registry.counts_by_type()
            await hub.stop()
        assert [] == hub.registry.agents()

    async def test_crash_marks_crashed_reclaims_and_restart_reregisters(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A crash removes the entry at once, hands back its assignment, and the
        restarted incarnation appears with a new pid, restart count and last exit."""
        backend = SimulatedProcessBackend()
        spec = SupervisorSpec(
            name="root",
            children=[child("a", agent_type="worker")],
            backoff=FixedBackoff(5.0),
            intensity=Intensity(10, 100),
        )
        hub = Hub(spec, backend=backend)
        reclaimed = hub.registry.reclaimed()
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(2)
            old = backend.current("a").pid
            assert await hub.registry.assign("a", "task-17")
            assert "task-17" == hub.registry.get("a").assignment  # type: ignore[union-attr]
            assert [] == hub.registry.available("worker")

            backend.current("a").crash(sig=signal.SIGKILL)
            await trio.sleep(1)  # backing off: not live
            await hub.registry.sync()
            assert hub.registry.get("a") is None
            gone = reclaimed.receive_nowait()
            assert ("a", "crashed", "task-17", old) == (
                gone.agent.id,
                gone.agent.status,
                gone.agent.assignment,
                gone.agent.pid,
            )
            assert "killed by SIGKILL" == gone.reason

            await trio.sleep(5)
            await hub.registry.sync()
            rec = hub.registry.get("a")
            assert rec is not None
            assert (backend.current("a").pid, 1, "killed by SIGKILL", None) == (
                rec.pid,
                rec.restarts,
                rec.last_exit,
                rec.assignment,
            )
            assert rec.pid != old
            await hub.stop()
        stopped = reclaimed.receive_nowait()
        assert ("a", "stopped") == (stopped.agent.id, stopped.agent.status)

    async def test_assign_to_unknown_agent_is_refused(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Assigning work to an agent that is not live returns False."""
        hub = Hub([child("a")], backend=SimulatedProcessBackend())
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            assert not await hub.registry.assign("nobody", "x")
            assert await hub.registry.assign("a", None)
            await hub.stop()
        assert not await hub.registry.assign("a", "x")  # the registry has stopped

    async def test_registry_runs_once(self) -> None:
        """Running a registry twice at once is an error that says so."""
        reg = Registry()
        async with trio.open_nursery() as nursery:
            await nursery.start(reg.run)
            with pytest.raises(RuntimeError, match="already running"):
                await reg.run()
            reg.stop()


class TestNotifyUnderMockClock:
    async def test_status_messages_and_heartbeats_update_the_record(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """STATUS=busy and HEARTBEAT from the agent show up in its record."""
        backend = SimulatedProcessBackend(default=SimBehaviour(heartbeat_interval=1.0))
        hub = Hub([child("a", agent_type="worker")], backend=backend)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(2.5)
            await hub.registry.sync()
            rec = hub.registry.get("a")
            assert rec is not None and rec.last_heartbeat == pytest.approx(2.0)
            notify = backend.current("a").notify
            assert isinstance(notify, SimulatedNotify)
            notify.send(b"STATUS=busy")
            await trio.sleep(0.1)
            await hub.registry.sync()
            assert ["a"] == [a.id for a in hub.registry.by_status("busy")]
            assert [] == hub.registry.available("worker")
            notify.send(b"STATUS=idle")
            await trio.sleep(0.1)
            await hub.registry.sync()
            assert ["a"] == [a.id for a in hub.registry.available("worker")]
            await hub.stop()

    async def test_an_idle_agent_that_holds_work_is_busy(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """One answer to "is it busy?": an idle agent holding an assignment shows busy;
        it is idle when it holds nothing again, unless it said busy itself meanwhile."""
        backend = SimulatedProcessBackend(default=SimBehaviour(heartbeat_interval=1.0))
        hub = Hub([child("a", agent_type="worker")], backend=backend)

        async def status() -> str:
            await trio.sleep(0.1)
            await hub.registry.sync()
            rec = hub.registry.get("a")
            assert rec is not None
            return str(rec.status)

        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(1.5)
            assert "idle" == await status()
            assert await hub.registry.assign("a", "w-1")
            assert "busy" == await status()
            notify = backend.current("a").notify
            assert isinstance(notify, SimulatedNotify)
            notify.send(b"STATUS=idle")  # whatever it says, it holds work
            assert "busy" == await status()
            assert await hub.registry.assign("a", None)
            assert "idle" == await status()
            assert await hub.registry.assign("a", "w-2")
            notify.send(b"STATUS=busy")  # said by the agent: it stays when the work ends
            assert "busy" == await status()
            assert await hub.registry.assign("a", None)
            assert "busy" == await status()
            await hub.stop()

    async def test_garbage_is_dropped_and_counted(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Bad messages are dropped and counted; the child and hub carry on."""
        backend = SimulatedProcessBackend()
        hub = Hub([child("a")], backend=backend)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            notify = backend.current("a").notify
            assert notify is not None
            for bad in (
                b"\xff\xfe",
                b"x" * 5000,
                b"READY\nHEARTBEAT",
                b"STATUS=crashed",
                b"STATUS=Bad Word",
                b"HELLO",
            ):
                notify.send(bad)
            notify.send(b"STATUS=busy")
            await trio.sleep(0.1)
            await hub.registry.sync()
            assert 6 == hub.context.notify_rejected
            assert "busy" == hub.registry.get("a").status  # type: ignore[union-attr]
            await hub.stop()

    async def test_ready_makes_the_child_running(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With ready='notify' a child is running when it says READY, not before."""
        backend = SimulatedProcessBackend(
            {"a": [SimBehaviour(ready_after=7.0)], "b": [SimBehaviour()]}
        )
        hub = Hub([child("a", ready="notify"), child("b", ready="notify")], backend=backend)
        events = hub.bus.subscribe(["running"])
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(6.9)
            assert ChildState.STARTING == hub.root.which_children()[0].state
            await trio.sleep(0.2)
            states = [c.state for c in hub.root.which_children()]
            assert [ChildState.RUNNING, ChildState.STARTING] == states
            running = events.receive_nowait()
            assert ("a", pytest.approx(7.0)) == (running.child_id, running.at)
            await hub.registry.sync()
            assert {"idle": 1, "starting": 1, "total": 2} == hub.registry.counts()
            await hub.stop()

    async def test_ready_ends_the_start_period_early(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With the default ready='start_period', READY still makes it running at once."""
        backend = SimulatedProcessBackend(default=SimBehaviour(ready_after=0.5))
        hub = Hub([child("a", start_period=10)], backend=backend)
        events = hub.bus.subscribe(["running"])
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(20)
            await hub.stop()
        hub.bus.close()
        assert [pytest.approx(0.5)] == [e.at async for e in events]

    async def test_hung_agent_is_killed_and_restarted(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Silence past heartbeat_timeout: ChildHung, stop signal, SIGKILL, restart."""
        backend = SimulatedProcessBackend(
            {
                "a": [
                    SimBehaviour(heartbeat_interval=1.0, hang_at=4.5, on_stop="ignore"),
                    SimBehaviour(heartbeat_interval=1.0),
                ]
            }
        )
        spec = SupervisorSpec(
            name="root",
            children=[child("a", heartbeat_timeout=3.0, shutdown=2.0, agent_type="w")],
            intensity=Intensity(1, 100),
        )
        hub = Hub(spec, backend=backend)
        events = hub.bus.subscribe()
        reclaimed = hub.registry.reclaimed()
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            first = backend.current("a")
            await trio.sleep(6.5)  # last beat at 4, hung at 7
            await hub.registry.sync()
            assert "idle" == hub.registry.get("a").status  # type: ignore[union-attr]
            await trio.sleep(1)
            await hub.registry.sync()
            assert "hung" == hub.registry.get("a").status  # type: ignore[union-attr]
            await trio.sleep(5)
            await hub.registry.sync()
            assert [signal.SIGTERM, signal.SIGKILL] == first.signals
            rec = hub.registry.get("a")
            assert rec is not None and rec.pid == backend.current("a").pid != first.pid
            assert 1 == rec.restarts
            info = hub.root.which_children()[0]
            assert info.last_exit is not None and info.last_exit.startswith("hung")
            await trio.sleep(100)  # the new incarnation heartbeats: never hung
            await hub.stop()
        hub.bus.close()
        seen = [e async for e in events if e.kind != "heartbeat"]
        hung = [e for e in seen if isinstance(e, ChildHung)]
        assert 1 == len(hung)
        assert (pytest.approx(7.0), pytest.approx(3.0)) == (hung[0].at, hung[0].silence)
        exits = [e for e in seen if isinstance(e, ChildExited)]
        assert not exits[0].expected
        gone = reclaimed.receive_nowait()
        assert ("crashed", "hung, then killed by SIGKILL") == (gone.agent.status, gone.reason)

    async def test_silent_from_the_start_counts_as_hung(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that never sends anything is hung heartbeat_timeout after spawn;
        a stream of hangs exhausts the intensity like crashes do."""
        backend = SimulatedProcessBackend()
        spec = SupervisorSpec(
            name="root",
            children=[child("a", heartbeat_timeout=2.0, shutdown=1.0)],
            intensity=Intensity(2, 100),
        )
        hub = Hub(spec, backend=backend)
        events = hub.bus.subscribe(["hung"])
        with pytest.raises(Exception, match="gave up"):
            await hub.serve()
        hub.bus.close()
        assert [pytest.approx(t) for t in (2.0, 4.0, 6.0)] == [e.at async for e in events]


async def test_heartbeat_floods_are_thinned(autojump_clock: trio.testing.MockClock) -> None:
    """A child beating 100 times a second yields at most 10 heartbeat events a second,
    and every beat still feeds the watchdog."""
    backend = SimulatedProcessBackend(default=SimBehaviour(heartbeat_interval=0.01))
    hub = Hub([child("a", heartbeat_timeout=0.05)], backend=backend)
    events = hub.bus.subscribe(["heartbeat", "hung"])
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(2.0)
        await hub.stop()
    hub.bus.close()
    kinds = [e.kind async for e in events]
    assert 19 <= len(kinds) <= 21 and {"heartbeat"} == set(kinds)


async def test_closed_channel_counts_as_silence(autojump_clock: trio.testing.MockClock) -> None:
    """A child that closes its notify channel is hung when the timeout runs out after
    its last message; with shutdown=BRUTAL_KILL it is SIGKILLed at once."""
    backend = SimulatedProcessBackend(default=SimBehaviour(on_stop="ignore"))
    spec = SupervisorSpec(
        name="root",
        children=[child("a", heartbeat_timeout=5.0, shutdown=BRUTAL_KILL)],
        intensity=Intensity(5, 100),
    )
    hub = Hub(spec, backend=backend)
    events = hub.bus.subscribe(["hung", "exited"])
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(1)
        first = backend.current("a")
        assert first.notify is not None
        first.notify.send(b"HEARTBEAT")
        first.notify.send(b"")  # end of channel
        await trio.sleep(5.5)
        await hub.stop()
    hub.bus.close()
    seen = [(e.kind, e.at) async for e in events]
    assert [("hung", pytest.approx(6.0)), ("exited", pytest.approx(6.0))] == seen[:2]
    assert [signal.SIGKILL] == first.signals


def test_notify_options_are_validated() -> None:
    """ready='notify' and heartbeat_timeout need the notify channel; bad ready values fail."""
    with pytest.raises(InvalidChildSpec, match="needs the notify channel"):
        child("a", notify=False, ready="notify")
    with pytest.raises(InvalidChildSpec, match="heartbeat_timeout"):
        child("a", notify=False, heartbeat_timeout=3)
    with pytest.raises(InvalidChildSpec, match="ready must be"):
        child("a", ready="later")
    with pytest.raises(InvalidChildSpec, match="notify must be"):
        child("a", notify="yes")


# --------------------------------------------------------------------------------------
# The fold: for any sequence of events, the registry equals a simple model of them.

IDS = ["a", "b", "c"]


@st.composite
def event_sequences(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    pids: dict[str, int] = {}
    next_pid = 100
    for i in range(draw(st.integers(0, 40))):
        cid = draw(st.sampled_from(IDS))
        # Mostly the live pid, sometimes a stale or unknown one.
        pid = draw(st.sampled_from([pids.get(cid, 1), pids.get(cid, 1), 99]))
        kind = draw(st.sampled_from(["start", "running", "beat", "status", "hung", "exit"]))
        at = float(i)
        if kind == "start":
            next_pid += 1
            pids[cid] = next_pid
            events.append(
                ChildStarting(
                    at=at, supervisor="s", child_id=cid, pid=next_pid, incarnation=1, agent_type="t"
                )
            )
        elif kind == "running":
            events.append(ChildRunning(at=at, supervisor="s", child_id=cid, pid=pid))
        elif kind == "beat":
            events.append(ChildHeartbeat(at=at, supervisor="s", child_id=cid, pid=pid))
        elif kind == "status":
            status = draw(st.sampled_from(["idle", "busy", "stopping"]))
            events.append(ChildStatus(at=at, supervisor="s", child_id=cid, pid=pid, status=status))
        elif kind == "hung":
            events.append(ChildHung(at=at, supervisor="s", child_id=cid, pid=pid, silence=1.0))
        else:
            events.append(
                ChildExited(
                    at=at,
                    supervisor="s",
                    child_id=cid,
                    pid=pid,
                    status=ExitStatus(code=draw(st.integers(0, 2))),
                    expected=draw(st.booleans()),
                    failed_start=False,
                    uptime=1.0,
                )
            )
    return events


def model_fold(events: list[Event]) -> dict[str, tuple[int, str, float | None]]:
    """The obvious model: agent id to (pid, status, last heartbeat)."""
    live: dict[str, tuple[int, str, float | None]] = {}
    for e in events:
        cur = live.get(e.child_id)
        same = cur is not None and cur[0] == getattr(e, "pid", None)
        if isinstance(e, ChildStarting):
            live[e.child_id] = (e.pid, "starting", None)
        elif not same or cur is None:
            continue
        elif isinstance(e, ChildRunning) and cur[1] == "starting":
            live[e.child_id] = (cur[0], "idle", cur[2])
        elif isinstance(e, ChildHeartbeat):
            live[e.child_id] = (cur[0], cur[1], e.at)
        elif isinstance(e, ChildStatus) and cur[1] != "hung":
            live[e.child_id] = (cur[0], e.status, e.at)
        elif isinstance(e, ChildHung):
            live[e.child_id] = (cur[0], "hung", cur[2])
        elif isinstance(e, ChildExited):
            del live[e.child_id]
    return live


@settings(max_examples=200)
@given(events=event_sequences())
async def test_registry_equals_the_fold_of_its_events(events: list[Event]) -> None:
    """Fed through the actor's inbox, any event sequence leaves exactly the live agents
    of the model (no ghost, none missing), and each exit of a live agent is reclaimed."""
    reg = Registry(hub_id="h")
    reclaimed = reg.reclaimed()
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)
        for e in events:
            reg.submit(e)
        await reg.sync()
        view = {a.id: (a.pid, a.status, a.last_heartbeat) for a in reg.agents()}
        reg.stop()
    assert model_fold(events) == view
    exits = 0
    live: dict[str, int] = {}
    for e in events:
        if isinstance(e, ChildStarting):
            live[e.child_id] = e.pid
        elif isinstance(e, ChildExited) and live.get(e.child_id) == e.pid:
            exits += 1
            del live[e.child_id]
    assert exits == len([r async for r in reclaimed])


@settings(max_examples=40)
@given(
    lifetimes=st.lists(
        st.lists(st.sampled_from([0.5, 1.0, 3.0, 7.0, float("inf")]), min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    ),
    steps=st.lists(st.integers(1, 20), min_size=1, max_size=8),
)
def test_registry_matches_the_tree_under_random_crashes(
    lifetimes: list[list[float]], steps: list[int]
) -> None:
    """Whatever crashes happen, at every checkpoint the registry lists exactly the
    workers the tree has starting or running, with the same pids."""
    # Every exit and restart happens at a multiple of 0.25s; checking 0.1s off that grid
    # compares settled states, not the order of two things due at the same instant.
    script = {
        f"c{i}": [SimBehaviour(lifetime=t, exit_code=1) for t in seq]
        for i, seq in enumerate(lifetimes)
    }
    backend = SimulatedProcessBackend(script)
    spec = SupervisorSpec(
        name="root",
        children=[child(cid, agent_type="t") for cid in script],
        intensity=Intensity(1000, 1),
        backoff=FixedBackoff(0.25),
    )

    async def main() -> None:
        hub = Hub(spec, backend=backend)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await trio.sleep(0.1)
            for n in steps:
                await trio.sleep(n * 0.25)
                await hub.registry.sync()
                assert live_in_tree(hub) == live_in_registry(hub.registry)
                assert {p.pid for p in backend.live()} == set(
                    live_in_registry(hub.registry).values()
                )
            await hub.stop()
            await hub.registry.sync()
            assert {} == live_in_registry(hub.registry)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_agents_of_a_stopping_supervisor_are_stopping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once a stop is asked for, the registry marks that supervisor's agents 'stopping', so
    nobody assigns them work while they shut down."""
    from supervisor import ChildSpec, Hub, SupervisorSpec

    backend = SimulatedProcessBackend({"slow": [SimBehaviour(on_stop="ignore")]})
    spec = SupervisorSpec(
        name="root",
        children=[
            ChildSpec(id="slow", argv=["sim"], shutdown=10, notify=False),
            ChildSpec(id="quick", argv=["sim"], notify=False),
        ],
    )
    hub = Hub(spec, backend=backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(2)
        await hub.registry.sync()
        assert [] == hub.registry.by_status("stopping")

        nursery.start_soon(hub.stop)
        await trio.sleep(1)  # 'quick' is gone; 'slow' ignores SIGTERM for 10 s
        await hub.registry.sync()

        assert ["slow"] == [r.id for r in hub.registry.by_status("stopping")]
        assert hub.registry.get("quick") is None


# --------------------------------------------------------------------------------------
# Fault 7: the hub's own statuses cannot be claimed, and stopping agents are never offered


async def test_fault7_status_idle_after_supervisor_stopping_is_not_offered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An agent that says STATUS=idle while its supervisor stops it stays 'stopping'
    and is never offered as available."""
    backend = SimulatedProcessBackend({"slow": [SimBehaviour(on_stop="ignore")]})
    spec = SupervisorSpec(
        name="root",
        children=[child("slow", shutdown=10, agent_type="worker")],
    )
    hub = Hub(spec, backend=backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(2)
        await hub.registry.sync()
        assert ["slow"] == [a.id for a in hub.registry.available("worker")]
        notify = backend.current("slow").notify
        assert notify is not None

        nursery.start_soon(hub.stop)
        await trio.sleep(1)  # 'slow' ignores SIGTERM for 10 s
        notify.send(b"STATUS=idle")
        await trio.sleep(0.1)
        await hub.registry.sync()
        rec = hub.registry.get("slow")
        assert rec is not None and rec.last_heartbeat is not None
        assert AgentStatus.STOPPING == rec.status
        assert [] == hub.registry.available("worker")
        assert hub.registry.is_stopping("root")


async def test_fault7_agent_cannot_claim_the_hubs_statuses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """STATUS=stopping, stopped, starting, hung and crashed are refused and counted on
    the channel; the registry too refuses a status report claiming them (stopping
    aside, which only withdraws the agent)."""
    backend = SimulatedProcessBackend()
    hub = Hub([child("a", agent_type="worker")], backend=backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(2)
        notify = backend.current("a").notify
        assert notify is not None
        for status in ("stopping", "stopped", "starting", "hung", "crashed"):
            notify.send(f"STATUS={status}".encode())
        await trio.sleep(0.1)
        await hub.registry.sync()
        assert 5 == hub.context.notify_rejected
        assert ["a"] == [r.id for r in hub.registry.available("worker")]

        pid = backend.current("a").pid
        for status in ("crashed", "starting", "stopped"):
            hub.registry.submit(
                ChildStatus(at=3.0, supervisor="root", child_id="a", pid=pid, status=status)
            )
        await hub.registry.sync()
        assert 3 == hub.registry.statuses_refused
        assert "idle" == hub.registry.get("a").status  # type: ignore[union-attr]
        await hub.stop()


def test_statuses_are_an_exported_enum() -> None:
    """AgentStatus lists the registry's statuses; the hub-owned ones are reserved."""
    assert "idle" == AgentStatus.IDLE
    assert {"starting", "hung", "stopping", "stopped", "crashed"} == set(RESERVED_STATUSES)
    assert AgentStatus.STOPPING.reserved and not AgentStatus.BUSY.reserved
    assert "output" not in REGISTRY_KINDS
