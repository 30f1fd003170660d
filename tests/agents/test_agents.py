"""The child side of the agent protocol: BaseAgent, the four demo agents, the bash agent.

Each test runs real agent processes on a socketpair it made itself and plays the hub:
every record an agent sends must parse with the hub's own table (``parse_notify``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings, strategies as st

from agents import _protocol as proto
from agents._demo_work import Faults, digest, generate_text
from supervisor._notify import (
    NotifyMessage,
    SocketNotifySource,
    encode,
    open_notify_pair,
    parse_notify,
)

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
ECHO_AGENT = ROOT / "agents" / "examples" / "echo_agent.sh"
TIMEOUT = 10.0

pytestmark = pytest.mark.slow

CUSTOM_AGENT = """
import time, trio
from agents.base import BaseAgent, HandBack, RetryAfter

class Custom(BaseAgent):
    agent_type = "custom"

    def validate_assignment(self, payload):
        if payload == "bad":
            raise ValueError("bad payload")

    async def do_work(self, assignment):
        p = assignment.payload
        if p == "boom":
            raise RuntimeError("boom")
        if p == "nan":
            return float("nan")
        if p == "back":
            raise HandBack()
        if p == "later":
            raise RetryAfter(30, "rate limited")
        if isinstance(p, dict) and "sleep" in p:
            await trio.to_thread.run_sync(time.sleep, p["sleep"], abandon_on_cancel=True)
        return {"echo": p}

Custom.main()
"""


class FakeHub:
    """The hub's end of one agent's channel, and the agent process."""

    def __init__(self, proc: trio.Process, chan: SocketNotifySource) -> None:
        self.proc = proc
        self.chan = chan
        self.log: list[tuple[float, str, Any]] = []  # (time, kind, decoded value)

    async def next(self, timeout: float = TIMEOUT) -> tuple[str, Any] | None:
        """The next record (kind, JSON-decoded value), or None at end-of-channel."""
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.chan.receive()
                except ConnectionResetError:  # the agent exited with records unread
                    continue
                break
        if data is None:
            return None
        msg = parse_notify(data)  # raises on anything the hub would refuse
        value: Any = msg.value
        if msg.kind in ("progress", "result", "fail", "handback", "submit"):
            assert msg.value is not None
            value = json.loads(msg.value)
        self.log.append((trio.current_time(), msg.kind, value))
        return msg.kind, value

    async def expect(
        self, *kinds: str, timeout: float = TIMEOUT, skip: tuple[str, ...] = ("heartbeat",)
    ) -> tuple[str, Any]:
        """The next record of one of ``kinds``, skipping the ``skip`` kinds."""
        while True:
            got = await self.next(timeout)
            assert got is not None, f"channel ended while waiting for {kinds}"
            if got[0] in kinds:
                return got
            assert got[0] in skip, f"expected {kinds}, got {got}"

    async def start(self, version: int = proto.PROTOCOL_VERSION) -> None:
        """HELLO=<version> then READY (BaseAgent speaks the newest, v2)."""
        assert ("hello", str(version)) == await self.expect("hello", skip=())
        assert ("ready", None) == await self.expect("ready", skip=())

    async def assign(
        self,
        item: str,
        payload: Any,
        *,
        attempt: int = 1,
        type: str = "worker",
        checkpoint: Any = None,
    ) -> None:
        obj = {"item": item, "attempt": attempt, "type": type, "payload": payload}
        obj["checkpoint"] = checkpoint
        await self.chan.send_to_agent(NotifyMessage("assign", json.dumps(obj)))

    async def ack(self, item: str, attempt: int = 1, accepted: bool = True) -> None:
        obj = {"item": item, "attempt": attempt, "accepted": accepted, "reason": ""}
        await self.chan.send_to_agent(NotifyMessage("ack", json.dumps(obj)))

    async def send(self, kind: str) -> None:
        await self.chan.send_to_agent(NotifyMessage(kind))

    async def work(self, item: str, payload: Any, **kw: Any) -> tuple[list[Any], tuple[str, Any]]:
        """Assign, collect the SUBMITs, return them with the final record (acked)."""
        await self.assign(item, payload, **kw)
        submits = []
        while True:
            kind, value = await self.expect(
                "submit", "result", "fail", "handback", skip=("heartbeat", "status", "progress")
            )
            if kind != "submit":
                await self.ack(item, kw.get("attempt", 1))
                return submits, (kind, value)
            submits.append(value)

    async def exit_code(self, timeout: float = TIMEOUT) -> int:
        with trio.fail_after(timeout):
            return await self.proc.wait()


@asynccontextmanager
async def agent(argv: list[str], **env: str) -> AsyncIterator[FakeHub]:
    """Run ``argv`` as an agent on a fresh channel; kill and reap it on the way out."""
    chan, fd = open_notify_pair()
    full_env = {
        **os.environ,
        "HUBVISOR_NOTIFY_FD": str(fd),
        "HUBVISOR_AGENT_ID": "test-agent",
        "HUBVISOR_HEARTBEAT_INTERVAL": "0.2",
        "HUBVISOR_DEMO_WORK_SECONDS": "0.05",
        **env,
    }
    try:
        proc = await trio.lowlevel.open_process(
            argv, env=full_env, pass_fds=(fd,), cwd=ROOT, start_new_session=True
        )
    finally:
        os.close(fd)
    try:
        yield FakeHub(proc, chan)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the agent and what it started
            os.killpg(proc.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()
        chan.close()


def module(name: str) -> list[str]:
    return [PY, "-m", f"agents.{name}"]


def expected_digest(seed: int, piece: int, lines: int) -> dict[str, Any]:
    return digest(generate_text(seed, piece, lines))


# --------------------------------------------------------------------------------------
# The four agent types


def test_demo_text_is_deterministic() -> None:
    """The worker's text, hash and word count are pinned (the same on every machine)."""
    text = generate_text(1, 0, 3)
    assert text == generate_text(1, 0, 3)
    assert text != generate_text(1, 1, 3)
    assert 3 == text.count("\n")
    assert {
        "sha256": "2531491e680a419f2e4f8de78b70651b3032601a6dfa23a2309e347b99cbf836",
        "words": 20,
    } == digest(text)


async def test_pipeline_through_all_four_agent_types() -> None:
    """planning -> worker -> qc -> review as real processes, each sending its SUBMITs
    before its RESULT, with the right deterministic values; a worker takes items one
    after another."""
    task = {"task": "t1", "seed": 7, "pieces": 3, "lines": 5}
    async with AsyncExitStack() as stack:
        hubs = {
            name: await stack.enter_async_context(agent(module(name)))
            for name in ("planning", "worker", "qc", "review")
        }
        for hub in hubs.values():
            await hub.start()

        submits, final = await hubs["planning"].work("p-1", task, type="planning")
        assert ("result", {"item": "p-1", "attempt": 1, "result": {"pieces": 3}}) == final
        assert [
            {
                "type": "worker",
                "payload": {"task": "t1", "piece": i, "seed": 7, "lines": 5},
                "key": f"p-1/piece-{i}",
            }
            for i in range(3)
        ] + [
            {
                "type": "review",
                "payload": {"task": "t1", "pieces": 3},
                "key": "p-1/review",
                "after": [f"worker:p-1/piece-{i}" for i in range(3)],
            }
        ] == submits
        task_review = submits.pop()
        _, final = await hubs["review"].work("r-task", task_review["payload"], type="review")
        assert {"task": "t1", "pieces": 3} == final[1]["result"]

        reviews = []
        for i, sub in enumerate(submits):
            want = expected_digest(7, i, 5)
            qc_items, final = await hubs["worker"].work(f"w-{i}", sub["payload"])
            assert ("result", {"item": f"w-{i}", "attempt": 1, "result": want}) == final
            assert [{"type": "qc", "payload": {**sub["payload"], **want}}] == qc_items

            review_items, final = await hubs["qc"].work(f"q-{i}", qc_items[0]["payload"], type="qc")
            assert ("result", {"item": f"q-{i}", "attempt": 1, "result": {"ok": True}}) == final
            assert [
                {"type": "review", "payload": {"task": "t1", "piece": i, "ok": True}}
            ] == review_items
            reviews.append(review_items[0]["payload"])

        for i, payload in enumerate(reviews):
            none, final = await hubs["review"].work(f"r-{i}", payload, type="review")
            assert [] == none
            assert ("result", {"item": f"r-{i}", "attempt": 1, "result": {"accepted": True}}) == (
                final
            )

        # qc catches a wrong hash; review then refuses the piece.
        bad = {**qc_items[0]["payload"], "sha256": "0" * 64}
        review_items, final = await hubs["qc"].work("q-bad", bad, type="qc")
        assert {"ok": False} == final[1]["result"]
        assert [{"type": "review", "payload": {"task": "t1", "piece": 2, "ok": False}}] == (
            review_items
        )
        _, final = await hubs["review"].work("r-bad", review_items[0]["payload"], type="review")
        assert {"accepted": False} == final[1]["result"]

        for hub in hubs.values():
            await hub.send("stop")
        for hub in hubs.values():
            assert 0 == await hub.exit_code()


async def test_validate_failure_is_final_and_work_failure_retries() -> None:
    """validate_assignment raising -> FAIL retry=false; do_work raising -> FAIL
    retry=true; a result that is not JSON -> FAIL retry=false; HandBack -> HANDBACK;
    the agent keeps taking work after each."""
    async with agent(module("worker")) as hub:
        await hub.start()
        _, (kind, value) = await hub.work("w-1", {"task": 1, "piece": 0, "seed": 1, "lines": 1})
        assert "fail" == kind
        assert value["retry"] is False
        assert "task" in value["error"]
        _, (kind, _) = await hub.work("w-2", {"task": "t", "piece": 0, "seed": 1, "lines": 1})
        assert "result" == kind
    async with agent([PY, "-c", CUSTOM_AGENT]) as hub:
        await hub.start()
        _, final = await hub.work("c-1", "bad", type="custom")
        assert ("fail", False, "ValueError: bad payload") == (
            final[0],
            final[1]["retry"],
            final[1]["error"],
        )
        _, final = await hub.work("c-2", "boom", type="custom")
        assert ("fail", True, "RuntimeError: boom") == (
            final[0],
            final[1]["retry"],
            final[1]["error"],
        )
        _, final = await hub.work("c-3", "nan", type="custom")
        assert ("fail", False) == (final[0], final[1]["retry"])
        _, final = await hub.work("c-4", "back", type="custom")
        assert ("handback", {"item": "c-4", "attempt": 1}) == final
        _, final = await hub.work("c-5", [1, "two"], type="custom", attempt=3)
        assert ("result", {"item": "c-5", "attempt": 3, "result": {"echo": [1, "two"]}}) == final
        _, final = await hub.work("c-6", "later", type="custom")  # issue 21: retry_after
        assert ("fail", True, 30.0, "RetryAfter: rate limited") == (
            final[0],
            final[1]["retry"],
            final[1]["retry_after"],
            final[1]["error"],
        )


async def test_heartbeats_continue_while_do_work_is_busy() -> None:
    """A do_work blocked in a thread for 1.2 s: heartbeats keep coming on the interval,
    a PING is answered at once, and a second ASSIGN meanwhile is handed back."""
    async with agent([PY, "-c", CUSTOM_AGENT], HUBVISOR_HEARTBEAT_INTERVAL="0.1") as hub:
        await hub.start()
        await hub.assign("c-1", {"sleep": 1.2}, type="custom")
        assert ("status", "busy") == await hub.expect("status")
        start = trio.current_time()
        await trio.sleep(0.3)
        await hub.send("ping")
        await hub.assign("c-2", "extra", type="custom")
        assert ("handback", {"item": "c-2", "attempt": 1}) == await hub.expect("handback")
        kind, value = await hub.expect("result", skip=("heartbeat", "status"))
        assert {"echo": {"sleep": 1.2}} == value["result"]
        times = [t for t, _, _ in hub.log if t >= start]
        heartbeats = [t for t, k, _ in hub.log if t >= start and k == "heartbeat"]
        assert len(heartbeats) >= 6, hub.log
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 0.5, gaps


@pytest.mark.parametrize("how", ["stop", "sigterm"])
@pytest.mark.parametrize("outcome", ["finishes", "hands-back"])
async def test_stop_while_busy_finishes_within_grace_or_hands_back(how: str, outcome: str) -> None:
    """STOP or SIGTERM during work: with enough grace the item's RESULT comes, else a
    HANDBACK once the grace (HUBVISOR_SHUTDOWN minus a margin) is over; the agent waits
    for the ACK and exits 0."""
    env = {"HUBVISOR_DEMO_WORK_SECONDS": "1.0"}
    env["HUBVISOR_SHUTDOWN"] = "5" if outcome == "finishes" else "0.5"
    async with agent(module("worker"), **env) as hub:
        await hub.start()
        await hub.assign("w-1", {"task": "t", "piece": 1, "seed": 2, "lines": 4})
        await hub.expect("progress", skip=("heartbeat", "status"))
        stopped = trio.current_time()
        if how == "stop":
            await hub.send("stop")
        else:
            hub.proc.send_signal(signal.SIGTERM)
        kind, value = await hub.expect(
            "result", "handback", skip=("heartbeat", "progress", "submit")
        )
        took = trio.current_time() - stopped
        if outcome == "finishes":
            assert ("result", expected_digest(2, 1, 4)) == (kind, value["result"])
        else:
            assert ("handback", {"item": "w-1", "attempt": 1}) == (kind, value)
            assert 0.3 < took < 0.5 + 0.3, took
        if outcome == "finishes":  # the ACK ends its short wait for one
            await hub.ack("w-1")
            assert 0 == await hub.exit_code(5)
        else:  # no ACK (a hub may answer only refusals): it still exits in time
            assert 0 == await hub.exit_code(5)
            assert trio.current_time() - stopped < 0.5 + 0.3


async def test_stop_while_idle_exits_at_once() -> None:
    async with agent(module("review")) as hub:
        await hub.start()
        hub.proc.send_signal(signal.SIGTERM)
        assert 0 == await hub.exit_code(5)


async def test_checkpoint_reaches_the_next_attempt() -> None:
    """Attempt 1 reports checkpoints, is stopped and hands back; attempt 2 (another agent
    process) receives the last checkpoint, resumes after it and gets the same result."""
    payload = {"task": "t", "piece": 3, "seed": 9, "lines": 2}
    env = {"HUBVISOR_DEMO_WORK_SECONDS": "1.2", "HUBVISOR_SHUTDOWN": "0.3"}
    async with agent(module("worker"), **env) as hub:
        await hub.start()
        await hub.assign("w-1", payload)
        kind, progress = await hub.expect("progress", skip=("heartbeat", "status"))
        await hub.send("stop")
        kind, value = await hub.expect("handback", skip=("heartbeat", "progress"))
        await hub.ack("w-1")
        assert 0 == await hub.exit_code()
        checkpoint = [v["checkpoint"] for _, k, v in hub.log if k == "progress"][-1]
    assert {"item": "w-1", "attempt": 1, "progress": 0.25, "checkpoint": {"step": 1}} == progress
    assert 1 <= checkpoint["step"] < 4
    async with agent(module("worker"), **env) as hub:
        await hub.start()
        _, final = await hub.work("w-1", payload, attempt=2, checkpoint=checkpoint)
        assert ("result", {"item": "w-1", "attempt": 2, "result": expected_digest(9, 3, 2)}) == (
            final
        )
        steps = [v["checkpoint"]["step"] for _, k, v in hub.log if k == "progress"]
        assert list(range(checkpoint["step"] + 1, 5)) == steps
        await hub.send("stop")
        assert 0 == await hub.exit_code()


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
async def test_agent_exits_when_the_hub_closes_the_channel(busy: bool) -> None:
    async with agent(module("worker"), HUBVISOR_DEMO_WORK_SECONDS="10") as hub:
        await hub.start()
        if busy:
            await hub.assign("w-1", {"task": "t", "piece": 0, "seed": 1, "lines": 1})
            assert ("status", "busy") == await hub.expect("status")
        hub.chan.close()
        assert 0 == await hub.exit_code(5)


async def test_agent_without_a_channel_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HUBVISOR_NOTIFY_FD"}
    result = await trio.run_process(
        module("worker"), env=env, cwd=ROOT, capture_stderr=True, check=False
    )
    assert 2 == result.returncode
    assert b"HUBVISOR_NOTIFY_FD" in result.stderr


# --------------------------------------------------------------------------------------
# Demo faults


def test_demo_fault_draws_are_reproducible() -> None:
    env = {"HUBVISOR_DEMO_SEED": "3", "HUBVISOR_AGENT_ID": "w-1", "HUBVISOR_DEMO_CRASH_RATE": "0.5"}
    draws = [Faults(env).draw(f"i-{n}", 1)[0] for n in range(40)]
    assert draws == [Faults(env).draw(f"i-{n}", 1)[0] for n in range(40)]
    assert 5 < sum(draws) < 35
    assert (True, False) == Faults({**env, "HUBVISOR_DEMO_CRASH_RATE": "1"}).draw("x", 1)
    assert (False, False) == Faults({}).draw("x", 1)


async def test_demo_crash_exits_mid_work() -> None:
    async with agent(module("worker"), HUBVISOR_DEMO_CRASH_RATE="1") as hub:
        await hub.start()
        await hub.assign("w-1", {"task": "t", "piece": 0, "seed": 1, "lines": 1})
        assert 1 == await hub.exit_code()
        while await hub.next() is not None:
            pass
        kinds = [k for _, k, _ in hub.log]
        assert "progress" in kinds
        assert "result" not in kinds


async def test_demo_hang_stops_heartbeats_and_pings() -> None:
    env = {"HUBVISOR_DEMO_HANG_RATE": "1", "HUBVISOR_HEARTBEAT_INTERVAL": "0.05"}
    async with agent(module("qc"), **env) as hub:
        await hub.start()
        await hub.assign(
            "q-1", {"task": "t", "piece": 0, "seed": 1, "lines": 1, "sha256": "x", "words": 1}
        )
        await hub.expect("progress", skip=("heartbeat", "status"))
        with trio.move_on_after(0.5):
            while True:
                await hub.next()
        hung_at = trio.current_time()
        await hub.send("ping")
        hub.proc.send_signal(signal.SIGTERM)  # ignored: the agent is hung
        with trio.move_on_after(0.8):
            got = await hub.next()
            raise AssertionError(f"a hung agent sent {got}")
        assert hub.proc.returncode is None
        assert trio.current_time() - hung_at >= 0.8


# --------------------------------------------------------------------------------------
# A non-Python agent


@pytest.mark.parametrize("end", ["stop", "sigterm", "eof"])
async def test_bash_agent_speaks_the_protocol(end: str) -> None:
    """agents/examples/echo_agent.sh: HELLO=1, READY, heartbeats, PING answered, an
    ASSIGN of 20 KB echoed in one RESULT record; STOP, SIGTERM or the hub's close end it
    with status 0 and nothing left running."""
    async with agent(["bash", str(ECHO_AGENT)], HUBVISOR_HEARTBEAT_INTERVAL="0.1") as hub:
        await hub.start(version=1)  # the shell example stays v1 (no CANCEL)
        await hub.expect("heartbeat", skip=())
        await hub.send("ping")
        await hub.expect("heartbeat", skip=())
        payload = {"text": "é" * 3000, "n": [1, 2, 3], "nested": {"item": "not-this"}}
        submits, final = await hub.work("e-1", payload, type="echo", attempt=2)
        assert [] == submits
        assert "result" == final[0]
        assert "e-1" == final[1]["item"]
        assert 2 == final[1]["attempt"]
        assert payload == final[1]["result"]["echo"]["payload"]
        _, final = await hub.work("e-2", None, type="echo")
        assert ("result", "e-2") == (final[0], final[1]["item"])
        if end == "stop":
            await hub.send("stop")
        elif end == "sigterm":
            hub.proc.send_signal(signal.SIGTERM)
        else:
            hub.chan.close()
        assert 0 == await hub.exit_code(5)
        if end != "eof":  # the heartbeat loop is gone too: the channel ends
            while await hub.next(5) is not None:
                pass


async def test_base_agent_in_process() -> None:
    """BaseAgent.run in this process (so coverage sees it): a result with progress and
    a submit, a refused ACK logged, a bad record from the hub ignored, STOP -> 0."""
    from agents.base import Assignment, BaseAgent

    class Adder(BaseAgent):
        agent_type = "adder"
        report_status = False

        def validate_assignment(self, payload: Any) -> None:
            if not isinstance(payload, list):
                raise TypeError("a list please")

        async def do_work(self, assignment: Assignment) -> Any:
            assert assignment.checkpoint == {"seen": 1}
            await assignment.progress(0.5)  # keeps the checkpoint it received
            await assignment.submit("adder", [1])
            return sum(assignment.payload)

    chan, fd = open_notify_pair()
    env = {"HUBVISOR_NOTIFY_FD": str(fd), "HUBVISOR_AGENT_ID": "a-1"}
    hub = FakeHub(None, chan)  # type: ignore[arg-type]
    codes = []
    try:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                codes.append(await Adder(env).run())

            nursery.start_soon(run)
            await hub.start()
            await chan._sock.send(b"BOGUS")
            submits, final = await hub.work("a", [1, 2, 3], type="adder", checkpoint={"seen": 1})
            assert [{"type": "adder", "payload": [1]}] == submits
            assert ("result", {"item": "a", "attempt": 1, "result": 6}) == final
            progress = [v for _, k, v in hub.log if k == "progress"]
            assert [{"item": "a", "attempt": 1, "progress": 0.5, "checkpoint": {"seen": 1}}] == (
                progress
            )
            await hub.ack("a", accepted=False)
            _, final = await hub.work("b", "no", type="adder")
            assert ("fail", "TypeError: a list please") == (final[0], final[1]["error"])
            await hub.send("stop")
    finally:
        chan.close()
    assert [0] == codes
    assert 2 == await Adder({}).run()  # no channel


def test_protocol_page_shows_the_bash_agent_as_it_is() -> None:
    """docs/agent-protocol.md shows echo_agent.sh from `set -u` to the end, unchanged."""
    page = (ROOT / "docs" / "agent-protocol.md").read_text()
    script = ECHO_AGENT.read_text()
    body = script[script.index("set -u") :]
    block = page[page.index("#!/usr/bin/env bash\nset -u") :]
    block = block[: block.index("```")]
    assert body == block[block.index("set -u") :]


# --------------------------------------------------------------------------------------
# The agent's side of agents/_protocol.py: what BaseAgent sends parses on the hub, what
# the hub sends decodes


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
item_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z")
attempts = st.integers(1, 2**40)
types = st.from_regex(r"\A[a-z][a-z0-9_-]{0,10}\Z")


@settings(max_examples=60)
@given(item=item_ids, attempt=attempts, value=json_values, checkpoint=json_values, kind=types)
def test_everything_an_agent_encodes_parses_on_the_hub(
    item: str, attempt: int, value: Any, checkpoint: Any, kind: str
) -> None:
    records = {
        "hello": proto.hello(),
        "ready": proto.ready(),
        "heartbeat": proto.heartbeat(),
        "status": proto.status("busy"),
        "progress": proto.progress(item, attempt, value, checkpoint),
        "result": proto.result(item, attempt, value),
        "fail": proto.fail(item, attempt, str(value), retry=bool(checkpoint)),
        "handback": proto.handback(item, attempt),
        "submit": proto.submit(kind, value),
        "submit_after": proto.submit(kind, value, key=str(value)[:20], after=[item]),
    }
    for name, record in records.items():
        msg = parse_notify(record)
        assert name.removesuffix("_after") == msg.kind
        if msg.value is not None and name not in ("hello", "status"):
            obj = json.loads(msg.value)
            assert obj.get("item", item) == item
            assert obj.get("attempt", attempt) == attempt


@settings(max_examples=60)
@given(
    item=item_ids,
    attempt=attempts,
    kind=types,
    payload=json_values,
    checkpoint=json_values,
    accepted=st.booleans(),
    reason=st.text(max_size=20),
)
def test_everything_the_hub_encodes_decodes_on_the_agent(
    item: str, attempt: int, kind: str, payload: Any, checkpoint: Any, accepted: bool, reason: str
) -> None:
    assign = json.dumps(
        {
            "item": item,
            "attempt": attempt,
            "type": kind,
            "payload": payload,
            "checkpoint": checkpoint,
        }
    )
    got = proto.decode(encode(NotifyMessage("assign", assign)))
    assert isinstance(got, proto.Assign)
    assert (item, attempt, kind, payload, checkpoint) == (
        got.item,
        got.attempt,
        got.type,
        got.payload,
        got.checkpoint,
    )
    ack = json.dumps({"item": item, "attempt": attempt, "accepted": accepted, "reason": reason})
    got_ack = proto.decode(encode(NotifyMessage("ack", ack)))
    assert isinstance(got_ack, proto.Ack)
    assert (item, attempt, accepted, reason) == (
        got_ack.item,
        got_ack.attempt,
        got_ack.accepted,
        got_ack.reason,
    )
    assert isinstance(proto.decode(encode(NotifyMessage("stop"))), proto.Stop)
    assert isinstance(proto.decode(encode(NotifyMessage("ping"))), proto.Ping)


def test_the_agent_side_refuses_what_the_hub_would_refuse() -> None:
    with pytest.raises(proto.InvalidNotifyMessage, match="status"):
        proto.status("hung")
    with pytest.raises(proto.InvalidNotifyMessage, match="item id"):
        proto.result("bad id", 1, None)
    with pytest.raises(proto.InvalidNotifyMessage, match="attempt"):
        proto.result("i", 0, None)
    with pytest.raises(proto.InvalidNotifyMessage, match="attempt"):
        proto.result("i", True, None)  # type: ignore[arg-type]
    with pytest.raises(proto.InvalidNotifyMessage, match="not JSON"):
        proto.result("i", 1, float("nan"))
    with pytest.raises(proto.InvalidNotifyMessage, match="limit"):
        proto.result("i", 1, "x" * proto.MAX_MESSAGE)
    with pytest.raises(proto.InvalidNotifyMessage, match="agent type"):
        proto.submit("Worker", {})
    for bad in (b"", b"PONG", b"ASSIGN=[]", b"ASSIGN={}", b'ACK={"item":"i","attempt":1}', b"\xff"):
        with pytest.raises(proto.InvalidNotifyMessage):
            proto.decode(bad)
    assert isinstance(proto.decode(b"STOP\n"), proto.Stop)


async def test_cancel_gives_up_the_held_item_and_the_agent_takes_the_next() -> None:
    """CANCEL (protocol v2) for the held attempt cancels ``do_work`` (a thread sleeping
    60 s is abandoned) and is answered with FAIL retry=false; a CANCEL for an attempt the
    agent does not hold is ignored; the next item runs as usual."""
    async with agent([PY, "-c", CUSTOM_AGENT]) as hub:
        await hub.start()
        await hub.assign("c-1", {"sleep": 60})

        async def cancel(item: str, attempt: int) -> None:
            body = json.dumps({"item": item, "attempt": attempt, "reason": "time limit 1s"})
            await hub.chan.send_to_agent(NotifyMessage("cancel", body))

        await cancel("c-1", 1)
        kind, value = await hub.expect(
            "fail", "result", "handback", skip=("heartbeat", "status", "progress")
        )
        assert ("fail", "c-1", 1, "cancelled", False) == (
            kind,
            value["item"],
            value["attempt"],
            value["error"],
            value["retry"],
        )
        await cancel("c-9", 1)  # not held: ignored
        _, final = await hub.work("c-2", {"n": 1})
        assert ("result", "c-2") == (final[0], final[1]["item"])
