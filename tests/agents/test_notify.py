"""The notify channel with real processes: READY, STATUS, HEARTBEAT, garbage, hangs."""

from __future__ import annotations

import os

import attrs
import pytest
import trio

from agents import notify as agent_notify
from strategies import Intensity
from supervisor import ChildExited, ChildHung, ChildStarting, Hub, SupervisorSpec
from supervisor._notify import MAX_MESSAGE, InvalidNotifyMessage, NotifyMessage, parse_notify

from ..helpers import PY, python_child, sleeper, wait_event

pytestmark = pytest.mark.slow

READY_BUSY = """
import time
from agents.notify import notify
notify("READY")
notify("STATUS=busy")
time.sleep(1000)
"""


class TestParse:
    def test_valid_messages(self) -> None:
        """READY, HEARTBEAT, STATUS and the systemd spellings parse; one newline is ok."""
        assert NotifyMessage("ready") == parse_notify(b"READY")
        assert NotifyMessage("ready") == parse_notify(b"READY=1\n")
        assert NotifyMessage("heartbeat") == parse_notify(b"WATCHDOG=1")
        assert NotifyMessage("status", "busy") == parse_notify(b"STATUS=busy")

    @pytest.mark.parametrize(
        ("data", "match"),
        [
            (b"x" * (MAX_MESSAGE + 1), f"over {MAX_MESSAGE} bytes"),
            (b"\xc3\x28", "not UTF-8"),
            (b"READY\n\n", "control characters"),
            (b"STATUS=hung", "bad status"),
            (b"STATUS=", "bad status"),
            (b"PING", "unknown message 'PING'"),
        ],
    )
    def test_bad_messages_say_why(self, data: bytes, match: str) -> None:
        """Every refused message raises InvalidNotifyMessage naming the problem."""
        with pytest.raises(InvalidNotifyMessage, match=match):
            parse_notify(data)


def test_helper_outside_hubvisor_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HUBVISOR_NOTIFY_FD the helper returns False instead of failing."""
    monkeypatch.delenv("HUBVISOR_NOTIFY_FD", raising=False)
    assert not agent_notify.ready()
    assert 1 == agent_notify.main(["HEARTBEAT"])
    assert 2 == agent_notify.main([])


async def test_python_child_says_ready_and_busy() -> None:
    """A Python agent's READY makes it running and STATUS=busy shows in the registry
    with its real pid; the hub's end of the channel is closed when it ends."""
    spec = python_child("a", READY_BUSY, ready="notify", agent_type="worker")
    hub = Hub([spec])
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        start = await wait_event(events, lambda e: isinstance(e, ChildStarting))
        await wait_event(events, lambda e: e.kind == "running")
        await wait_event(events, lambda e: e.kind == "status")
        await hub.registry.sync()
        rec = hub.registry.get("a")
        assert rec is not None
        assert ("busy", start.pid, "worker") == (rec.status, rec.pid, rec.agent_type)  # type: ignore[attr-defined]
        assert [] == hub.registry.available("worker")
        await hub.stop()


async def test_shell_child_heartbeats_with_printf() -> None:
    """A shell agent writes messages with printf to $HUBVISOR_NOTIFY_FD."""
    script = (
        'printf READY >&"$HUBVISOR_NOTIFY_FD"; '
        'printf "STATUS=idle\\n" >&"$HUBVISOR_NOTIFY_FD"; '
        'while :; do printf HEARTBEAT >&"$HUBVISOR_NOTIFY_FD"; sleep 0.05; done'
    )
    spec = sleeper("sh", argv=["bash", "-c", script], ready="notify", heartbeat_timeout=5)
    hub = Hub([spec])
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await wait_event(events, lambda e: e.kind == "running")
        for _ in range(3):
            await wait_event(events, lambda e: e.kind == "heartbeat")
        await hub.registry.sync()
        rec = hub.registry.get("sh")
        assert rec is not None and rec.last_heartbeat is not None and rec.status == "idle"
        assert 0 == hub.context.notify_rejected
        await hub.stop()


async def test_cli_helper_from_a_child() -> None:
    """`python -m agents.notify READY STATUS=busy` works from any child."""
    script = f'"{PY}" -m agents.notify READY STATUS=busy && exec sleep 1000'
    spec = sleeper("cli", argv=["bash", "-c", script], ready="notify")
    hub = Hub([spec], env={"PYTHONPATH": os.getcwd()})
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await wait_event(events, lambda e: e.kind == "status")
        await hub.registry.sync()
        assert "busy" == hub.registry.get("cli").status  # type: ignore[union-attr]
        await hub.stop()


async def test_garbage_from_a_real_child_is_dropped() -> None:
    """Oversized, binary and unknown messages are counted and dropped; the valid
    READY after them still gets through."""
    code = """
import os, socket, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
for bad in (b"\\xff\\xfe\\x00", b"x" * 10000, b"LAUNCH MISSILES"):
    s.send(bad)
s.send(b"READY")
time.sleep(1000)
"""
    hub = Hub([python_child("g", code, ready="notify")])
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await wait_event(events, lambda e: e.kind == "running")
        assert 3 == hub.context.notify_rejected
        await hub.stop()


async def test_hung_real_child_is_killed_and_restarted() -> None:
    """A live child that stops heartbeating is reported hung, its group killed (it
    ignores SIGTERM, so SIGKILL), and a new incarnation started."""
    code = """
import signal, time
from agents.notify import heartbeat, ready
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready()
for _ in range(3):
    heartbeat()
    time.sleep(0.05)
time.sleep(1000)  # hung: alive and silent
"""
    # The heartbeat deadline runs from the spawn: a Python slower to start than the
    # timeout (at load 20 in CI, 0.5 s was not enough) was found hung before it ignored
    # SIGTERM, and died of it. So the child ignores SIGTERM from its first instruction (a
    # shell's trap, inherited through exec) and the timeout leaves room for the start.
    child = python_child("h", code, heartbeat_timeout=3.0, shutdown=0.3, ready="notify")
    shell = ["/bin/sh", "-c", 'trap "" TERM; exec "$0" "$@"', *child.argv]
    spec = SupervisorSpec(
        name="root",
        children=[attrs.evolve(child, argv=shell)],
        intensity=Intensity(10, 60),
    )
    hub = Hub(spec)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        first = await wait_event(events, lambda e: isinstance(e, ChildStarting))
        hung = await wait_event(events, lambda e: isinstance(e, ChildHung))
        assert first.pid == hung.pid  # type: ignore[attr-defined]
        exited = await wait_event(events, lambda e: isinstance(e, ChildExited))
        assert isinstance(exited, ChildExited)
        assert (False, 9) == (exited.expected, exited.status.signal)
        second = await wait_event(events, lambda e: isinstance(e, ChildStarting))
        assert second.pid != first.pid  # type: ignore[attr-defined]
        await hub.registry.sync()
        rec = hub.registry.get("h")
        assert rec is not None and rec.pid == second.pid  # type: ignore[attr-defined]
        assert rec.last_exit == "killed by SIGKILL" and rec.restarts == 1
        await hub.stop()


async def test_ready_timeout_kills_and_restarts_a_child_that_never_says_ready(
    autojump_clock: object,
) -> None:
    """With ready='notify' and ready_timeout, silence at start is a failed start: the child
    is killed after the timeout and restarted by policy (simulated, on a MockClock)."""
    from strategies import Intensity
    from supervisor import ChildSpec, Hub, SupervisorEscalation, SupervisorSpec
    from supervisor.testing import SimBehaviour, SimulatedProcessBackend

    async def scenario() -> tuple[list[object], SupervisorEscalation]:
        backend = SimulatedProcessBackend(
            {"mute": [SimBehaviour(on_stop="ignore")], "ok": [SimBehaviour(ready_after=1.0)]}
        )
        spec = SupervisorSpec(
            name="root",
            intensity=Intensity(1, 100),
            children=[
                ChildSpec(id="ok", argv=["sim"], ready="notify", ready_timeout=5),
                ChildSpec(id="mute", argv=["sim"], ready="notify", ready_timeout=5, shutdown=2),
            ],
        )
        hub = Hub(spec, backend=backend)
        events = hub.bus.subscribe()
        try:
            await hub.serve()
        except SupervisorEscalation as exc:
            hub.bus.close()
            return [e async for e in events], exc
        raise AssertionError("the mute child should exhaust the intensity")

    t0 = trio.current_time()
    seen, error = await scenario()
    hung = [(e.at - t0, e.child_id) for e in seen if e.kind == "hung"]  # type: ignore[attr-defined]
    running = [e.child_id for e in seen if e.kind == "running"]  # type: ignore[attr-defined]

    # Spawned at 0, killed at 5 (SIGTERM ignored, SIGKILL at 7), respawned at 7, again at 12.
    assert [(5.0, "mute"), (12.0, "mute")] == hung
    assert ["ok"] == running
    assert "not READY within 5s, then killed by SIGKILL" in error.reason


def test_ready_timeout_needs_ready_notify() -> None:
    """ready_timeout without ready='notify' is refused, naming the fix."""
    import pytest

    from supervisor import ChildSpec, InvalidChildSpec

    with pytest.raises(InvalidChildSpec, match="set ready='notify' or drop ready_timeout"):
        ChildSpec(id="a", argv=["x"], ready_timeout=3)
