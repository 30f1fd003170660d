"""The two-way agent channel: the message table, end-of-channel, fuzzing (fault 6)."""

from __future__ import annotations

import array
import os
import socket
import subprocess
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from agents import notify as agent_notify
from supervisor import ChildHung, Hub
from supervisor._notify import (
    MAX_MESSAGE,
    MESSAGE_KINDS,
    MESSAGES,
    Direction,
    InvalidNotifyMessage,
    MessageKind,
    MessageTable,
    NotifyMessage,
    SocketNotifySource,
    enable_credentials,
    encode,
    open_notify_pair,
    parse_from_hub,
    parse_notify,
)

from ..helpers import PY, python_child, wait_event

TO_HUB = {k.name for k in MESSAGE_KINDS if k.direction is Direction.TO_HUB}
TO_AGENT = {k.name for k in MESSAGE_KINDS if k.direction is Direction.TO_AGENT}


def agent_end(fd: int) -> trio.socket.SocketType:
    return trio.socket.from_stdlib_socket(socket.socket(fileno=fd))


# --------------------------------------------------------------------------------------
# Fault 6: an empty record is a message, not the end of the channel


async def test_fault6_empty_notify_record_does_not_end_channel() -> None:
    """On a real socketpair an empty record comes back as b"" and the records after it
    still arrive; only the close of the agent's end gives None, and then for good."""
    hub_end, fd = open_notify_pair()
    agent = agent_end(fd)
    with agent:
        for record in (b"", b"READY", b"", b"HEARTBEAT"):
            await agent.send(record)
        assert b"" == await hub_end.receive()
        assert b"READY" == await hub_end.receive()
        assert b"" == await hub_end.receive()
        assert b"HEARTBEAT" == await hub_end.receive()
        await agent.send(b"")  # an empty record right before the close
    assert b"" == await hub_end.receive()
    assert await hub_end.receive() is None
    assert await hub_end.receive() is None
    hub_end.close()


async def test_fault6_empty_record_is_an_invalid_message() -> None:
    """parse_notify refuses an empty record (and a lone newline) with a reason."""
    with pytest.raises(InvalidNotifyMessage, match="empty message"):
        parse_notify(b"")
    with pytest.raises(InvalidNotifyMessage, match="empty message"):
        parse_notify(b"\n")


@pytest.mark.slow
async def test_fault6_agent_that_sends_an_empty_record_keeps_heartbeating() -> None:
    """notify("") from a real agent is dropped and counted; its later heartbeats still
    reach the hub, so it is not killed as hung."""
    code = """
import time
from agents.notify import heartbeat, notify, ready
ready()
notify("")
for _ in range(100):
    heartbeat()
    time.sleep(0.05)
time.sleep(1000)
"""
    # The deadline runs from the spawn: 1.5 s leaves a loaded machine room to start
    # Python (0.5 s did not always), and the 3.5 s watched below are still longer than it.
    spec = python_child("e", code, ready="notify", heartbeat_timeout=1.5)
    hub = Hub([spec])
    events = hub.bus.subscribe()
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await wait_event(events, lambda e: e.kind == "running", seen)
        with trio.move_on_after(3.5):
            await wait_event(events, lambda e: isinstance(e, ChildHung), seen)
        assert not [e for e in seen if isinstance(e, ChildHung)]
        assert 1 == hub.context.notify_rejected
        await hub.stop()


@pytest.mark.slow
async def test_fault6_closed_channel_is_not_read_as_a_stream_of_empty_records() -> None:
    """An agent that closes its end is not reported as sending garbage: nothing is
    counted as rejected, and the hub does not spin on the closed channel."""
    code = """
import os, time
from agents.notify import ready
ready()
os.close(int(os.environ["HUBVISOR_NOTIFY_FD"]))
time.sleep(1000)
"""
    hub = Hub([python_child("c", code, ready="notify")])
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await wait_event(events, lambda e: e.kind == "running")
        await trio.sleep(0.3)
        assert 0 == hub.context.notify_rejected
        await hub.stop()


async def test_passed_descriptors_are_not_installed_in_the_hub() -> None:
    """An agent that sends file descriptors along (SCM_RIGHTS) leaks none into the hub;
    the record itself still arrives."""
    hub_end, fd = open_notify_pair()
    with socket.socket(fileno=fd) as agent, open(os.devnull) as f:
        before = len(os.listdir("/proc/self/fd"))
        fds = array.array("i", [f.fileno()] * 8)
        for record in (b"", b"READY"):
            agent.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        assert b"" == await hub_end.receive()
        assert b"READY" == await hub_end.receive()
        assert before == len(os.listdir("/proc/self/fd"))
    assert await hub_end.receive() is None
    hub_end.close()


# --------------------------------------------------------------------------------------
# The table, both ways


def test_the_table_parses_and_encodes_both_ways() -> None:
    """Agent-to-hub kinds parse on the hub, hub-to-agent kinds encode and parse on the
    agent, and neither is accepted in the other direction."""
    assert {"ready", "heartbeat", "status"} <= TO_HUB
    assert NotifyMessage("ping") == parse_from_hub(encode(NotifyMessage("ping")))
    with pytest.raises(InvalidNotifyMessage, match=r"unknown message 'PING' from an agent"):
        parse_notify(b"PING")
    with pytest.raises(InvalidNotifyMessage, match=r"unknown message 'READY' from the hub"):
        parse_from_hub(b"READY")
    with pytest.raises(InvalidNotifyMessage, match="cannot send 'ready'"):
        encode(NotifyMessage("ready"))
    with pytest.raises(InvalidNotifyMessage, match="takes no value"):
        encode(NotifyMessage("ping", "x"))
    with pytest.raises(InvalidNotifyMessage, match="cannot send 'launch'"):
        encode(NotifyMessage("launch"))


def test_a_new_kind_is_one_table_entry() -> None:
    """An assignment-like kind with a validated payload is one more MessageKind: the
    table then parses, validates and encodes it; clashing entries are refused."""

    def task_id(value: str) -> str:
        if not value.isalnum():
            raise ValueError("task ids are letters and digits")
        return value

    table = MessageTable(
        [*MESSAGE_KINDS, MessageKind("task", Direction.TO_AGENT, "TASK", payload=task_id)]
    )
    record = table.encode(NotifyMessage("task", "t17"))
    assert b"TASK=t17" == record
    assert NotifyMessage("task", "t17") == table.parse(record, Direction.TO_AGENT)
    with pytest.raises(InvalidNotifyMessage, match="letters and digits"):
        table.parse(b"TASK=t 17", Direction.TO_AGENT)
    with pytest.raises(InvalidNotifyMessage, match="needs a value"):
        table.encode(NotifyMessage("task"))
    with pytest.raises(ValueError, match="clashes"):
        MessageTable([*MESSAGE_KINDS, MessageKind("again", Direction.TO_HUB, "READY")])


async def test_hub_sends_to_a_real_agent_process_and_it_answers() -> None:
    """send_to_agent reaches agents.notify.receive() in a child process over the same
    socketpair; the agent answers PING with HEARTBEAT."""
    code = """
from agents.notify import heartbeat, receive
msg = receive(timeout=20)
if msg is not None and msg.kind == "ping":
    heartbeat()
"""
    hub_end, fd = open_notify_pair()
    env = {**os.environ, "HUBVISOR_NOTIFY_FD": str(fd), "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([PY, "-c", code], pass_fds=[fd], env=env)
    os.close(fd)
    try:
        with trio.fail_after(30):
            await hub_end.send_to_agent(NotifyMessage("ping"))
            assert b"HEARTBEAT" == await hub_end.receive()
            assert await hub_end.receive() is None  # the agent exited
        assert 0 == await trio.to_thread.run_sync(proc.wait)
        with pytest.raises(trio.BrokenResourceError):
            await hub_end.send_to_agent(NotifyMessage("ping"))
    finally:
        proc.kill()
        proc.wait()
    hub_end.close()
    with pytest.raises(trio.ClosedResourceError):
        await hub_end.send_to_agent(NotifyMessage("ping"))


async def test_agent_receive_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """agents.notify.receive() times out with None, skips empty records, returns
    messages, and gives None once the hub closed its end."""
    hub_end, fd = open_notify_pair()
    monkeypatch.setenv("HUBVISOR_NOTIFY_FD", str(fd))
    monkeypatch.setattr(agent_notify, "_sock", None)
    try:
        assert agent_notify.fileno() is not None
        assert agent_notify.receive(timeout=0) is None
        await hub_end._sock.send(b"")
        await hub_end.send_to_agent(NotifyMessage("ping"))
        assert NotifyMessage("ping") == agent_notify.receive(timeout=5)
        await hub_end._sock.send(b"LAUNCH")
        with pytest.raises(InvalidNotifyMessage):
            agent_notify.receive(timeout=5)
        hub_end.close()
        assert agent_notify.receive(timeout=5) is None
    finally:
        sock = agent_notify._sock
        if sock is not None:
            sock.close()
        monkeypatch.setattr(agent_notify, "_sock", None)
        os.close(fd)


def test_agent_receive_outside_hubvisor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUBVISOR_NOTIFY_FD", raising=False)
    assert agent_notify.receive(timeout=0) is None
    assert agent_notify.fileno() is None


# --------------------------------------------------------------------------------------
# Fuzzing: any record, any bytes, any rate


def check(data: bytes, direction: Direction) -> NotifyMessage | None:
    """Parse; a result must be a valid message of ``direction``, an error must be ours."""
    try:
        msg = MESSAGES.parse(data, direction)
    except InvalidNotifyMessage:
        return None
    kind = MESSAGES.kind(msg.kind)
    assert kind.direction is direction
    assert (msg.value is None) == (kind.payload is None)
    return msg


WIRE_WORDS = st.sampled_from(
    ["READY", "READY=1", "HEARTBEAT", "WATCHDOG=1", "STATUS=", "STATUS=busy", "PING", ""]
)
RECORDS = st.one_of(
    st.binary(max_size=64),
    # Records about the size limit, built cheaply (Hypothesis draws at most a few KiB).
    st.builds(
        lambda n, b: b * n,
        st.integers(MAX_MESSAGE - 2, MAX_MESSAGE + 40),
        st.binary(min_size=1, max_size=1),
    ),
    st.builds(lambda w, t: w.encode() + t, WIRE_WORDS, st.binary(max_size=8)),
    st.builds(lambda w, t: (w + t).encode(), WIRE_WORDS, st.text(max_size=40)),
)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(data=RECORDS)
def test_fuzz_parse_returns_a_valid_message_or_raises_invalid(data: bytes) -> None:
    """Any bytes: parse (either direction) returns a valid message or raises
    InvalidNotifyMessage, never anything else; what parses re-encodes to itself."""
    for direction in Direction:
        msg = check(data, direction)
        if msg is not None:
            again = MESSAGES.encode(msg, direction)
            assert msg == MESSAGES.parse(again, direction)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(RECORDS, max_size=60),
    pauses=st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.001]), max_size=60),
)
def test_fuzz_real_socketpair_any_record_any_rate(
    records: list[bytes], pauses: list[float]
) -> None:
    """Any records (empty and oversized included) at any rate over a real socketpair:
    each arrives whole and in order (cut to MAX_MESSAGE + 1 bytes), parsing each gives a
    message or InvalidNotifyMessage, and the channel ends (None) only at the close."""

    async def main() -> list[bytes]:
        hub_end, fd = open_notify_pair()
        got: list[bytes] = []

        async def agent() -> None:
            with agent_end(fd) as sock:
                for i, record in enumerate(records):
                    await sock.send(record)
                    if i < len(pauses) and pauses[i]:
                        await trio.sleep(pauses[i])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent)
            while (data := await hub_end.receive()) is not None:
                got.append(data)
                check(data, Direction.TO_HUB)
        hub_end.close()
        return got

    got = trio.run(main)
    assert [r[: MAX_MESSAGE + 1] for r in records] == got


async def test_socket_source_is_a_notify_source() -> None:
    """The hub's end satisfies both protocols (receive/close, and send_to_agent)."""
    from supervisor._notify import AgentChannel, NotifySource

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with b:
        src = SocketNotifySource(trio.socket.from_stdlib_socket(a))
        assert isinstance(src, NotifySource) and isinstance(src, AgentChannel)
        src.close()
        src.close()


@pytest.mark.parametrize("nowait", [False, True], ids=["receive", "receive_nowait"])
async def test_records_sent_before_the_agent_closed_survive_unread_hub_messages(
    nowait: bool,
) -> None:
    """An agent that exits with hub messages unread makes Linux report ECONNRESET once;
    what it sent before (its last RESULT, say) must still be read, then end-of-channel."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    source = SocketNotifySource(trio.socket.from_stdlib_socket(parent), parent)
    enable_credentials(parent)
    await source.send_to_agent(NotifyMessage("ping"))  # never read by the agent
    child.send(b"HEARTBEAT")
    child.close()
    try:
        if nowait:
            assert b"HEARTBEAT" == source.receive_nowait()
            assert source.receive_nowait() is None
        else:
            assert b"HEARTBEAT" == await source.receive()
            assert await source.receive() is None
    finally:
        source.close()


# --------------------------------------------------------------------------------------
# One protocol module (agents/_protocol.py), shared by the hub and the agents


def test_the_hub_and_the_agents_share_one_protocol_module() -> None:
    """The hub's transport re-exports the one table; the hub's reserved statuses are the
    protocol's words."""
    from agents import _protocol
    from supervisor import RESERVED_STATUSES, _notify

    assert _notify.MESSAGES is _protocol.MESSAGES
    assert _notify.parse_notify is _protocol.parse_notify
    assert _notify.InvalidNotifyMessage is _protocol.InvalidNotifyMessage
    assert {str(s) for s in RESERVED_STATUSES} == _protocol.RESERVED_STATUSES


def test_the_agent_side_imports_neither_trio_nor_attrs_nor_the_hub() -> None:
    """``agents.notify`` and ``agents._protocol`` load with the standard library only."""
    code = (
        "import sys, agents.notify, agents._protocol\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trio', 'attrs', 'supervisor'}))"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()
